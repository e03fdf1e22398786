"""One actor's runs and one task's runs: the other two Apify list endpoints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from helpers import assert_matches_upstream, interrupted_pass, one_pass, stored_runs

T0 = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.mark.parametrize("by", ["id", "username~name"])
async def test_actor_source_stores_that_actors_runs_only(world, sim, db, apify_settings, by):
    mine, other = world.actors[0], world.actors[1]
    for i in range(15):
        world.add_runs(
            1, status="SUCCEEDED", started_at=T0 + timedelta(minutes=i), actor_id=mine["id"]
        )
        world.add_runs(
            1, status="SUCCEEDED", started_at=T0 + timedelta(minutes=i), actor_id=other["id"]
        )
    ref = mine["id"] if by == "id" else f"{mine['username']}~{mine['name']}"

    result = await one_pass(apify_settings(extra=f'actor = "{ref}"'))

    assert result.outcome == "succeeded", result.error
    expected = [item for item in world.list_items() if item["actId"] == mine["id"]]
    assert_matches_upstream(await stored_runs(db), expected)


async def test_unknown_actor_fails_with_the_upstreams_words(world, sim, db, apify_settings):
    result = await one_pass(apify_settings(extra='actor = "janedoe~nope"'))
    assert result.outcome == "failed"
    assert "HTTP 404" in result.error and "Actor was not found" in result.error


def task_runs(world, task) -> list[dict]:
    return [item for item in world.list_items() if item["actorTaskId"] == task["id"]]


async def test_task_source_walks_newest_first_down_to_the_watermark(world, sim, db, apify_settings):
    task = world.tasks[0]
    for i in range(34):
        world.add_runs(
            1, status="SUCCEEDED", started_at=T0 + timedelta(minutes=i), task_id=task["id"]
        )
    world.add_runs(5, status="SUCCEEDED", started_at=T0)  # not the task's
    settings = apify_settings(extra=f'task = "{task["id"]}"')

    await one_pass(settings)
    assert_matches_upstream(await stored_runs(db), task_runs(world, task))

    world.add_runs(3, status="RUNNING", task_id=task["id"])
    before = sim.requests["apify.list_task_runs"]
    await one_pass(settings)
    assert_matches_upstream(await stored_runs(db), task_runs(world, task))
    # Three new runs fit the first page, which also reaches the old watermark; then the list of
    # open runs.
    assert sim.requests["apify.list_task_runs"] - before == 2


async def test_task_walk_killed_midway_while_runs_arrive_skips_nothing(
    world, sim, db, apify_settings
):
    task = world.tasks[0]
    for i in range(20):
        world.add_runs(
            1, status="SUCCEEDED", started_at=T0 + timedelta(minutes=i), task_id=task["id"]
        )
    settings = apify_settings(page_size=5, extra=f'task = "{task["id"]}"')
    await one_pass(settings)
    # Forty new runs: the next walk needs nine pages to get back down to the watermark.
    for i in range(40):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(hours=1, minutes=i),
                       task_id=task["id"])  # fmt: skip

    await interrupted_pass(settings, "apify", after_pages=2)

    async with db.pool.acquire() as conn:
        checkpoint = await conn.fetchrow("SELECT watermark, cursor FROM runsync.checkpoints")
    # Mid-walk the watermark has not moved; the walk's cursor is the checkpoint.
    assert checkpoint["watermark"] == T0 + timedelta(minutes=19)
    assert checkpoint["cursor"]["offset"] == 10

    for i in range(7):
        world.add_runs(1, status="SUCCEEDED", task_id=task["id"],
                       started_at=datetime.now(UTC) - timedelta(minutes=1, seconds=i))  # fmt: skip
    requests = sim.requests["apify.list_task_runs"]
    # The newcomers first, from the top down to the walk's top (two pages of five); then the walk
    # resumes at offset 10, where the newcomers push runs down; then the open runs' list.
    result = await one_pass(settings)

    assert result.outcome == "succeeded"
    assert_matches_upstream(await stored_runs(db), task_runs(world, task))
    assert sim.requests["apify.list_task_runs"] - requests == 2 + 8 + 1
