"""Upstream faults: with 10% of answers going wrong, every upstream still ends with exactly its runs.

Run alone with `python -m pytest tests/test_faults.py -q`; RUNSYNC_FAULT_SEEDS=1,2,3,... replays
more seeds (each seed replays the same faults).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from helpers import assert_matches_upstream, one_pass, stored_runs

from worker import observability, scheduler
from worker.simulator import Faults

T0 = datetime(2026, 6, 1, tzinfo=UTC)  # fixed times: the same seed replays the same faults
SEEDS = [int(s) for s in os.environ.get("RUNSYNC_FAULT_SEEDS", "1,2").split(",")]


async def until_every_pass_succeeds(passes, attempts: int = 5) -> int:
    """Runs passes again while any failed, as the daemon's next tick would; returns the tries."""
    for attempt in range(1, attempts + 1):
        if all(result.ok for result in await passes()):
            return attempt
    raise AssertionError(f"passes still failing after {attempts} tries")


@pytest.mark.parametrize("seed", SEEDS)
async def test_ten_percent_mixed_faults_lose_nothing(world, raker, sim, db, write_config, seed):
    task = world.tasks[0]
    for i in range(240):
        status = "RUNNING" if i % 25 == 0 else "SUCCEEDED"
        world.add_runs(1, status=status, started_at=T0 + timedelta(minutes=i),
                       task_id=task["id"] if i % 3 == 0 else None)  # fmt: skip
    for project in ("proj_a", "proj_b"):
        for i in range(150):
            status = "needs_review" if i % 30 == 0 else "completed"
            raker.add_runs(project, 1, status=status, started_at=T0 + timedelta(hours=i))
    raker.max_limit = 20
    settings = write_config(
        f"""
        [[sources]]
        name = "apify"
        kind = "apify"
        token_env = "APIFY_TOKEN"
        base_url = "{sim.base_url}"
        page_size = 20
        timeout = "1s"

        [[sources]]
        name = "apify-task"
        kind = "apify"
        token_env = "APIFY_TOKEN"
        base_url = "{sim.base_url}"
        page_size = 20
        timeout = "1s"
        task = "{task["id"]}"

        [[sources]]
        name = "raker"
        kind = "rakerone"
        token_env = "RAKER_TOKEN"
        base_url = "{sim.base_url}"
        projects = ["proj_a", "proj_b"]
        timeout = "1s"
        """
    )
    sim.faults = Faults(rate=0.1, seed=seed, stall_seconds=1.5, retry_after=0.05)

    for name in ("apify", "apify-task", "raker"):
        await until_every_pass_succeeds(
            lambda name=name: scheduler.run_backfill(settings, name, None, None)
        )
    # The upstreams move on: runs finish, new ones start; then the daemon's passes.
    world.finish_open("SUCCEEDED")
    world.add_runs(30, status="RUNNING", task_id=task["id"], started_at=T0 + timedelta(days=1))
    raker.finish_open("proj_a")
    raker.add_runs("proj_b", 25, status="processing", started_at=T0 + timedelta(days=8))
    await until_every_pass_succeeds(lambda: scheduler.run_once(settings, []))

    items = world.list_items()
    assert_matches_upstream(await stored_runs(db, "apify"), items)
    assert_matches_upstream(
        await stored_runs(db, "apify-task"), [i for i in items if i["actorTaskId"] == task["id"]]
    )
    assert_matches_upstream(
        await stored_runs(db, "raker"), raker.list_items("proj_a") + raker.list_items("proj_b")
    )
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM runsync.quarantine") == 0
    # The faults did happen (about a tenth of the answers; each seed replays its own draw).
    injected = sim.faults.injected
    assert injected, "no fault was injected: the test proved nothing"
    print(f"seed {seed}: {sum(sim.requests.values())} requests, faults {dict(injected)}")


async def test_when_retries_run_out_the_pass_fails_in_one_line_and_the_checkpoint_stays(
    world, sim, db, apify_settings, capsys
):
    for i in range(30):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(minutes=i))
    settings = apify_settings(page_size=10, extra="max_retries = 2")
    await one_pass(settings)
    async with db.pool.acquire() as conn:
        before = await conn.fetchrow("SELECT watermark, cursor FROM runsync.checkpoints")
    world.add_runs(15, status="SUCCEEDED")
    sim.faults = Faults(rate=1.0, kinds=("503",))
    observability.configure(level="INFO", json=True)
    capsys.readouterr()

    result = await one_pass(settings)

    assert result.outcome == "failed"
    # The list walk's error, word for word (not the open runs' list's, which failed after it).
    assert result.error == (
        "apify: GET /v2/actor-runs failed after 3 attempts: HTTP 503: "
        "Service is temporarily unavailable. Please try again later."
    )
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    errors = [line for line in lines if line["level"] == "error"]
    assert [e["event"] for e in errors] == ["pass failed"]
    assert errors[0]["source"] == "apify" and "HTTP 503" in errors[0]["error"]
    # Two for the list walk; two for the list of open runs, read even though the walk failed.
    assert sum(1 for line in lines if line["event"] == "request retry") == 4
    async with db.pool.acquire() as conn:
        after = await conn.fetchrow("SELECT watermark, cursor FROM runsync.checkpoints")
    assert dict(after) == dict(before)

    sim.faults = None  # the upstream recovers: the next pass resumes
    assert (await one_pass(settings)).outcome == "succeeded"
    assert_matches_upstream(await stored_runs(db), world.list_items())
