"""SIGKILL at random points, many times: the table ends equal to the upstream, nothing twice.

A process is killed when the simulator receives its Nth upstream request, before answering it,
with N drawn from a seed: a point in the work, not an instant on a clock that load would move.
The test prints its seed and kill points; RUNSYNC_CRASH_SEED=... replays another seed. (What the
process had in flight beside that request, other windows and a page being written, still depends
on scheduling.)

Each test runs against an Apify source (its backfill in windows walked side by side) and a GitHub
one (one walk through `created` ranges, then a walk per open status and reads by id). GitHub's
requests go at most 15 a second, so its cases make fewer requests and kill earlier.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from helpers import (
    GITHUB_BUDGET,
    REPO,
    TOKEN,
    assert_matches_github,
    assert_matches_upstream,
    clock_from,
    config_toml,
    eventually,
    github_items,
    source_toml,
    spawn,
    stored_runs,
)

from worker.simulator import Faults
from worker.sources import apify
from worker.sources.github.simulator import GitHubWorld

T0 = datetime(2026, 7, 1, tzinfo=UTC)
SEED = os.environ.get("RUNSYNC_CRASH_SEED")
ENV = {"GITHUB_TOKEN": TOKEN}


@dataclass(frozen=True)
class Upstream:
    """What the tests need of one upstream's source: its name and config keys, the list route
    whose requests are counted, and where the kills fall (1-based requests) in a backfill and in
    a daemon's run."""

    source: str
    keys: dict
    route: str
    backfill_kills: tuple[int, int]
    daemon_kills: tuple[int, int]
    repeats_per_kill: int  # list requests a kill may make the backfill ask again


UPSTREAMS = {
    # The backfill's windows (8 at most) each lose the page being written, the one fetched
    # ahead, and the plan's probes if it was being made.
    "apify": Upstream("apify", {}, "apify.list_user_runs", (2, 16), (1, 30), 3 * 8),
    # One walk: the page being written, the one fetched ahead and the one asked when killed.
    "github": Upstream(
        "hub", {"kind": "github", "token_env": "GITHUB_TOKEN", "repository": REPO},
        "github.list_repo_runs", (2, 6), (1, 12), 3,
    ),
}  # fmt: skip


@pytest.fixture
def hub():
    """The repository, its times the test's and GitHub's 30 days of re-runs still open; some of
    its objects leave fields out."""
    return GitHubWorld(
        repos={REPO: 0}, seed=11, rate_limit=GITHUB_BUDGET, omit_share=0.1,
        clock=clock_from(T0 + timedelta(days=2)),
    )  # fmt: skip


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


def config_file(tmp_path, sim, upstream: Upstream) -> str:
    path = tmp_path / "crash.toml"
    # A killed process's lease is taken over 2 s after its last renewal (not the default 30 s).
    text = config_toml(
        source_toml(upstream.source, sim.base_url, page_size=50, **upstream.keys),
        takeover_after="2s",
    )
    path.write_text(text)
    return str(path)


async def run_to_the_end(database_url: str, *args: str) -> None:
    """Runs a command, which must succeed (a killed process's locks are gone: locks_released)."""
    process = await spawn(database_url, *args, env=ENV)
    assert await process.wait() == 0, f"runsync {' '.join(args)} failed"


async def assert_stored_as_upstream(db, upstream: str, world, hub, deleted=()) -> None:
    """The source's table equals the upstream's runs; runs deleted upstream may stay (marked
    gone if runsync looked for them: an open GitHub run is read until it ends)."""
    if upstream == "apify":
        assert_matches_upstream(await stored_runs(db), world.list_items())
        return
    rows = await stored_runs(db, "hub")
    gone = {run_id for run_id, row in rows.items() if row["gone_at"] is not None}
    deleted = {str(run_id) for run_id in deleted}
    assert gone <= deleted
    assert_matches_github(
        {run_id: row for run_id, row in rows.items() if run_id not in deleted},
        github_items(hub, REPO),
    )


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
@pytest.mark.parametrize("upstream", UPSTREAMS)
async def test_backfill_killed_at_random_requests(
    world, hub, sim, db, database_url, tmp_path, upstream
):
    case = UPSTREAMS[upstream]
    if upstream == "apify":  # 60 pages of 50, in windows walked side by side
        for i in range(3000):
            world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(seconds=i))
    else:  # about 19 pages of 50, in one walk; three runs share every 50th second
        for i in range(900):
            hub.add_runs(REPO, 3 if i % 50 == 0 else 1, created_at=T0 + timedelta(seconds=7 * i))
    path = config_file(tmp_path, sim, case)
    backfill = ("--config", path, "backfill", case.source)
    seed = int(SEED or 20261122)
    rng = random.Random(seed)
    kills = []

    for _ in range(12):
        process = await spawn(database_url, *backfill, env=ENV)
        nth = rng.randint(*case.backfill_kills)
        code = await run_until_killed(sim, db, process, nth)
        if code is None:
            kills.append(nth)
        elif code == 0:
            break  # finished; a finished backfill run again does nothing
    else:
        await run_to_the_end(database_url, *backfill)
    print(f"seed {seed}: {upstream} backfills killed at their requests {kills}")

    assert len(kills) >= 4
    await assert_stored_as_upstream(db, upstream, world, hub)
    await assert_nothing_twice(db)
    interrupted = sim.requests[case.route]
    # The same backfill walked once more without interruption is the work it needs.
    await run_to_the_end(database_url, *backfill, "--restart")
    needed = sim.requests[case.route] - interrupted
    # Each kill repeats at most what was in flight.
    assert interrupted <= needed + len(kills) * case.repeats_per_kill, (interrupted, needed, kills)


def github_changes(hub: GitHubWorld, round_: int, deleted: list[int]) -> None:
    """New runs start; every other round the open ones move on (queued to in progress to
    completed); in the last round an open run is deleted, then a finished one re-run (a run
    re-run and finished again between two passes is seen only by the hourly reconcile sweep)."""
    hub.add_runs(REPO, 5, status="queued", created_at=T0 + timedelta(hours=1, minutes=round_))
    if round_ == 5:
        queued = [r["id"] for r in hub.runs(REPO) if r.get("status") == "queued"]
        deleted.append(queued[-1])
        hub.delete_run(REPO, queued[-1])
    if round_ % 2:
        hub.progress(REPO)
        hub.progress(REPO)
    if round_ == 5:
        finished = [r["id"] for r in hub.runs(REPO) if r.get("status") == "completed"]
        hub.rerun(REPO, finished[len(finished) // 2])


@pytest.mark.process
@pytest.mark.parametrize("upstream", UPSTREAMS)
async def test_daemon_killed_at_random_requests_while_the_upstream_changes(
    world, hub, sim, db, database_url, tmp_path, upstream
):
    case = UPSTREAMS[upstream]
    if upstream == "apify":  # 24 pages of 50, then every second the new and open runs
        for i in range(1200):
            status = "RUNNING" if i % 40 == 0 else "SUCCEEDED"
            world.add_runs(1, status=status, started_at=T0 + timedelta(seconds=i))
    else:  # 6 pages of 50; then the new runs, and a walk per open status
        for i in range(300):
            status = "in_progress" if i % 40 == 0 else "completed"
            hub.add_runs(REPO, 1, status=status, created_at=T0 + timedelta(seconds=7 * i))
    path = config_file(tmp_path, sim, case)
    seed = int(SEED or 7)
    rng = random.Random(seed)
    kills = []
    deleted: list[int] = []

    for round_ in range(6):
        daemon = await spawn(database_url, "--config", path, "run", env=ENV)
        kills.append(rng.randint(*case.daemon_kills))
        assert await run_until_killed(sim, db, daemon, kills[-1]) is None  # a daemon runs on
        if upstream == "apify":
            started = T0 + timedelta(hours=1, minutes=round_)
            world.add_runs(25, status="RUNNING", started_at=started)
            if round_ % 2:
                world.finish_open("FAILED")
        else:
            github_changes(hub, round_, deleted)
    print(f"seed {seed}: {upstream} daemons killed at their requests {kills}")

    if upstream == "apify":
        # A quiet point: the runs that finished last have settled their costs, and runsync reads
        # a run it saw just finished once more SETTLE after its finish. (The kills take as long
        # as the machine makes them: without this the comparison below depended on it.)
        finished = [i["finishedAt"] for i in world.list_items() if i.get("finishedAt")]
        due = max(datetime.fromisoformat(f) for f in finished) + apify.SETTLE
        await asyncio.sleep(max((due - datetime.now(UTC)).total_seconds(), 0) + 0.1)
    await run_to_the_end(database_url, "--config", path, "sync")
    await assert_stored_as_upstream(db, upstream, world, hub, deleted)
    await assert_nothing_twice(db)
    async with db.pool.acquire() as conn:
        outcomes = {r["outcome"] for r in await conn.fetch("SELECT outcome FROM runsync.passes")}
    # The passes of killed daemons were closed by the next pass of their stream.
    assert "running" not in outcomes and "abandoned" in outcomes
