"""SIGKILL at random instants, many times: the table ends equal to the upstream, nothing twice.

The random instants come from a fixed seed, so a failure replays.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

from helpers import assert_matches_upstream, config_toml, source_toml, spawn, stored_runs

T0 = datetime(2026, 7, 1, tzinfo=UTC)


def config_file(tmp_path, sim, **keys) -> str:
    path = tmp_path / "crash.toml"
    path.write_text(config_toml(source_toml("apify", sim.base_url, page_size=50, **keys)))
    return str(path)


async def run_to_the_end(database_url: str, *args: str) -> None:
    """Runs a command until it exits 0; a lock a killed process held may linger a moment."""
    for _ in range(10):
        process = await spawn(database_url, *args)
        if await process.wait() == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"runsync {' '.join(args)} kept failing")


async def assert_nothing_twice(db) -> None:
    async with db.pool.acquire() as conn:
        # Each run's changes chain (every change starts where the last one ended), so none was
        # recorded twice, and no status follows itself.
        twice = await conn.fetchval(
            """SELECT count(*) FROM (
                   SELECT previous_status,
                          lag(status) OVER (PARTITION BY source, run_id ORDER BY id) AS before
                   FROM runsync.run_status_history) AS t
               WHERE before IS NOT NULL AND previous_status IS DISTINCT FROM before"""
        )
        repeated = await conn.fetchval(
            "SELECT count(*) FROM runsync.run_status_history WHERE previous_status = status"
        )
    assert (twice, repeated) == (0, 0)


async def test_backfill_killed_at_random_instants(world, sim, db, database_url, tmp_path):
    for i in range(3000):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(seconds=i))
    sim.latency = 0.05  # 60 pages of 50: several seconds of walking, cut into pieces
    # Requests are paced by the upstream's limits alone now (54 a second): the windows would walk
    # the whole history in about a second. A cap of 20 a second (the old default pace) keeps the
    # walk several seconds long, to be killed often.
    path = config_file(tmp_path, sim, max_requests_per_second=20)
    rng = random.Random(20261122)
    kills = 0

    for _ in range(12):
        process = await spawn(database_url, "--config", path, "backfill", "apify")
        try:
            code = await asyncio.wait_for(process.wait(), rng.uniform(0.4, 1.2))
        except TimeoutError:
            process.kill()
            await process.wait()
            kills += 1
            continue
        if code == 0:
            break  # finished; a finished backfill run again does nothing
    else:
        await run_to_the_end(database_url, "--config", path, "backfill", "apify")

    assert kills >= 4
    assert_matches_upstream(await stored_runs(db), world.list_items())
    await assert_nothing_twice(db)
    interrupted = sim.requests["apify.list_user_runs"]
    # The same backfill walked once more without interruption is the work it needs.
    await run_to_the_end(database_url, "--config", path, "backfill", "apify", "--restart")
    needed = sim.requests["apify.list_user_runs"] - interrupted
    # Each kill repeats at most what was in flight: per window (8 at most), the page being
    # written and the one fetched ahead, and the plan's probes if it was being made.
    assert interrupted <= needed + kills * 3 * 8, (interrupted, needed, kills)


async def test_daemon_killed_at_random_instants_while_the_upstream_changes(
    world, sim, db, database_url, tmp_path
):
    for i in range(1200):
        status = "RUNNING" if i % 40 == 0 else "SUCCEEDED"
        world.add_runs(1, status=status, started_at=T0 + timedelta(seconds=i))
    sim.latency = 0.01
    path = config_file(tmp_path, sim)
    rng = random.Random(7)

    for round_ in range(6):
        daemon = await spawn(database_url, "--config", path, "run")
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        daemon.kill()
        await daemon.wait()
        world.add_runs(25, status="RUNNING", started_at=T0 + timedelta(hours=1, minutes=round_))
        if round_ % 2:
            world.finish_open("FAILED")

    await run_to_the_end(database_url, "--config", path, "sync")
    assert_matches_upstream(await stored_runs(db), world.list_items())
    await assert_nothing_twice(db)
    async with db.pool.acquire() as conn:
        outcomes = {r["outcome"] for r in await conn.fetch("SELECT outcome FROM runsync.passes")}
    # The passes of killed daemons were closed by the next pass of their stream.
    assert "running" not in outcomes and "abandoned" in outcomes
