"""The reconcile sweep: on its own schedule, it reads the recent history again, so a run that
finished, ran again and finished again between two passes still reaches the table; and a stored
run it did not list is read by id, so a finished run deleted upstream is marked gone."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from helpers import REPO, TOKEN, FaultOn, assert_matches_upstream, one_pass, stored_runs

from worker import refresh, runtime, sync
from worker.store import Store

NOW = datetime.now(UTC).replace(microsecond=0)


async def age_passes(db: Store, by: timedelta) -> None:
    """Moves every pass back in time, as if it ran `by` earlier (the sweep's schedule reads
    pass times on the database's clock)."""
    async with db.pool.acquire() as conn:
        await conn.execute("UPDATE runsync.passes SET started_at = started_at - $1::interval", by)


async def sweep_if_due(settings, db, name="apify"):
    async with runtime.open_runtime(settings, [name]) as rt:
        return await sync.reconcile_if_due(rt.stream(name), db)


async def sweep_now(settings, name="apify", stop=None):
    """A sweep whether it is due or not (reconcile_if_due checks only that), told to stop by
    `stop`."""
    async with runtime.open_runtime(settings, [name]) as rt:
        return await sync.run_pass(rt.stream(name), rt.store, stream=sync.RECONCILE, stop=stop)


def gone(stored: dict[str, dict]) -> set[str]:
    return {run_id for run_id, row in stored.items() if row["gone_at"] is not None}


async def test_a_run_that_ran_again_between_two_passes_is_found_by_the_sweep(
    world, sim, db, apify_settings
):
    for i in range(30):
        world.add_runs(1, status="SUCCEEDED", started_at=NOW - timedelta(days=2, minutes=i))
    (twice,) = world.add_runs(1, status="RUNNING", started_at=NOW - timedelta(days=3))
    world.set_status(twice["id"], "TIMED-OUT", usage_total_usd=0.13)
    world.settle_all()
    settings = apify_settings(page_size=10)
    await one_pass(settings)
    # Between two passes: resurrected, and finished again, with its cost settled.
    world.set_status(twice["id"], "RUNNING")
    world.set_status(twice["id"], "SUCCEEDED", usage_total_usd=139.75)
    world.settle_all()  # the figure is final (Apify's is preliminary for about ten seconds)
    await one_pass(settings)
    assert (await stored_runs(db))[twice["id"]]["status"] == "TIMED-OUT"  # polling cannot see it

    assert await sweep_if_due(settings, db) is None  # the first sweep comes an hour after
    await age_passes(db, timedelta(hours=1))
    result = await sweep_if_due(settings, db)

    assert result.outcome == "succeeded" and result.stream == "reconcile"
    assert result.pages == 4  # 31 runs in the last week, 10 a page
    stored = await stored_runs(db)
    assert (stored[twice["id"]]["status"], stored[twice["id"]]["usage_total_usd"]) == (
        "SUCCEEDED",
        139.75,
    )
    assert_matches_upstream(stored, world.list_items())
    async with db.pool.acquire() as conn:
        history = await conn.fetch(
            "SELECT previous_status, status FROM runsync.run_status_history WHERE run_id = $1",
            twice["id"],
        )
    assert [tuple(h) for h in history] == [("TIMED-OUT", "SUCCEEDED")]
    assert await sweep_if_due(settings, db) is None  # not again within the hour

    (record,) = await db.status(["apify"])
    assert record["reconcile_requests"] == 4 and record["reconcile_at"] is not None


async def test_the_sweep_reads_only_its_lookback_and_can_be_switched_off(
    world, sim, db, apify_settings
):
    for i in range(25):
        world.add_runs(1, status="SUCCEEDED", started_at=NOW - timedelta(days=10, minutes=i))
    world.add_runs(5, status="SUCCEEDED", started_at=NOW - timedelta(hours=5))
    settings = apify_settings(page_size=10, extra='reconcile_lookback = "1d"')
    await one_pass(settings)
    await age_passes(db, timedelta(hours=1))

    result = await sweep_if_due(settings, db)

    assert (result.pages, result.items) == (1, 5)  # the last day only
    off = apify_settings(page_size=10, extra='reconcile_every = "off"')
    await age_passes(db, timedelta(days=1))
    assert await sweep_if_due(off, db) is None


@pytest.fixture
def hub_settings(sim, write_config):
    """One GitHub source (REPO's runs) against the simulator; no overlap, so a run started just
    before a sweep is in its range."""

    def settings(page_size: int = 10):
        return write_config(
            f"""
            [[sources]]
            name = "hub"
            kind = "github"
            token_env = "GITHUB_TOKEN"
            repository = "{REPO}"
            base_url = "{sim.base_url}"
            page_size = {page_size}
            overlap = "0"
            reconcile_lookback = "7d"
            every = "1s"
            """,
            env={"GITHUB_TOKEN": TOKEN},
        )

    return settings


class AfterTheFirstPage(FaultOn):
    """Every list request after the first garbled, each time another way."""

    def __init__(self) -> None:
        super().__init__("startedAfter", "wrong-types", alike=False)

    def draw(self, key: str) -> tuple[str | None, int]:
        kind, variant = super().draw(key)
        return (kind if sum(self.asked.values()) > 1 else None), variant


def apify_history(world) -> list[dict]:
    """30 finished runs started two days ago, in the sweep's range; and one started ten days ago,
    outside it (the lookback is a week)."""
    runs = [
        world.add_runs(1, status="SUCCEEDED", started_at=NOW - timedelta(days=2, minutes=i))[0]
        for i in range(30)
    ]
    world.add_runs(1, status="SUCCEEDED", started_at=NOW - timedelta(days=10))
    world.settle_all()
    return runs


async def test_a_finished_run_deleted_upstream_is_marked_gone_by_the_sweep(
    world, sim, db, apify_settings
):
    runs = apify_history(world)
    settings = apify_settings(page_size=10)
    await one_pass(settings)
    (old,) = [
        r for r in world.list_items() if r["startedAt"] < (NOW - timedelta(days=9)).isoformat()
    ]
    deleted = {runs[0]["id"], runs[13]["id"], runs[29]["id"]}
    for run_id in [*deleted, old["id"]]:  # retention: the old one is outside the lookback
        world.delete_run(run_id)
    await one_pass(settings)
    assert gone(await stored_runs(db)) == set()  # polling reads only open runs by id
    asked = sim.requests["apify.get_run"]

    await age_passes(db, timedelta(hours=1))
    result = await sweep_if_due(settings, db)

    assert result.outcome == "succeeded"
    stored = await stored_runs(db)
    assert gone(stored) == deleted  # the old run is outside the range: not asked for
    assert sim.requests["apify.get_run"] - asked == 3  # only the runs the sweep did not list
    assert (result.items, result.refreshed) == (27, 27 + 3)
    assert stored[old["id"]]["gone_at"] is None  # stays as it was: never asked for
    kept = {k: v for k, v in stored.items() if k not in {*deleted, old["id"]}}
    assert_matches_upstream(kept, world.list_items())
    async with db.pool.acquire() as conn:
        refreshed = await conn.fetchval(
            "SELECT refreshed FROM runsync.passes WHERE id = $1", result.pass_id
        )
    assert refreshed == 30

    await age_passes(db, timedelta(hours=1))
    again = await sweep_if_due(settings, db)
    assert again.outcome == "succeeded" and sim.requests["apify.get_run"] - asked == 3


async def test_an_interrupted_or_failed_sweep_marks_nothing_gone(world, sim, db, apify_settings):
    runs = apify_history(world)
    settings = apify_settings(page_size=10)
    await one_pass(settings)
    deleted = {runs[0]["id"], runs[29]["id"]}
    for run_id in deleted:
        world.delete_run(run_id)
    asked = sim.requests["apify.get_run"]

    stop = asyncio.Event()
    stop.set()  # the sweep stops after its first page
    interrupted = await sweep_now(settings, stop=stop)
    assert (interrupted.outcome, interrupted.pages) == ("interrupted", 1)
    # Every page after the walk's first reads differently every time: the sweep fails.
    sim.faults = AfterTheFirstPage()
    failed = await sweep_now(settings)
    assert failed.outcome == "failed" and failed.pages == 1, failed
    assert gone(await stored_runs(db)) == set()
    assert sim.requests["apify.get_run"] == asked

    sim.faults = None
    assert (await sweep_now(settings)).outcome == "succeeded"
    assert gone(await stored_runs(db)) == deleted


async def test_the_sweep_reads_a_bounded_number_of_unlisted_runs_the_rest_at_the_next(
    world, sim, db, apify_settings, monkeypatch
):
    monkeypatch.setattr(refresh, "UNLISTED", 5)
    runs = apify_history(world)
    settings = apify_settings(page_size=10)
    await one_pass(settings)
    deleted = {run["id"] for run in runs[::3]}  # 10 of them
    for run_id in deleted:
        world.delete_run(run_id)
    asked = sim.requests["apify.get_run"]

    first = await sweep_now(settings)
    assert first.outcome == "succeeded" and first.refreshed == 20 + 5
    assert len(gone(await stored_runs(db))) == 5 and sim.requests["apify.get_run"] - asked == 5
    assert (await sweep_now(settings)).refreshed == 20 + 5
    assert (await sweep_now(settings)).refreshed == 20  # none left
    assert gone(await stored_runs(db)) == deleted
    assert sim.requests["apify.get_run"] - asked == 10


async def test_a_deleted_github_run_is_marked_gone_and_one_the_listing_omits_is_not(
    hub, sim, db, hub_settings
):
    """GitHub's list is filtered by creation time, a run's start is its latest attempt's: a run
    created before the lookback and re-run within it is in the sweep's range but not in its
    listing (with GitHub's own lookback of 30 days, once it is more than 30 days old). Read by
    id, it is found: it stays."""
    runs = [
        hub.add_runs(REPO, 1, created_at=hub.now() - timedelta(days=2, minutes=i))[0]
        for i in range(12)
    ]
    (rerun,) = hub.add_runs(REPO, 1, created_at=hub.now() - timedelta(days=10))
    # Between it and the lookback: the sweep's walk stops before it reaches the re-run.
    hub.add_runs(REPO, 10, created_at=hub.now() - timedelta(days=8))
    settings = hub_settings(page_size=5)
    assert (await one_pass(settings, "hub")).outcome == "succeeded"
    hub.rerun(REPO, rerun["id"])
    for _ in range(3):
        hub.progress(REPO)
        assert (await one_pass(settings, "hub")).outcome == "succeeded"
    row = (await stored_runs(db, "hub"))[str(rerun["id"])]
    assert row["status"] == "completed" and row["started_at"] > NOW - timedelta(days=1)
    deleted = str(runs[4]["id"])
    hub.delete_run(REPO, runs[4]["id"])
    asked = sim.requests["github.get_run"]

    result = await sweep_now(settings, "hub")

    assert result.outcome == "succeeded"
    stored = await stored_runs(db, "hub")
    assert gone(stored) == {deleted}
    assert sim.requests["github.get_run"] - asked == 2  # the deleted run, and the re-run
    assert stored[str(rerun["id"])]["status"] == "completed"
