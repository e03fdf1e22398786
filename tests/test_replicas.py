"""Several daemons on one database share the streams, never a stream, once per tick between them."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from helpers import (
    REPO,
    TOKEN,
    ThreeSources,
    assert_matches_github,
    assert_matches_upstream,
    eventually,
    github_items,
    spawn,
    stored_runs,
)

T0 = datetime(2026, 9, 1, tzinfo=UTC)
STREAMS = {
    ("apify", "incremental"), ("task", "incremental"),
    ("raker", "incremental/proj_a"), ("raker", "incremental/proj_b"), ("hub", "incremental"),
}  # fmt: skip
# GitHub's passes are the slowest here (at most 15 requests a second): the waits below are long
# for them, none bounds its speed.
PATIENCE = 120.0


@pytest.mark.process
async def test_three_replicas_one_of_them_killed(
    world, raker, hub, sim, db, database_url, tmp_path
):
    sources = ThreeSources(world, raker, sim, runs=400, raker_runs=150, open_every=50, hub=hub)
    task = {"id": sources.task}
    sim.latency = 0.005
    path = tmp_path / "replicas.toml"
    # The killed replica's leases are taken over 2 s after their last renewal.
    path.write_text(sources.config(takeover_after="2s"))
    stderr = asyncio.subprocess.PIPE
    replicas = [
        await spawn(
            database_url, "--config", str(path), "run", stderr=stderr, env={"GITHUB_TOKEN": TOKEN}
        )
        for _ in range(3)
    ]
    started = datetime.now(UTC)

    def stored_as_upstream():
        return sources.stored_as_upstream(db)

    async def every_stream_ran_since(moment: datetime) -> bool:
        async with db.pool.acquire() as conn:
            ran = await conn.fetch(
                "SELECT DISTINCT source, stream FROM runsync.passes"
                " WHERE started_at > $1 AND finished_at IS NOT NULL",
                moment,
            )
        return {(row["source"], row["stream"]) for row in ran} >= STREAMS

    await eventually(stored_as_upstream, PATIENCE)  # the replicas have shared the first walks
    await eventually(lambda: every_stream_ran_since(started), PATIENCE)
    replicas[0].kill()  # it may hold leases right now: they expire, and others take them over
    killed_at = datetime.now(UTC)
    sources.change(new_task_runs=20, new_raker_runs=10)
    await eventually(stored_as_upstream, PATIENCE)  # the other two carried on
    await eventually(lambda: every_stream_ran_since(killed_at), PATIENCE)
    for replica in replicas[1:]:
        replica.send_signal(signal.SIGTERM)
    errors = [(await replica.communicate())[1].decode() for replica in replicas]
    assert [replica.returncode for replica in replicas[1:]] == [0, 0]
    problems = [
        line for log in errors[1:] for line in log.splitlines() if '"level": "error"' in line
    ]
    assert not problems, problems[:3]

    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT source, stream, started_at, finished_at, outcome FROM runsync.passes"
            " ORDER BY started_at"
        )
    passes = defaultdict(list)
    for row in rows:
        passes[(row["source"], row["stream"])].append(row)
    # The apify source's first pass copied its history first, as a pass of its backfill stream
    # (task and RakerOne sources, which cannot be cut into windows, walk theirs as before).
    copies = passes.pop(("apify", "backfill"))
    assert set(passes) == STREAMS
    # One replica copied it while the others skipped the stream, never two at once; a copy cut
    # short by the kill is resumed, and its record closed, by the next one. It ends finished.
    assert copies and all(r["finished_at"] is not None for r in copies)
    for earlier, later in itertools.pairwise(copies):
        assert later["started_at"] >= earlier["finished_at"]
    assert {r["outcome"] for r in copies} <= {"succeeded", "abandoned"}
    assert copies[-1]["outcome"] == "succeeded"
    seconds = (datetime.now(UTC) - started).total_seconds()
    for stream, runs in passes.items():
        finished = [r for r in runs if r["finished_at"] is not None]
        # Never two passes of one stream at once, and none failed (no deadlock, no lost lock).
        for earlier, later in itertools.pairwise(finished):
            assert later["started_at"] >= earlier["finished_at"], stream
        # (interrupted: stopped by SIGTERM after committing the page in flight; abandoned: the
        # killed replica's pass in flight, closed by the next pass of its stream)
        after_kill = {r["outcome"] for r in finished if r["started_at"] > killed_at}
        assert after_kill <= {"succeeded", "interrupted"}, stream
        assert {r["outcome"] for r in finished} <= after_kill | {"succeeded", "abandoned"}, stream
        # Once per tick between the three replicas, not three times. (A bound on a count that
        # load can only lower; the skip rule itself is tested directly, on a clock the test
        # moves, in tests/test_ticks.py: test_two_replicas_with_offset_clocks_run_each_tick_once
        # and test_replicas_whose_ticks_fall_apart_share_them.)
        assert len(runs) <= seconds + 2, (stream, len(runs), seconds)
        # The killed replica's leases were taken over: the stream went on after it died.
        assert any(r["started_at"] > killed_at for r in finished), stream

    items = world.list_items()
    assert_matches_upstream(await stored_runs(db, "apify"), items)
    assert_matches_upstream(
        await stored_runs(db, "task"), [i for i in items if i["actorTaskId"] == task["id"]]
    )
    assert_matches_upstream(
        await stored_runs(db, "raker"), raker.list_items("proj_a") + raker.list_items("proj_b")
    )
    assert_matches_github(await stored_runs(db, "hub"), github_items(hub, REPO))
