"""RakerOne end to end: newest-first keyset walks that never skip, open runs followed to the end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from helpers import assert_matches_upstream, interrupted_pass, passes, stored_runs

from worker import sync

NOW = datetime.now(UTC).replace(microsecond=0)


def history(raker, project: str, count: int, *, days: int = 10, status: str = "completed") -> None:
    """`count` runs over the last `days` days, one second apart at least, oldest first."""
    step = timedelta(days=days) / count
    for i in range(count):
        raker.add_runs(project, 1, status=status, started_at=NOW - timedelta(days=days) + i * step)


def requests(sim) -> int:
    return sim.requests["rakerone.list_action_runs"]


async def test_backfill_stores_exactly_the_upstreams_runs(raker, sim, db, raker_settings):
    history(raker, "proj_a", 340)
    raker.add_runs("proj_a", 3, status="needs_review", started_at=NOW - timedelta(days=3))

    (result,) = await passes(raker_settings(), stream=sync.BACKFILL)

    assert result.outcome == "succeeded", result.error
    assert result.stream == "backfill/proj_a" and result.pages == 4  # 343 runs, 100 a page
    assert_matches_upstream(await stored_runs(db, "raker"), raker.list_items("proj_a"))
    some = raker.list_items("proj_a")[5]
    row = (await stored_runs(db, "raker"))[some["id"]]
    assert (row["project"], row["triggered_by"]) == ("proj_a", some["triggeredBy"])
    assert row["result"] == some["result"] and row["is_terminal"]
    async with db.pool.acquire() as conn:
        mark = await conn.fetchval("SELECT cursor FROM runsync.checkpoints")
    assert mark["done"] is True and mark["range"] == [None, None]


async def test_an_interrupted_backfill_resumes_from_its_cursor(raker, sim, db, raker_settings):
    history(raker, "proj_a", 500)
    settings = raker_settings()
    await interrupted_pass(settings, "raker", after_pages=2, stream=sync.BACKFILL)
    async with db.pool.acquire() as conn:
        cursor = await conn.fetchval(
            "SELECT cursor FROM runsync.checkpoints WHERE stream = 'backfill/proj_a'"
        )
    assert cursor["cursor"] and cursor["range"] == [None, None]

    before = requests(sim)
    (result,) = await passes(settings, stream=sync.BACKFILL)

    assert result.outcome == "succeeded"
    assert requests(sim) - before == 3  # pages three to five, not the whole walk again
    assert_matches_upstream(await stored_runs(db, "raker"), raker.list_items("proj_a"))


async def test_incremental_walks_down_to_the_watermark_only(raker, sim, db, raker_settings):
    history(raker, "proj_a", 250)
    settings = raker_settings()
    await passes(settings)
    assert len(await stored_runs(db, "raker")) == 250

    raker.add_runs("proj_a", 120, status="completed")
    before = requests(sim)
    (result,) = await passes(settings)

    assert result.outcome == "succeeded"
    assert_matches_upstream(await stored_runs(db, "raker"), raker.list_items("proj_a"))
    assert requests(sim) - before == 2  # 120 new runs and the overlap fit two pages


async def test_a_pass_with_nothing_new_costs_one_request_plus_the_open_runs(
    raker, sim, db, raker_settings
):
    history(raker, "proj_a", 300)
    # Both open statuses lie below the newest page (the last 3 of 10 days), so each needs a walk.
    raker.add_runs("proj_a", 2, status="processing", started_at=NOW - timedelta(days=6))
    raker.add_runs("proj_a", 1, status="needs_review", started_at=NOW - timedelta(days=9))
    settings = raker_settings()
    await passes(settings)

    before = requests(sim)
    (result,) = await passes(settings)

    assert result.outcome == "succeeded" and result.written == 0
    # The newest page, then one page of each open status: processing, needs_review.
    assert requests(sim) - before == 3


async def test_a_run_open_for_30_days_that_then_completes_is_updated(
    raker, sim, db, raker_settings
):
    (review,) = raker.add_runs(
        "proj_a", 1, status="needs_review", started_at=NOW - timedelta(days=30)
    )
    history(raker, "proj_a", 900, days=29)  # a month of runs after it
    settings = raker_settings()
    await passes(settings)
    for _ in range(2):  # it stays in review; each pass checks it with one request
        before = requests(sim)
        await passes(settings)
        assert requests(sim) - before == 2

    raker.set_status("proj_a", review["id"], "completed", result={"success": True, "details": "ok"})
    before = requests(sim)
    (result,) = await passes(settings)

    # The newest page; needs_review, now empty; then one walk of the 901 runs down to it, once.
    assert requests(sim) - before == 1 + 1 + 10

    assert result.outcome == "succeeded"
    row = (await stored_runs(db, "raker"))[review["id"]]
    assert row["status"] == "completed" and row["is_terminal"] and row["finished_at"] is not None
    assert_matches_upstream(await stored_runs(db, "raker"), raker.list_items("proj_a"))
    before = requests(sim)
    await passes(settings)
    assert requests(sim) - before == 1  # nothing open any more: the newest page only


async def test_open_runs_that_moved_or_vanished(raker, sim, db, raker_settings):
    history(raker, "proj_a", 150)
    moved, finished, deleted = (
        raker.add_runs("proj_a", 1, status="processing", started_at=NOW - timedelta(days=d))[0]
        for d in (4, 5, 6)
    )
    settings = raker_settings()
    await passes(settings)

    raker.set_status("proj_a", moved["id"], "needs_review")
    raker.set_status("proj_a", finished["id"], "Cancelled")  # terminal in any case
    raker.delete_run("proj_a", deleted["id"])
    (result,) = await passes(settings)

    assert result.outcome == "succeeded"
    rows = await stored_runs(db, "raker")
    assert (rows[moved["id"]]["status"], rows[moved["id"]]["is_terminal"]) == (
        "needs_review",
        False,
    )
    assert (rows[finished["id"]]["status"], rows[finished["id"]]["is_terminal"]) == (
        "Cancelled",
        True,
    )
    assert rows[deleted["id"]]["gone_at"] is not None


async def test_a_killed_walk_resumes_and_misses_none_of_the_new_runs(
    raker, sim, db, raker_settings
):
    history(raker, "proj_a", 100)
    settings = raker_settings()
    await passes(settings)
    async with db.pool.acquire() as conn:
        watermark = await conn.fetchval("SELECT watermark FROM runsync.checkpoints")
    raker.add_runs("proj_a", 450, status="completed")  # five pages down to the watermark

    await interrupted_pass(settings, "raker", after_pages=1)

    async with db.pool.acquire() as conn:
        checkpoint = await conn.fetchrow("SELECT watermark, cursor FROM runsync.checkpoints")
    assert checkpoint["watermark"] == watermark  # not moved mid-walk
    assert checkpoint["cursor"]["cursor"]  # the walk's cursor is the checkpoint

    arrived = {run["id"] for run in raker.add_runs("proj_a", 7, status="processing")}
    (result,) = await passes(settings)  # resumes from the cursor, below the newcomers

    assert result.outcome == "succeeded"
    missing = {item["id"] for item in raker.list_items("proj_a")} - (
        await stored_runs(db, "raker")
    ).keys()
    assert missing <= arrived  # nothing older was skipped
    await passes(settings)
    assert_matches_upstream(await stored_runs(db, "raker"), raker.list_items("proj_a"))


async def test_an_expired_cursor_restarts_the_walk_from_the_top(raker, sim, db, raker_settings):
    history(raker, "proj_a", 100)
    settings = raker_settings()
    await passes(settings)
    raker.add_runs("proj_a", 350, status="completed")
    await interrupted_pass(settings, "raker", after_pages=1)

    raker.expire_cursors()
    (result,) = await passes(settings)

    assert result.outcome == "succeeded", result.error
    assert_matches_upstream(await stored_runs(db, "raker"), raker.list_items("proj_a"))
    async with db.pool.acquire() as conn:
        checkpoint = await conn.fetchrow("SELECT watermark, cursor FROM runsync.checkpoints")
    assert checkpoint["cursor"] is None
    newest = max(datetime.fromisoformat(i["startedAt"]) for i in raker.list_items("proj_a"))
    assert checkpoint["watermark"] == newest


async def test_two_projects_sync_side_by_side(raker, sim, db, raker_settings):
    history(raker, "proj_a", 130)
    history(raker, "proj_b", 70, status="failed")
    settings = raker_settings(projects=("proj_a", "proj_b"))
    from worker import scheduler

    results = await scheduler.run_once(settings, ["raker"])

    assert sorted((r.stream, r.outcome) for r in results) == [
        ("incremental/proj_a", "succeeded"),
        ("incremental/proj_b", "succeeded"),
    ]
    rows = await stored_runs(db, "raker")
    assert_matches_upstream(rows, raker.list_items("proj_a") + raker.list_items("proj_b"))
    assert {r["project"] for r in rows.values()} == {"proj_a", "proj_b"}
    async with db.pool.acquire() as conn:
        streams = await conn.fetch("SELECT stream FROM runsync.checkpoints ORDER BY stream")
    assert [s["stream"] for s in streams] == ["incremental/proj_a", "incremental/proj_b"]


async def test_bad_items_are_quarantined_and_a_forbidden_project_fails_clearly(
    raker, sim, db, raker_settings
):
    history(raker, "proj_a", 20)
    raker.add_raw_item("proj_a", {"status": "completed", "startedAt": "2026-01-01T00:00:00Z"},
                       started_at=NOW - timedelta(days=1))  # fmt: skip
    raker.add_raw_item("proj_a", {"id": "run_bad", "status": "completed", "startedAt": "soon"},
                       started_at=NOW - timedelta(days=2))  # fmt: skip

    (result,) = await passes(raker_settings())

    assert result.outcome == "succeeded" and result.quarantined == 2
    assert_matches_upstream(await stored_runs(db, "raker"), raker.list_items("proj_a"))
    async with db.pool.acquire() as conn:
        reasons = sorted(
            r["reason"] for r in await conn.fetch("SELECT reason FROM runsync.quarantine")
        )
    assert reasons == [
        "id is missing, not a string",
        "run run_bad: startedAt 'soon' is not an ISO 8601 time",
    ]

    (unknown,) = await passes(raker_settings(projects=("proj_nope",)))
    assert unknown.outcome == "failed" and "HTTP 404: not_found" in unknown.error


async def test_the_search_for_runs_that_left_their_status_stops_just_below_the_oldest(
    raker, sim, db, raker_settings
):
    """It walks down to the oldest of them less the overlap: not to the end of the history, and
    not one run short of them, though a page of newer runs lies within the overlap above them."""
    review_at = NOW - timedelta(days=5)
    for i in range(200):  # older history, far below them
        raker.add_runs(
            "proj_a", 1, status="completed", started_at=NOW - timedelta(days=15, minutes=-i)
        )
    (vanishing,) = raker.add_runs(
        "proj_a", 1, status="needs_review", started_at=review_at - timedelta(seconds=2)
    )
    (review,) = raker.add_runs("proj_a", 1, status="needs_review", started_at=review_at)
    for i in range(100):  # one page of newer runs, the oldest of them within the overlap
        raker.add_runs(
            "proj_a", 1, status="completed", started_at=review_at + timedelta(seconds=1 + i)
        )
    settings = raker_settings()
    await passes(settings)
    raker.set_status("proj_a", review["id"], "completed")
    raker.delete_run("proj_a", vanishing["id"])
    before = requests(sim)

    (result,) = await passes(settings)

    assert result.outcome == "succeeded", result.error
    rows = await stored_runs(db, "raker")
    assert (rows[review["id"]]["status"], rows[review["id"]]["gone_at"]) == ("completed", None)
    assert rows[vanishing["id"]]["gone_at"] is not None
    # The newest page; needs_review, now empty; the search: the newer page, then theirs.
    assert requests(sim) - before == 1 + 1 + 2


async def test_a_queued_run_is_followed_until_it_finishes(raker, sim, db, raker_settings):
    history(raker, "proj_a", 300)
    (queued,) = raker.add_runs("proj_a", 1, status="queued", created_at=NOW - timedelta(days=6))
    settings = raker_settings()
    await passes(settings)
    (result,) = await passes(settings)  # still queued, below the newest page: no start to go by
    assert result.outcome == "succeeded", result.error

    raker.start_run("proj_a", queued["id"])
    raker.set_status("proj_a", queued["id"], "completed")
    (result,) = await passes(settings)

    assert result.outcome == "succeeded", result.error
    row = (await stored_runs(db, "raker"))[queued["id"]]
    assert (row["status"], row["is_terminal"]) == ("completed", True)
    assert row["started_at"] is not None
    assert_matches_upstream(await stored_runs(db, "raker"), raker.list_items("proj_a"))


def runs_at(raker, status: str, start: datetime, count: int, step: timedelta) -> list[dict]:
    """`count` runs one `step` apart from `start` (a negative step: older and older)."""
    return [
        raker.add_runs("proj_a", 1, status=status, started_at=start + i * step)[0]
        for i in range(count)
    ]


async def test_a_status_walk_stops_once_it_has_found_its_runs(raker, sim, db, raker_settings):
    review_at = NOW - timedelta(days=5)
    older = runs_at(raker, "completed", review_at - timedelta(days=5), 150, -timedelta(minutes=1))
    (review,) = raker.add_runs("proj_a", 1, status="needs_review", started_at=review_at)
    newer = runs_at(raker, "completed", review_at + timedelta(seconds=1), 99, timedelta(seconds=1))
    runs_at(raker, "completed", NOW - timedelta(hours=1), 100, timedelta(seconds=1))  # the newest
    settings = raker_settings()
    await passes(settings)
    for run in [*newer, *older]:  # moved into review since: one page of them above it, more below
        raker.set_status("proj_a", run["id"], "needs_review")
    before = requests(sim)

    (result,) = await passes(settings)

    assert result.outcome == "succeeded", result.error
    assert (await stored_runs(db, "raker"))[review["id"]]["status"] == "needs_review"
    assert requests(sim) - before == 1 + 1  # the newest page; the page of needs_review that has it


async def test_a_status_walk_goes_down_to_the_oldest_run_of_that_status_only(
    raker, sim, db, raker_settings
):
    (processing,) = raker.add_runs(
        "proj_a", 1, status="processing", started_at=NOW - timedelta(days=20)
    )
    moved = runs_at(raker, "completed", NOW - timedelta(days=10), 150, -timedelta(minutes=1))
    (review,) = raker.add_runs(
        "proj_a", 1, status="needs_review", started_at=NOW - timedelta(days=6)
    )
    runs_at(raker, "completed", NOW - timedelta(hours=1), 100, timedelta(seconds=1))  # the newest
    settings = raker_settings()
    await passes(settings)
    raker.set_status("proj_a", review["id"], "completed")
    for run in moved:  # older than it, in review now: below where its status walk stops
        raker.set_status("proj_a", run["id"], "needs_review")
    before = requests(sim)

    (result,) = await passes(settings)

    assert result.outcome == "succeeded", result.error
    rows = await stored_runs(db, "raker")
    assert rows[review["id"]]["status"] == "completed"
    assert rows[processing["id"]]["status"] == "processing"
    # The newest page; one page of needs_review, down to the day it started; one of processing;
    # the search for it: the newest page, then the page it is on.
    assert requests(sim) - before == 1 + 1 + 1 + 2
