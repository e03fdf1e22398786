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
        async with passes.place(group=i):  # each of its own token
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
    granted = [passes.try_extra("copy") for _ in range(8)]
    assert granted == [True] * 4 + [False] * 4  # half the budget at most
    assert passes.in_flight == 4 and passes.extra == 4
    # Passes still get the other half at once.
    async with passes.place("a"), passes.place("b"), passes.place("c"), passes.place("d"):
        assert passes.in_flight == 8
        assert not passes.try_extra("e")
    passes.give_back_extra("copy")
    assert passes.in_flight == 3 and passes.try_extra("copy")


async def test_one_token_s_passes_hold_at_most_half_and_the_others_go_past_them():
    """Passes slowed by one token's limit (a RakerOne account's 333 projects on a pace of 20 a
    second) must not hold every place while the other tokens' passes wait behind them."""
    passes = Passes(4)
    gate = asyncio.Event()
    started: list[str] = []

    async def one(group: str, name: str) -> None:
        async with passes.place(group):
            started.append(name)
            await gate.wait()

    tasks = [asyncio.create_task(one("slow", f"slow{i}")) for i in range(5)]
    await asyncio.sleep(0)
    assert started == ["slow0", "slow1"] and passes.queued == 3  # its share: half
    tasks += [asyncio.create_task(one("other", "other0")), asyncio.create_task(one("b", "b0"))]
    await asyncio.sleep(0)
    assert started[2:] == ["other0", "b0"]  # past the slow token's line, at once
    assert passes.in_flight == 4
    gate.set()
    await asyncio.gather(*tasks)
    assert started[4:] == ["slow2", "slow3", "slow4"]  # and its own in order
    assert passes.in_flight == 0 and passes.queued == 0


async def test_a_long_first_copy_leaves_a_place_for_another_pass_on_its_token(
    world, sim, db, write_config
):
    """Four places, so two for one token: a big source's first copy walks two windows side by
    side while nobody else needs a place; a pass of another source on the same token that
    comes meanwhile gets a place as soon as one window ends, and is done long before the copy.
    Never more than two of the token's at once."""
    task = world.tasks[0]["id"]
    for i in range(4000):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(minutes=i))
    of_task = [i for i in world.list_items() if i["actorTaskId"] == task]
    sim.latency = 0.03
    settings = write_config(
        f"""
        [worker]
        max_passes = 4

        [[sources]]
        name = "big"
        kind = "apify"
        token_env = "APIFY_TOKEN"
        base_url = "{sim.base_url}"
        every = "1m"
        page_size = 50

        [[sources]]
        name = "small"
        kind = "apify"
        token_env = "APIFY_TOKEN"
        base_url = "{sim.base_url}"
        task = "{task}"
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
        assert small.outcome == "succeeded" and small.items == len(of_task)
        assert not copy.done()  # the small source did not wait for the copy
        assert rt.passes.waits == 1  # it waited for one window, in line
        result = await copy
    assert result.outcome == "succeeded"
    assert len(await stored_runs(db, "big")) == 4000
    assert seen and max(seen) <= 2
    assert rt.passes.in_flight == 0 and rt.passes.extra == 0
