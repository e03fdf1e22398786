"""The reconcile sweep: on its own schedule, it reads the recent history again, so a run that
finished, ran again and finished again between two passes still reaches the table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from helpers import assert_matches_upstream, one_pass, stored_runs

from worker import runtime, sync
from worker.store import Store

NOW = datetime.now(UTC).replace(microsecond=0)


async def age_passes(db: Store, by: timedelta) -> None:
    """Moves every pass back in time, as if it ran `by` earlier (the sweep's schedule reads
    pass times on the database's clock)."""
    async with db.pool.acquire() as conn:
        await conn.execute("UPDATE runsync.passes SET started_at = started_at - $1::interval", by)


async def sweep_if_due(settings, db):
    async with runtime.open_runtime(settings, ["apify"]) as rt:
        return await sync.reconcile_if_due(rt.stream("apify"), db)


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
