"""SIGKILL at random points, many times: the table ends equal to the upstream, nothing twice.

A process is killed when the simulator receives its Nth upstream request, before answering it,
with N drawn from a seed: a point in the work, not an instant on a clock that load would move.
The test prints its seed and kill points; RUNSYNC_CRASH_SEED=... replays another seed. (What the
process had in flight beside that request, other windows and a page being written, still depends
on scheduling.)
"""

from __future__ import annotations

import asyncio
import os
import random
from datetime import UTC, datetime, timedelta

import pytest
from helpers import (
    assert_matches_upstream,
    config_toml,
    eventually,
    source_toml,
    spawn,
    stored_runs,
)

from worker.simulator import Faults
from worker.sources import apify

T0 = datetime(2026, 7, 1, tzinfo=UTC)
SEED = os.environ.get("RUNSYNC_CRASH_SEED")


class KillAt(Faults):
    """Kills `process` (SIGKILL) when its `nth` upstream request arrives, and leaves that request
    unanswered; the requests before it are answered as usual."""

    def __init__(self, process: asyncio.subprocess.Process, nth: int) -> None:
        super().__init__(rate=0.0, kinds=("stall",), stall_seconds=5.0)
        self.process, self.nth, self.asked = process, nth, 0

    def draw(self, key: str) -> tuple[str | None, int]:
        self.asked += 1
        if self.asked < self.nth:
            return None, 0
        if self.process.returncode is None:
            self.process.kill()
        return "stall", 0  # dead or dying: the answer must not reach it

    @property
    def killed(self) -> bool:
        return self.asked >= self.nth


async def run_until_killed(sim, db, process, nth: int) -> int | None:
    """Waits for the process; None if it was killed at its `nth` request, else its exit code.
    Returns once the locks it held are released."""
    sim.faults = kill = KillAt(process, nth)
    try:
        code = await process.wait()
    finally:
        sim.faults = None
    await eventually(lambda: locks_released(db))
    return None if kill.killed else code


def config_file(tmp_path, sim, **keys) -> str:
    path = tmp_path / "crash.toml"
    # A killed process's lease is taken over 1 s after its last renewal (not the default 30 s).
    text = config_toml(
        source_toml("apify", sim.base_url, page_size=50, **keys), takeover_after="2s"
    )
    path.write_text(text)
    return str(path)


async def run_to_the_end(database_url: str, *args: str) -> None:
    """Runs a command, which must succeed (a killed process's locks are gone: locks_released)."""
    process = await spawn(database_url, *args)
    assert await process.wait() == 0, f"runsync {' '.join(args)} failed"


async def locks_released(db) -> bool:
    """No process holds a stream's lease in the test's database, so no pass will be skipped: a
    killed process's leases expire `takeover_after` after their last renewal. (A pass skipped
    for a lingering lease exits 0, which would pass for the work done.)"""
    async with db.pool.acquire() as conn:
        return not await conn.fetchval(
            "SELECT count(*) FROM runsync.leases WHERE expires_at > now()"
        )


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


@pytest.mark.process
async def test_backfill_killed_at_random_requests(world, sim, db, database_url, tmp_path):
    for i in range(3000):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(seconds=i))
    path = config_file(tmp_path, sim)  # 60 pages of 50, in windows walked side by side
    seed = int(SEED or 20261122)
    rng = random.Random(seed)
    kills = []

    for _ in range(12):
        process = await spawn(database_url, "--config", path, "backfill", "apify")
        nth = rng.randint(2, 16)
        code = await run_until_killed(sim, db, process, nth)
        if code is None:
            kills.append(nth)
        elif code == 0:
            break  # finished; a finished backfill run again does nothing
    else:
        await run_to_the_end(database_url, "--config", path, "backfill", "apify")
    print(f"seed {seed}: backfills killed at their requests {kills}")

    assert len(kills) >= 4
    assert_matches_upstream(await stored_runs(db), world.list_items())
    await assert_nothing_twice(db)
    interrupted = sim.requests["apify.list_user_runs"]
    # The same backfill walked once more without interruption is the work it needs.
    await run_to_the_end(database_url, "--config", path, "backfill", "apify", "--restart")
    needed = sim.requests["apify.list_user_runs"] - interrupted
    # Each kill repeats at most what was in flight: per window (8 at most), the page being
    # written and the one fetched ahead, and the plan's probes if it was being made.
    assert interrupted <= needed + len(kills) * 3 * 8, (interrupted, needed, kills)


@pytest.mark.process
async def test_daemon_killed_at_random_requests_while_the_upstream_changes(
    world, sim, db, database_url, tmp_path
):
    for i in range(1200):
        status = "RUNNING" if i % 40 == 0 else "SUCCEEDED"
        world.add_runs(1, status=status, started_at=T0 + timedelta(seconds=i))
    path = config_file(tmp_path, sim)  # 24 pages of 50, then every second the new and open runs
    seed = int(SEED or 7)
    rng = random.Random(seed)
    kills = []

    for round_ in range(6):
        daemon = await spawn(database_url, "--config", path, "run")
        kills.append(rng.randint(1, 30))
        assert await run_until_killed(sim, db, daemon, kills[-1]) is None  # a daemon runs on
        world.add_runs(25, status="RUNNING", started_at=T0 + timedelta(hours=1, minutes=round_))
        if round_ % 2:
            world.finish_open("FAILED")
    print(f"seed {seed}: daemons killed at their requests {kills}")

    # A quiet point: the runs that finished last have settled their costs, and runsync reads a
    # run it saw just finished once more SETTLE after its finish. (The kills take as long as the
    # machine makes them: without this the comparison below depended on it.)
    finished = [i["finishedAt"] for i in world.list_items() if i.get("finishedAt")]
    due = max(datetime.fromisoformat(f) for f in finished) + apify.SETTLE
    await asyncio.sleep(max((due - datetime.now(UTC)).total_seconds(), 0) + 0.1)
    await run_to_the_end(database_url, "--config", path, "sync")
    assert_matches_upstream(await stored_runs(db), world.list_items())
    await assert_nothing_twice(db)
    async with db.pool.acquire() as conn:
        outcomes = {r["outcome"] for r in await conn.fetch("SELECT outcome FROM runsync.passes")}
    # The passes of killed daemons were closed by the next pass of their stream.
    assert "running" not in outcomes and "abandoned" in outcomes
