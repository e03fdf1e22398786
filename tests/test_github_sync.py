"""GitHub Actions end to end: created-range walks that never skip, re-runs, runs that stay
queued, deleted runs, the 1,000-result cap, one workflow's runs, and workflow_run webhooks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from helpers import (
    TOKEN,
    assert_matches_github,
    github_items,
    interrupted_pass,
    one_pass,
    stored_runs,
)

from worker import runtime, sources, sync, webhooks
from worker.model import Checkpoint, Rejected, Run, typed
from worker.simulator import Simulator
from worker.sources import github
from worker.sources.common import isoformat
from worker.sources.github.simulator import GitHubWorld, workflow_run_delivery

REPO = "octo/app"
SECRET = "whsec-0123456789abcdef0123"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def item(run_id: int, created: datetime, **fields) -> dict:
    stamp = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"id": run_id, "status": "completed", "conclusion": "success", "name": "CI",
            "created_at": stamp, "updated_at": stamp, **fields}  # fmt: skip


def listing(*items: dict, total: int | None = None) -> dict:
    return {"total_count": len(items) if total is None else total, "workflow_runs": list(items)}


# --- the reader -----------------------------------------------------------------------------


def test_a_run_object_is_read_into_the_analysts_columns():
    run = github.read_item(
        {
            "id": 9876543210, "run_number": 562, "run_attempt": 2, "name": "CI",
            "event": "push", "status": "in_progress", "conclusion": None, "workflow_id": 161335,
            "path": ".github/workflows/ci.yml", "head_branch": "main", "head_sha": "009b8a3a",
            "created_at": "2024-05-01T12:00:03Z", "updated_at": "2024-05-02T08:15:10Z",
            "run_started_at": "2024-05-02T08:15:02Z", "actor": {"login": "octocat", "id": 1},
        },
        NOW,
    )  # fmt: skip
    assert isinstance(run, Run)
    assert (run.run_id, run.status, run.is_terminal, run.succeeded) == (
        "9876543210", "in_progress", False, None,
    )  # fmt: skip
    assert run.started_at == datetime(2024, 5, 2, 8, 15, 2, tzinfo=UTC)  # the latest attempt's
    assert run.finished_at is None and run.scope == "CI" and not run.partial
    assert typed(run, github.COLUMNS) == {
        "github_workflow": "CI", "github_workflow_id": 161335, "github_event": "push",
        "github_branch": "main", "github_head_sha": "009b8a3a", "github_actor": "octocat",
        "github_conclusion": None, "github_attempt": 2, "github_run_number": 562,
        "github_created_at": datetime(2024, 5, 1, 12, 0, 3, tzinfo=UTC),
        "github_updated_at": datetime(2024, 5, 2, 8, 15, 10, tzinfo=UTC),
    }  # fmt: skip


def test_a_completed_run_ends_at_its_last_update_and_succeeds_on_success_only():
    done = github.read_item(item(1, NOW, conclusion="failure"), NOW)
    assert done.is_terminal and done.finished_at == NOW and done.succeeded is False
    assert github.read_item(item(2, NOW), NOW).succeeded is True


def test_every_field_but_the_id_may_be_missing_or_null():
    assert (
        typed(github.read_item(item(8, NOW, run_attempt=0), NOW), github.COLUMNS)["github_attempt"]
        == 0
    )  # an attempt number is kept as sent, 0 too
    run = github.read_item({"id": 7, "status": None, "actor": None, "run_attempt": None}, NOW)
    assert isinstance(run, Run)
    assert (run.run_id, run.status, run.is_terminal, run.started_at) == (
        "7",
        "unknown",
        False,
        None,
    )
    assert set(typed(run, github.COLUMNS).values()) == {None}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": None}, "id is missing"),
        ({"id": True}, "id is bool"),
        ({"run_attempt": "2"}, "run_attempt is str"),
        ({"run_attempt": 2**40}, "run_attempt is int"),
        ({"actor": "octocat"}, "actor is str"),
        ({"created_at": "yesterday"}, "created_at 'yesterday' is not an ISO 8601 time"),
        ({"created_at": "2099-01-01T00:00:00Z"}, "is in the future"),
    ],
)
def test_an_unreadable_run_is_rejected_with_its_reason(change, reason):
    rejected = github.read_item({**item(5, NOW), **change}, NOW)
    assert isinstance(rejected, Rejected) and reason in rejected.reason


def test_text_postgres_cannot_store_is_escaped_and_noted():
    run = github.read_item(item(5, NOW, display_title="fix \x00 and \ud800"), NOW)
    assert isinstance(run, Run) and "NUL and lone surrogate in display_title" in run.notes


# --- the walk ---------------------------------------------------------------------------------


def walk(checkpoint: Checkpoint | None = None, **options) -> github.CreatedWalk:
    return github.CreatedWalk(
        "/repos/o/r/actions/runs", checkpoint or Checkpoint(), page_size=3, **options
    )


def test_the_range_moves_down_to_the_oldest_run_of_each_full_page_inclusive():
    w = walk(floor=NOW - timedelta(hours=1))
    assert w.next_request().params["created"] == f"{isoformat(NOW - timedelta(hours=1))[:19]}Z..*"
    page = w.advance(
        listing(*(item(i, NOW - timedelta(minutes=i)) for i in (1, 2, 3)), total=9), NOW
    )
    assert len(page.runs) == 3 and not w.done
    upper = (NOW - timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert w.next_request().params["created"].endswith(f"..{upper}")  # the oldest, read again
    assert w.next_request().params["page"] == "1"
    w.advance(
        listing(item(3, NOW - timedelta(minutes=3)), item(4, NOW - timedelta(minutes=4))), NOW
    )
    assert w.done and w.next_request() is None
    assert w.checkpoint == Checkpoint(NOW - timedelta(minutes=1), None)  # the newest seen


def test_a_full_page_within_one_second_is_read_page_by_page_then_below_it():
    w = walk()
    w.advance(listing(*(item(i, NOW) for i in (1, 2, 3)), total=9), NOW)
    (low, high), page = w.ranges[-1], w.page
    assert (low, high, page) == (NOW, NOW, 1)  # that second, from its first page: its total
    w.advance(listing(*(item(i, NOW) for i in (1, 2, 3)), total=5), NOW)
    assert (w.page, w.second_total) == (2, 5)
    w.advance(listing(item(4, NOW), item(5, NOW), total=5), NOW)
    assert w.ranges == ((None, NOW - timedelta(seconds=1)),) and w.page == 1
    w.advance(listing(), NOW)
    assert w.done


def test_a_second_whose_total_changes_between_its_pages_is_read_again_from_its_first_page():
    w = walk()
    w.advance(listing(*(item(i, NOW) for i in (7, 6, 5)), total=20), NOW)
    w.advance(listing(*(item(i, NOW) for i in (7, 6, 5)), total=7), NOW)
    assert (w.ranges[-1], w.page, w.second_total) == ((NOW, NOW), 2, 7)
    resumed = walk(w.checkpoint)  # the walk goes on in another pass; meanwhile 6 is deleted
    assert resumed.next_request() == w.next_request()
    page = resumed.advance(listing(*(item(i, NOW) for i in (3, 2, 1)), total=6), NOW)  # 4 missed
    assert len(page.runs) == 3 and not resumed.done
    assert (resumed.ranges[-1], resumed.page) == ((NOW, NOW), 1)  # again from its first page
    resumed.advance(listing(*(item(i, NOW) for i in (7, 5, 4)), total=6), NOW)
    resumed.advance(listing(*(item(i, NOW) for i in (3, 2, 1)), total=6), NOW)
    assert resumed.ranges == ((None, NOW - timedelta(seconds=1)),)


def test_a_page_out_of_creation_order_cuts_the_range_in_two_newer_half_first():
    w = walk(floor=NOW - timedelta(hours=2), until=NOW)
    w.advance(
        listing(
            *(item(i, NOW - timedelta(minutes=m)) for i, m in ((1, 5), (2, 50), (3, 9))), total=7
        ),
        NOW,
    )
    (older, newer) = w.ranges
    assert newer == (NOW - timedelta(hours=1) + timedelta(seconds=1), NOW)
    assert older == (NOW - timedelta(hours=2), NOW - timedelta(hours=1))
    assert w.page == 1  # each half from its first page


def test_an_open_range_out_of_order_is_cut_below_the_time_of_the_answer():
    w = walk()
    pages = ((1, 5), (2, 50), (3, 9))
    w.advance(listing(*(item(i, NOW - timedelta(minutes=m)) for i, m in pages), total=7), NOW)
    (older, newer) = w.ranges
    top = NOW + timedelta(minutes=5)  # the answer's time, and the clock skew allowed
    assert newer[1] == top and older[0] is None and newer[0] == older[1] + timedelta(seconds=1)


def test_a_second_holding_more_than_github_lists_fails_the_walk_and_says_so():
    w = github.CreatedWalk(
        "/repos/o/r/actions/runs", Checkpoint(), page_size=100, floor=NOW, until=NOW
    )
    full = listing(*(item(i, NOW) for i in range(100)), total=1500)
    for _ in range(9):  # pages 1 to 9 of that second
        w.advance(full, NOW)
    assert w.page == 10
    with pytest.raises(sources.PageError, match="more than 1000 runs created in the second"):
        w.advance(full, NOW)


def test_a_walk_resumes_from_its_checkpoint():
    w = walk(floor=NOW - timedelta(hours=1))
    w.advance(listing(*(item(i, NOW - timedelta(minutes=i)) for i in (1, 2, 3)), total=9), NOW)
    resumed = walk(w.checkpoint, floor=NOW - timedelta(hours=1))
    assert resumed.next_request() == w.next_request()
    assert resumed.checkpoint.cursor["top"] == w.checkpoint.cursor["top"]


def test_a_page_that_is_not_a_listing_fails_the_walk():
    with pytest.raises(sources.PageError, match="workflow_runs"):
        walk().advance({"total_count": 1}, NOW)


# --- against the simulator ------------------------------------------------------------------


@pytest.fixture
def hub():
    return GitHubWorld(repos={REPO: 0}, seed=11, result_cap=50)


@pytest.fixture
async def hub_sim(hub):
    served = Simulator(hub, token=TOKEN)
    await served.start()
    yield served
    await served.stop()


@pytest.fixture
def hub_settings(hub_sim, write_config):
    def settings(extra: str = "", page_size: int = 20):
        return write_config(
            f"""
            [http]
            listen = "127.0.0.1:0"

            [[sources]]
            name = "hub"
            kind = "github"
            token_env = "GITHUB_TOKEN"
            repository = "{REPO}"
            base_url = "{hub_sim.base_url}"
            page_size = {page_size}
            every = "1s"
            {extra}
            """,
            env={"GITHUB_TOKEN": TOKEN, "HUB_SECRET": SECRET},
        )

    return settings


async def test_the_first_sync_stores_every_run_past_the_result_cap(hub, hub_sim, db, hub_settings):
    for minutes in range(130):  # 390 runs, 3 a second, far past the cap of 50 a search
        hub.add_runs(REPO, 3, created_at=hub.now() - timedelta(minutes=minutes + 1))
    hub.add_runs(REPO, 45, created_at=hub.now() - timedelta(hours=5))  # more than a page at once

    result = await one_pass(hub_settings(), "hub")

    assert result.outcome == "succeeded", result.error
    assert_matches_github(await stored_runs(db, "hub"), github_items(hub, REPO))
    async with db.pool.acquire() as conn:
        checkpoint = await conn.fetchrow("SELECT * FROM runsync.checkpoints WHERE source = 'hub'")
    assert checkpoint["watermark"] == max(
        datetime.fromisoformat(r["created_at"]) for r in hub.runs(REPO)
    )
    assert checkpoint["cursor"] is None


async def test_a_run_deleted_while_its_second_is_read_page_by_page_skips_no_other(
    hub, hub_sim, db, hub_settings
):
    """Runs of one second past a page are read page by page (offsets): a run deleted between two
    of those pages pulls the rest forward. The walk notices the second's total fall and reads the
    second again from its first page, so no run of it is skipped."""
    second = hub.now() - timedelta(hours=1)
    tied = hub.add_runs(REPO, 7, created_at=second)  # newest first
    hub.add_runs(REPO, 3, created_at=hub.now())
    settings = hub_settings(page_size=3)
    # The newest second (two pages), then the tied one's first page, twice (the second time
    # within that second alone); the walk stops before its second page.
    await interrupted_pass(settings, "hub", after_pages=4)
    assert {str(r["id"]) for r in tied[:3]} <= (await stored_runs(db, "hub")).keys()
    hub.delete_run(REPO, tied[1]["id"])

    result = await one_pass(settings, "hub")

    assert result.outcome == "succeeded", result.error
    stored = await stored_runs(db, "hub")
    assert_matches_github(
        {k: row for k, row in stored.items() if k != str(tied[1]["id"])}, github_items(hub, REPO)
    )


async def test_a_rerun_is_followed_to_its_end_with_its_attempt(hub, hub_sim, db, hub_settings):
    (run,) = hub.add_runs(REPO, 1, created_at=hub.now() - timedelta(days=3))
    hub.add_runs(REPO, 5, created_at=hub.now() - timedelta(days=2))
    settings = hub_settings()
    assert (await one_pass(settings, "hub")).outcome == "succeeded"

    hub.rerun(REPO, run["id"])  # queued again, attempt 2; its creation is days old
    assert (await one_pass(settings, "hub")).outcome == "succeeded"
    row = (await stored_runs(db, "hub"))[str(run["id"])]
    assert (row["status"], row["github_attempt"], row["is_terminal"]) == ("queued", 2, False)

    hub.progress(REPO)
    hub.progress(REPO)  # in progress, then completed
    assert (await one_pass(settings, "hub")).outcome == "succeeded"
    row = (await stored_runs(db, "hub"))[str(run["id"])]
    assert (row["status"], row["github_attempt"], row["succeeded"]) == ("completed", 2, True)
    async with db.pool.acquire() as conn:
        history = await conn.fetch(
            "SELECT status FROM runsync.run_status_history WHERE run_id = $1 ORDER BY id",
            str(run["id"]),
        )
    assert [h["status"] for h in history] == ["queued", "completed"]  # changes since stored


async def test_queued_runs_stay_open_and_deleted_ones_are_marked_gone(
    hub, hub_sim, db, hub_settings
):
    (stuck,) = hub.add_runs(REPO, 1, status="queued", stuck=True)
    (doomed,) = hub.add_runs(
        REPO, 1, status="in_progress", created_at=hub.now() - timedelta(days=20)
    )
    settings = hub_settings()
    assert (await one_pass(settings, "hub")).outcome == "succeeded"
    hub.delete_run(REPO, doomed["id"])
    for _ in range(2):
        hub.progress(REPO)
        assert (await one_pass(settings, "hub")).outcome == "succeeded"

    rows = await stored_runs(db, "hub")
    assert (
        rows[str(stuck["id"])]["status"] == "queued" and not rows[str(stuck["id"])]["is_terminal"]
    )
    assert rows[str(doomed["id"])]["gone_at"] is not None


async def test_a_run_read_by_id_is_stored_as_the_listing_shows_it(hub, hub_sim, db, hub_settings):
    """The single-run endpoint is asked with exclude_pull_requests=true like the listings, so
    raw does not change with the endpoint that read the run last (a pull request's run read by
    id had its pull_requests, then lost them at the next listing: a write for nothing)."""
    (run,) = hub.add_runs(
        REPO,
        1,
        status="in_progress",
        event="pull_request",
        created_at=hub.now() - timedelta(hours=1),
    )
    assert run["pull_requests"]  # the simulator lists the pull request it ran for
    hub.add_runs(REPO, 1)  # newer: the next pass's list walk stops above the open run
    settings = hub_settings()
    assert (await one_pass(settings, "hub")).outcome == "succeeded"
    hub.finish_run(REPO, run["id"])

    result = await one_pass(settings, "hub")  # no open walk sees it: it is read by its id

    assert result.outcome == "succeeded" and result.refreshed >= 1, result
    assert_matches_github(await stored_runs(db, "hub"), github_items(hub, REPO))
    sweep = await one_pass(settings, "hub", stream=sync.RECONCILE)
    assert (sweep.outcome, sweep.items, sweep.written) == ("succeeded", 2, 0)


async def test_one_workflows_runs_only(hub, hub_sim, db, hub_settings):
    hub.add_runs(REPO, 4, workflow="ci.yml", created_at=hub.now() - timedelta(hours=1))
    hub.add_runs(REPO, 3, workflow="nightly.yml", created_at=hub.now() - timedelta(hours=2))

    result = await one_pass(hub_settings('workflow = "nightly.yml"'), "hub")

    assert result.outcome == "succeeded", result.error
    assert_matches_github(await stored_runs(db, "hub"), github_items(hub, REPO, "nightly.yml"))


async def test_a_backfill_of_a_range_stores_that_range(hub, hub_sim, db, hub_settings):
    base = hub.now() - timedelta(days=10)
    for day in range(10):
        hub.add_runs(REPO, 4, created_at=base + timedelta(days=day))
    since, until = base + timedelta(days=2), base + timedelta(days=5)

    result = await one_pass(hub_settings(), "hub", stream=sync.BACKFILL, since=since, until=until)

    assert result.outcome == "succeeded", result.error
    inside = [
        r
        for r in github_items(hub, REPO)
        if since <= datetime.fromisoformat(r["created_at"]) <= until
    ]
    assert_matches_github(await stored_runs(db, "hub"), inside)


async def test_workflow_run_deliveries_are_verified_and_stored(hub, hub_sim, db, hub_settings):
    settings = hub_settings('webhook_secret_env = "HUB_SECRET"')
    (run,) = hub.add_runs(REPO, 1, status="in_progress")
    receiver = webhooks.receiver(settings.sources, db, {})
    delivery = workflow_run_delivery(hub, REPO, run["id"], secret=SECRET)

    answer = await receiver.receive("github", "hub", delivery.headers, delivery.body)
    assert (answer.status, answer.body["outcome"]) == (200, "stored"), answer.body
    again = await receiver.receive("github", "hub", delivery.headers, delivery.body)
    assert again.body["outcome"] == "unchanged"  # a redelivery changes nothing

    forged = {**delivery.headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}
    assert (await receiver.receive("github", "hub", forged, delivery.body)).status == 401
    ping = {**delivery.headers, "X-GitHub-Event": "ping"}
    assert (await receiver.receive("github", "hub", ping, delivery.body)).body[
        "outcome"
    ] == "ignored"
    assert (await receiver.receive("apify", "hub", delivery.headers, delivery.body)).status == 404
    row = (await stored_runs(db, "hub"))[str(run["id"])]
    assert row["status"] == "in_progress" and row["github_workflow"] == "CI"


async def test_a_pass_that_finds_nothing_new_costs_no_budget(hub, hub_sim, db, hub_settings):
    hub.add_runs(REPO, 30, created_at=hub.now() - timedelta(hours=3))
    hub.add_runs(REPO, 2, status="queued", stuck=True)
    async with runtime.open_runtime(hub_settings(), ["hub"]) as rt:
        for _ in range(2):  # the second reads from the watermark: a request not asked before
            assert (await sync.run_pass(rt.stream("hub"), rt.store)).outcome == "succeeded"
        before = hub.budget.remaining
        result = await sync.run_pass(rt.stream("hub"), rt.store)

    assert result.outcome == "succeeded" and result.pages > 0
    assert hub.budget.remaining == before  # every answer a 304, which GitHub does not count
    assert len(await stored_runs(db, "hub")) == 32


async def test_the_analytics_views_cover_github_runs_by_workflow(hub, hub_sim, db, hub_settings):
    base = hub.now() - timedelta(days=2)
    hub.add_runs(REPO, 3, workflow="ci.yml", created_at=base)
    hub.add_runs(REPO, 2, workflow="ci.yml", conclusion="failure", created_at=base)
    hub.add_runs(REPO, 1, workflow="nightly.yml", status="queued", created_at=base)
    assert (await one_pass(hub_settings(), "hub")).outcome == "succeeded"

    async with db.pool.acquire() as conn:
        rates = await conn.fetch(
            "SELECT scope, terminal_runs, succeeded_runs, open_runs"
            " FROM runsync.success_rate_per_day WHERE upstream = 'github' ORDER BY scope"
        )
        listed = await conn.fetch(
            "SELECT run_id, workflow, event, branch, actor, status, conclusion, attempt,"
            " created_at, started_at FROM runsync.github_workflow_runs WHERE source = 'hub'"
        )
    assert [tuple(r) for r in rates] == [("CI", 5, 3, 0), ("Nightly", 0, 0, 1)]
    truth = {str(r["id"]): r for r in hub.runs(REPO)}
    assert {r["run_id"] for r in listed} == truth.keys()
    for row in listed:
        item = truth[row["run_id"]]
        assert (row["workflow"], row["status"], row["conclusion"], row["attempt"]) == (
            item["name"], item["status"], item["conclusion"], item["run_attempt"],
        )  # fmt: skip
        assert row["created_at"] == datetime.fromisoformat(item["created_at"])
