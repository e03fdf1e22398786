"""Replicas run each tick of a schedule once between them, whatever the schedule and the clocks.

A tick ran if any replica started a pass of the stream after its fire time minus a margin. The
pass's age is measured on the database's clock and the time since the fire time on the
worker's, so an offset between the two clocks cancels.

The passes here are real passes against the simulator and a real database. The database's
clock is the real one: before each wake-up the newest pass's start is moved back to give it the
age the test's timeline says, and each replica reads a clock of its own, offset from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from worker import runtime, scheduler, sync

FRIDAY_EVENING = datetime(2026, 11, 27, 17, 40, tzinfo=UTC)
MOVE_NEWEST_PASS = """
UPDATE runsync.passes SET started_at = now() - $2::interval
WHERE id = (SELECT max(id) FROM runsync.passes WHERE source = $1)
"""


class Timeline:
    """One source's passes on a timeline of the database's clock."""

    def __init__(self, rt: runtime.Runtime, name: str) -> None:
        self.rt = rt
        self.config = rt.settings.source(name)
        self.passes: list[datetime] = []  # when each pass started

    async def wake(self, at: datetime, offset: timedelta = timedelta(0)) -> bool:
        """The source's job woken at `at` (the database's clock) on a replica whose clock is
        `offset` ahead; whether it ran a pass."""
        if self.passes:
            async with self.rt.store.pool.acquire() as conn:
                await conn.execute(MOVE_NEWEST_PASS, self.config.name, at - self.passes[-1])
        woken, since = at + offset, time.monotonic()

        def clock() -> datetime:
            return woken + timedelta(seconds=time.monotonic() - since)

        tick = scheduler.tick_at(self.config, woken, clock)
        result = await sync.run_pass(
            self.rt.stream(self.config.name), self.rt.store, not_within=tick.not_within
        )
        assert result.outcome in ("succeeded", "skipped"), (result.outcome, result.error)
        if result.outcome == "succeeded":
            self.passes.append(at)
        return result.outcome == "succeeded"


@pytest.fixture
def timeline(sim, write_config):
    async def open_timeline(schedule: str):
        settings = write_config(
            f"""
            [[sources]]
            name = "apify"
            kind = "apify"
            token_env = "APIFY_TOKEN"
            base_url = "{sim.base_url}"
            max_requests_per_second = 1000
            {schedule}
            """
        )
        return runtime.open_runtime(settings, ["apify"])

    return open_timeline


@pytest.mark.parametrize(
    ("every", "offsets"),
    [
        ("1m", (-12, -12)),  # both workers' clocks 12 s behind the database's
        ("1m", (12, 12)),  # both ahead
        ("1m", (-12, 12)),
        ("10s", (-12, -12)),
        ("10s", (12, 12)),
    ],
)
async def test_two_replicas_with_offset_clocks_run_each_tick_once(timeline, every, offsets):
    ticks = 30
    async with await timeline(f'every = "{every}"') as rt:
        passes = Timeline(rt, "apify")
        interval = passes.config.every
        jitter = random.Random(11)  # each replica's tick comes up to a tenth of the interval late
        wakes = sorted(
            (FRIDAY_EVENING + n * interval + interval / 10 * jitter.random(), replica)
            for n in range(ticks)
            for replica in (0, 1)
        )
        ran = [0] * ticks
        for at, replica in wakes:
            if await passes.wake(at, timedelta(seconds=offsets[replica])):
                ran[(at - FRIDAY_EVENING) // interval] += 1

    assert ran == [1] * ticks


async def test_replicas_whose_ticks_fall_apart_share_them(timeline):
    """Each replica's interval starts when it does, so three may tick a third of it apart."""
    ticks = 30
    async with await timeline('every = "1m"') as rt:
        passes = Timeline(rt, "apify")
        interval = passes.config.every
        jitter = random.Random(5)
        wakes = sorted(
            FRIDAY_EVENING + (n + phase) * interval + interval / 10 * jitter.random()
            for n in range(ticks)
            for phase in (0, 1 / 3, 2 / 3)
        )
        for at in wakes:
            await passes.wake(at)

    gaps = [later - earlier for earlier, later in itertools.pairwise(passes.passes)]
    # Never two passes within most of an interval, never an interval (and jitter) without one.
    assert all(interval * 0.8 <= gap <= interval * 1.1 for gap in gaps), gaps
    assert len(passes.passes) >= ticks - 1


@pytest.mark.parametrize("offsets", [(0,), (-12, 12)], ids=["one replica", "two replicas"])
async def test_an_uneven_cron_runs_each_of_its_ticks(timeline, offsets):
    """Working hours, every 15 minutes, from a Friday evening: 63 hours until the next tick, then
    15 minutes; each tick runs once."""
    async with await timeline('cron = "*/15 9-17 * * 1-5"') as rt:
        passes = Timeline(rt, "apify")
        week = [
            t
            for t in scheduler.next_fire_times(passes.config, FRIDAY_EVENING, 200)
            if t < FRIDAY_EVENING + timedelta(days=7)
        ]
        assert len(week) == 180 and week[1] == datetime(2026, 11, 30, 9, tzinfo=UTC)
        ran = []
        # The daemon's first pass is at start: no pass has run the 17:30 tick yet.
        for fire in [FRIDAY_EVENING, *week]:
            ran.append(0)
            # A replica whose clock is ahead wakes first; each a few milliseconds after its tick.
            for offset in sorted(offsets, reverse=True):
                at = fire - timedelta(seconds=offset, milliseconds=-5)
                ran[-1] += await passes.wake(at, timedelta(seconds=offset))

    assert ran == [1] * 181


async def test_a_pass_at_start_neither_repeats_a_tick_nor_stands_in_for_the_next(timeline):
    async with await timeline('cron = "0 3 * * *"') as rt:
        passes = Timeline(rt, "apify")
        first_start = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
        assert await passes.wake(first_start)  # nothing ran the 03:00 tick: it runs late
        assert await passes.wake(datetime(2026, 11, 28, 3, 0, 0, 4000, tzinfo=UTC))
        # Restarted that evening: the 03:00 tick ran, so the pass at start is skipped.
        assert not await passes.wake(datetime(2026, 11, 28, 21, 0, tzinfo=UTC))
        assert await passes.wake(datetime(2026, 11, 29, 3, 0, 0, 4000, tzinfo=UTC))


def test_a_tick_knows_its_fire_time_and_margin(write_config):
    settings = write_config(
        """
        [[sources]]
        name = "hours"
        kind = "apify"
        token_env = "APIFY_TOKEN"
        cron = "*/15 9-17 * * 1-5"

        [[sources]]
        name = "minute"
        kind = "apify"
        token_env = "APIFY_TOKEN"
        every = "1m"
        """
    )
    hours, minute = settings.sources
    monday = datetime(2026, 11, 30, 9, 0, 0, 3000, tzinfo=UTC)
    tick = scheduler.tick_at(hours, monday, clock=lambda: monday + timedelta(seconds=2))
    assert (tick.fire_time, tick.margin) == (monday.replace(microsecond=0), timedelta(minutes=1))
    assert tick.not_within() == timedelta(minutes=1, seconds=2, microseconds=3000)
    # The pass at start serves the tick before it, late.
    tick = scheduler.tick_at(hours, FRIDAY_EVENING)
    assert tick.fire_time == datetime(2026, 11, 27, 17, 30, tzinfo=UTC)
    tick = scheduler.tick_at(minute, monday)
    assert (tick.fire_time, tick.margin) == (monday, timedelta(seconds=48))


async def test_the_daemon_runs_a_cron_tick_nobody_ran_at_start_and_only_then(sim, db, write_config):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = write_config(
        f"""
        [http]
        listen = "127.0.0.1:{port}"

        [[sources]]
        name = "apify"
        kind = "apify"
        token_env = "APIFY_TOKEN"
        base_url = "{sim.base_url}"
        cron = "@yearly"
        """
    )

    async def counted(outcome: str) -> float:
        url = f"http://127.0.0.1:{port}/metrics"
        with contextlib.suppress(aiohttp.ClientError):  # not listening yet
            async with aiohttp.ClientSession() as client, client.get(url) as response:
                text = await response.text()
            return sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                # the incremental pass's: the first pass's copy counts as a backfill pass
                if sample.name == "runsync_passes_total"
                and sample.labels["outcome"] == outcome
                and sample.labels["stream"] == "incremental"
            )
        return 0

    # This year's tick has not run: the first daemon runs it at start. Restarted, it does not.
    for outcome in ("succeeded", "skipped"):
        stop = asyncio.Event()
        daemon = asyncio.create_task(
            scheduler.run_daemon(settings, stop=stop, install_signals=False)
        )
        try:
            async with asyncio.timeout(20):
                while not await counted(outcome):  # noqa: ASYNC110 - counted by the daemon
                    await asyncio.sleep(0.05)
        finally:
            stop.set()
            assert await daemon == 0
    # The pass at start was the stream's first: a copy of the history (a pass of the backfill
    # stream, over the empty one here), then the incremental pass. The restart ran neither.
    async with db.pool.acquire() as conn:
        records = await conn.fetch("SELECT stream, outcome FROM runsync.passes ORDER BY id")
    assert [tuple(r) for r in records] == [
        ("backfill", "succeeded"),
        ("incremental", "succeeded"),
    ]
