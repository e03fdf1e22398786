"""The passes one process runs at once: bounded, in order of arrival, and a backfill's extra
windows only in the spare half. The budget is plain asyncio; the last test runs passes on it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from helpers import eventually, stored_runs

from worker import runtime, sync
from worker.budget import Passes

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_passes_beyond_the_limit_wait_in_line_and_go_in_order_of_arrival():
    clock = Clock()
    passes = Passes(2, clock=clock)
    release = {i: asyncio.Event() for i in range(5)}
    order: list[int] = []

    async def one(i: int) -> None:
        async with passes.place():
            order.append(i)
            await release[i].wait()

    tasks = [asyncio.create_task(one(i)) for i in range(5)]
    await asyncio.sleep(0)
    assert order == [0, 1] and passes.in_flight == 2 and passes.queued == 3
    clock.now += 7
    assert passes.oldest_wait() == 7
    assert passes.figures() == {
        "passes_limit": 2, "passes_in_flight": 2, "passes_queued": 3, "pass_waits": 3,
        "pass_oldest_wait_seconds": 7,
    }  # fmt: skip
    for i in (1, 0, 2, 3, 4):
        release[i].set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]  # first come, first served
    assert passes.in_flight == 0 and passes.queued == 0 and passes.oldest_wait() == 0


async def test_a_pass_cancelled_in_line_leaves_it_and_one_handed_a_place_passes_it_on():
    passes = Passes(1)
    holder = asyncio.Event()

    async def hold() -> None:
        async with passes.place():
            await holder.wait()

    first = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0)
    assert passes.queued == 2
    waiting[0].cancel()  # gives up in line
    await asyncio.sleep(0)
    assert passes.queued == 1
    holder.set()
    await asyncio.gather(first, waiting[1])
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]
    assert passes.in_flight == 0

    # Handed the place, then cancelled before it ran: the place goes to the next in line.
    holder.clear()
    first = asyncio.create_task(hold())
    await asyncio.sleep(0)
    handed, after = asyncio.create_task(hold()), asyncio.create_task(hold())
    await asyncio.sleep(0)
    holder.set()
    await first  # its place is handed to `handed`, which has not run yet
    handed.cancel()
    await asyncio.gather(after)
    assert passes.in_flight == 0 and passes.queued == 0


async def test_a_backfill_takes_extra_places_only_when_spare_and_at_most_half():
    passes = Passes(8)
    granted = [passes.try_extra() for _ in range(8)]
    assert granted == [True] * 4 + [False] * 4  # half the budget at most
    assert passes.in_flight == 4 and passes.extra == 4
    # Passes still get the other half at once.
    async with passes.place(), passes.place(), passes.place(), passes.place():
        assert passes.in_flight == 8
        assert not passes.try_extra()
    passes.give_back_extra()
    assert passes.in_flight == 3 and passes.try_extra()


async def test_a_long_first_copy_leaves_a_place_for_another_source_s_pass(
    world, raker, sim, db, write_config
):
    """Two places: a big source's first copy walks two windows side by side while nobody else
    needs a place; another source's pass that comes meanwhile gets the spare place as soon as
    one window ends, and is done long before the copy. Never more than two at once."""
    for i in range(4000):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(minutes=i))
    raker.add_runs("proj_a", 5, status="completed", started_at=T0)
    sim.latency = 0.03
    settings = write_config(
        f"""
        [worker]
        max_passes = 2

        [[sources]]
        name = "big"
        kind = "apify"
        token_env = "APIFY_TOKEN"
        base_url = "{sim.base_url}"
        every = "1m"
        page_size = 50

        [[sources]]
        name = "small"
        kind = "rakerone"
        token_env = "RAKER_TOKEN"
        base_url = "{sim.base_url}"
        project = "proj_a"
        every = "1m"
        """
    )
    async with runtime.open_runtime(settings) as rt:
        seen: list[int] = []

        def watch(_page, _written) -> None:
            seen.append(rt.passes.in_flight)

        copy = asyncio.create_task(sync.run_pass(rt.stream("big"), rt.store, progress=watch))
        await eventually(lambda: rt.passes.in_flight == 2 and rt.passes.extra == 1)
        small = await sync.run_pass(rt.stream("small"), rt.store, progress=watch)
        assert small.outcome == "succeeded" and small.items == 5
        assert not copy.done()  # the small source did not wait for the copy
        assert rt.passes.waits == 1  # it waited for one window, in line
        result = await copy
    assert result.outcome == "succeeded"
    assert len(await stored_runs(db, "big")) == 4000
    assert seen and max(seen) <= 2
    assert rt.passes.in_flight == 0 and rt.passes.extra == 0
