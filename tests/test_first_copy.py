"""A new stream's first pass copies the history as a backfill in windows, then goes on
incrementally from where the copy ended; a finished backfill counts for the incremental stream."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from helpers import assert_matches_upstream, interrupted_pass, one_pass, stored_runs

from worker import scheduler, sync
from worker.model import Checkpoint

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def seed(world, count: int, *, open_every: int = 0) -> None:
    for i in range(count):
        status = "RUNNING" if open_every and i % open_every == 0 else "SUCCEEDED"
        world.add_runs(1, status=status, started_at=T0 + timedelta(minutes=i))


async def checkpoints(db) -> dict[str, Checkpoint]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch("SELECT stream, watermark, cursor FROM runsync.checkpoints")
    return {r["stream"]: Checkpoint(r["watermark"], r["cursor"]) for r in rows}


async def pass_records(db) -> list[tuple[str, str]]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch("SELECT stream, outcome FROM runsync.passes ORDER BY id")
    return [(r["stream"], r["outcome"]) for r in rows]


async def test_the_first_pass_copies_in_windows_and_goes_on_from_the_copys_end(
    world, sim, db, apify_settings
):
    seed(world, 400, open_every=50)
    result = await one_pass(apify_settings(page_size=10))

    assert result.outcome == "succeeded", result.error
    assert_matches_upstream(await stored_runs(db), world.list_items())
    # The copy was a backfill pass of all of history, in windows; then the incremental pass.
    assert await pass_records(db) == [("backfill", "succeeded"), ("incremental", "succeeded")]
    saved = await checkpoints(db)
    newest = T0 + timedelta(minutes=399)
    assert saved["backfill"].watermark == newest
    assert saved["backfill"].cursor["range"] == [None, None]
    assert len(saved["backfill"].cursor["windows"]) == 8
    # The incremental stream starts where the copy ended, not at the beginning of history: its
    # walk read one page, from the copy's end less the overlap.
    assert saved["incremental"].watermark == newest
    assert result.pages <= 1 + 1  # the newest page, and the open runs in one page
    assert not any(s.startswith("backfill#") for s in saved)  # the windows are forgotten

    # The next pass: the newest page and the open runs, nothing more.
    before = sim.requests["apify.list_user_runs"]
    await one_pass(apify_settings(page_size=10))
    assert sim.requests["apify.list_user_runs"] - before == 2


async def test_a_run_that_starts_while_the_copy_runs_is_stored(world, sim, db, apify_settings):
    seed(world, 300)
    sim.latency = 0.02
    started: list[str] = []

    async def start_runs_during_the_copy():
        while sim.requests["apify.list_user_runs"] < 12:  # noqa: ASYNC110 - counted by the simulator
            await asyncio.sleep(0.005)
        # One at the top of the history, as the copy's windows are walking it.
        started.extend(
            r["id"] for r in world.add_runs(2, status="RUNNING", started_at=datetime.now(UTC))
        )

    starter = asyncio.create_task(start_runs_during_the_copy())
    result = await one_pass(apify_settings(page_size=10))
    await starter

    assert result.outcome == "succeeded", result.error
    stored = await stored_runs(db)
    assert set(started) <= set(stored)
    assert_matches_upstream(stored, world.list_items())


async def test_a_copy_killed_midway_resumes_its_windows(world, sim, db, apify_settings):
    seed(world, 1000)
    settings = apify_settings(page_size=25)
    await interrupted_pass(settings, "apify", after_pages=6)

    saved = await checkpoints(db)
    assert "incremental" not in saved  # the stream has not started: the copy is in flight
    windows = [s for s in saved if s.startswith("backfill#")]
    assert len(windows) >= 2
    before = sim.requests["apify.list_user_runs"]

    result = await one_pass(settings)

    assert result.outcome == "succeeded", result.error
    assert_matches_upstream(await stored_runs(db), world.list_items())
    # Resumed, not started over: a whole copy takes 8 probes and 8 windows of 6 requests (5 pages
    # of 25, and the one that finds the end); the incremental pass after it takes 2.
    resumed = sim.requests["apify.list_user_runs"] - before
    assert resumed < 8 + 48 + 2
    assert [s for s, _ in await pass_records(db)] == ["backfill", "backfill", "incremental"]


async def test_a_finished_backfill_counts_for_a_new_incremental_stream(
    world, sim, db, apify_settings
):
    seed(world, 400, open_every=100)
    settings = apify_settings(page_size=10)
    (backfilled,) = await scheduler.run_backfill(settings, "apify", None, None)
    assert backfilled.outcome == "succeeded"
    lists, runs = sim.requests["apify.list_user_runs"], sim.requests["apify.get_run"]

    result = await one_pass(settings)

    assert result.outcome == "succeeded", result.error
    # At most two list requests (the newest page, the open runs) and the open runs' checks.
    assert sim.requests["apify.list_user_runs"] - lists <= 2
    assert sim.requests["apify.get_run"] - runs <= 4
    assert [s for s, _ in await pass_records(db)] == ["backfill", "incremental"]
    assert (await checkpoints(db))["incremental"].watermark == T0 + timedelta(minutes=399)


async def test_a_backfill_of_part_of_history_does_not_stand_in_for_the_first_pass(
    world, sim, db, apify_settings
):
    seed(world, 200)
    settings = apify_settings(page_size=10)
    since = T0 + timedelta(minutes=150)
    (partial,) = await scheduler.run_backfill(settings, "apify", since, None)
    assert partial.outcome == "succeeded"
    assert len(await stored_runs(db)) == 50

    result = await one_pass(settings)

    assert result.outcome == "succeeded", result.error
    assert_matches_upstream(await stored_runs(db), world.list_items())  # all of history
    assert (await checkpoints(db))["backfill"].cursor["range"] == [None, None]


async def test_a_lagging_stream_jumps_to_the_end_of_a_later_whole_backfill(
    world, sim, db, apify_settings
):
    seed(world, 50)
    settings = apify_settings(page_size=10)
    await one_pass(settings)
    for i in range(200):  # the daemon was down while these ran
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(hours=2, minutes=i))
    # The first pass's copy left its mark: walking all of history again takes --restart.
    (again,) = await scheduler.run_backfill(settings, "apify", None, None)
    assert again.note and "already complete" in again.note
    await scheduler.run_backfill(settings, "apify", None, None, restart=True)
    before = sim.requests["apify.list_user_runs"]

    result = await one_pass(settings)

    assert result.outcome == "succeeded"
    assert sim.requests["apify.list_user_runs"] - before == 2
    assert_matches_upstream(await stored_runs(db), world.list_items())


async def test_while_another_process_copies_a_pass_of_the_stream_is_skipped(
    world, sim, db, apify_settings
):
    seed(world, 100)
    settings = apify_settings(page_size=10)
    async with db.lease("apify", sync.BACKFILL) as held:
        assert held is not None
        result = await one_pass(settings)
    assert result.outcome == "skipped"
    assert await stored_runs(db) == {}
    assert "incremental" not in await checkpoints(db)  # it has not started either


def test_which_backfills_stand_in_for_the_incremental_stream():
    at = T0 + timedelta(days=1)
    done = {"done": True, "range": [None, None]}

    def copied(watermark=at, **cursor) -> Checkpoint:
        return Checkpoint(watermark, {**done, **cursor})

    never = Checkpoint()
    assert sync.covers(copied(), never)
    assert not sync.covers(None, never)
    assert not sync.covers(copied(done=False), never)  # still in flight
    assert not sync.covers(copied(watermark=None), never)  # found no run
    assert not sync.covers(copied(range=["2026-03-01T00:00:00.000Z", None]), never)
    assert not sync.covers(copied(range=[None, "2026-04-01T00:00:00.000Z"]), never)
    # A stream that ran: the backfill must begin at or before its watermark and end after it.
    assert sync.covers(copied(), Checkpoint(T0))
    assert not sync.covers(copied(), Checkpoint(at))
    assert not sync.covers(copied(), Checkpoint(at + timedelta(seconds=1)))
    assert sync.covers(copied(range=["2026-02-01T00:00:00.000Z", None]), Checkpoint(T0))
    assert not sync.covers(copied(range=["2026-03-02T00:00:00.000Z", None]), Checkpoint(T0))
    # A first walk in flight from the beginning (no watermark yet) is left to finish.
    assert not sync.covers(copied(), Checkpoint(None, {"offset": 30}))
