"""A backfill in windows fetched side by side, for upstreams whose list has a time filter.

One probe tells the history's size; probes at evenly spaced offsets give window boundaries that
hold about as many runs each, however bursty the history. Each window is an oldest-first walk of
its own, with its own checkpoint stream (`backfill#N`) written on its own connection, so an
interrupted backfill resumes every window where it stopped. The plan is kept in the backfill's
checkpoint; a finished backfill leaves a mark there and forgets its windows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

import structlog

from worker import store
from worker.model import Checkpoint, Page, Position
from worker.sources.common import isoformat, parse_time
from worker.sources.contract import Windowed
from worker.walk import Pass, SourceRuntime, stopping, walk_pages

log = structlog.get_logger("runsync.backfill")

PROGRESS_EVERY = 10.0  # seconds between the log lines that say how far a backfill is
MIN_WINDOW_PAGES = 4  # a window shorter than this is not worth its probe
RESOLUTION = timedelta(milliseconds=1)  # the upstream's start times have whole milliseconds

Window = tuple[str | None, str | None]  # [start, end] as ISO text, inclusive; None: unbounded


async def plan(
    runtime: SourceRuntime, since: datetime | None, until: datetime | None
) -> tuple[tuple[Window, ...], int]:
    """The windows of [since, until], and the runs in it."""
    source = cast(Windowed, runtime.source)  # sync runs a backfill in windows only when windowed
    client = runtime.client

    async def start_at(offset: int) -> tuple[int, datetime | None]:
        request = source.probe(since, until, offset)
        answer = await client.get_json(request.path, request.params)
        return source.read_probe(answer.body, answer.observed_at)

    total, first = await start_at(0)
    if first is None:
        # No run, or the oldest has no start to plan by: one window over the whole range, whose
        # walk reads the rest and quarantines what cannot be read.
        whole = (isoformat(since) if since else None, isoformat(until) if until else None)
        windows: tuple[Window, ...] = (whole,) if total else ()
        log.info("backfill planned", runs=total, windows=len(windows))
        return windows, total
    count = min(runtime.config.concurrency, total // (source.page_size * MIN_WINDOW_PAGES))
    starts = [first]
    if count >= 2:
        cuts = await asyncio.gather(*(start_at(total * i // count) for i in range(1, count)))
        starts += sorted({cut for _, cut in cuts if cut is not None and cut > first})
    # Window i holds [start i, start i+1 - 1 ms]: every millisecond in exactly one window.
    ends = [later - RESOLUTION for later in starts[1:]] + [until]
    windows = tuple(
        (isoformat(start), isoformat(end) if end else None)
        for start, end in zip(starts, ends, strict=True)
    )
    log.info("backfill planned", runs=total, windows=len(windows))
    return windows, total


@dataclass(frozen=True, kw_only=True)
class Plan(Position):
    """A backfill's position: its windows ([start, end] as ISO text, inclusive; None: unbounded)
    and the runs its range held when they were planned; each window has its own checkpoint."""

    windows: tuple[Window, ...] | None = None
    total: int | None = None


async def run(
    state: Pass,
    walk: Position,
    saved: Checkpoint | None,
    since: datetime | None,
    until: datetime | None,
) -> None:
    """The backfill of [since, until] in windows: planned (or resumed from `saved`, its plan),
    walked side by side, and marked done in the backfill's checkpoint (`walk`: its range)."""
    runtime, lease, result = state.runtime, state.lease, state.result
    progress, stop = state.progress, state.stop
    resumed = saved.position(Plan) if saved is not None else Plan()
    windows, planned = resumed.windows, resumed.total if resumed.windows is not None else None
    if windows is None:
        await lease.forget_windows()  # an earlier plan's windows must not count for this one
        windows, planned = await plan(runtime, since, until)
        await lease.save_checkpoint(
            Checkpoint.at(None, Plan(**walk.scope(), windows=windows, total=planned))
        )
        if progress is not None:
            progress(Page([], [], Checkpoint(), 0, planned), store.Written())

    reached: dict[int, datetime | None] = {}  # how far each finished window read
    read, logged = 0, time.monotonic()

    def window_progress(page: Page, written: store.Written) -> None:
        nonlocal read, logged
        if progress is not None:  # a window's total is not the backfill's
            progress(dataclasses.replace(page, total=None), written)
        read += page.items
        if time.monotonic() - logged >= PROGRESS_EVERY:  # for a daemon's log, or a pipe's
            logged = time.monotonic()
            log.info("backfill progress", runs_read=read, runs_planned=planned,
                     windows_done=len(reached), windows=len(windows))  # fmt: skip

    async def walk_window(index: int, start: str | None, end: str | None) -> None:
        async with lease.writer(lease.stream.window_of(index), state.pass_id) as writer:
            resume = await writer.checkpoint()
            if resume is not None and resume.position(Position).done:
                reached[index] = resume.watermark
                return
            place = Position(range=walk.range, window=index)
            paginator = cast(Windowed, runtime.source).window(
                resume,
                parse_time(start, "start") if start else None,
                parse_time(end, "end") if end else None,
                place,
            )
            if await walk_pages(
                state.through(writer, window_progress), paginator, checkpointed=True,
                done_checkpoint=Checkpoint.at(None, dataclasses.replace(place, done=True)),
            ):  # fmt: skip
                reached[index] = paginator.checkpoint.watermark

    # The pass's own place walks windows one after another; each spare place the process's
    # budget grants walks one more window beside it (budget.Passes.try_extra), now or as windows
    # end. A spare place is given back after each window: a pass waiting in line gets it first.
    pending = deque(enumerate(windows))
    extras = 0  # spare places taken and not given back yet

    def take_extra() -> bool:
        nonlocal extras
        taken = runtime.passes.try_extra(runtime.client.limits)
        extras += taken
        return taken

    def give_back_extra() -> None:
        nonlocal extras
        extras -= 1
        runtime.passes.give_back_extra(runtime.client.limits)

    async def walker(window: tuple[int, Window], extra: bool, group: asyncio.TaskGroup) -> None:
        while True:
            index, (start, end) = window
            try:
                await walk_window(index, start, end)
            finally:
                if extra:
                    give_back_extra()
            if not pending or stopping(stop):
                return
            if extra and not take_extra():
                return  # the pass's own place walks the rest
            window = pending.popleft()
            grow(group)

    def grow(group: asyncio.TaskGroup) -> None:
        while pending and not stopping(stop) and take_extra():
            group.create_task(walker(pending.popleft(), True, group))

    try:
        async with asyncio.TaskGroup() as group:
            if pending:
                group.create_task(walker(pending.popleft(), False, group))
                grow(group)
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from None  # the other windows were cancelled with it
    finally:
        while extras:  # those of walkers cancelled before they started
            give_back_extra()
    if not stopping(stop):
        # The last window is open-ended when the range is: how far it read is how far the whole
        # backfill did, runs that started while it ran included.
        end = reached.get(len(windows) - 1) if windows else None
        finished = Plan(**walk.scope(), windows=windows, done=True, pass_id=result.pass_id)
        await lease.save_checkpoint(Checkpoint.at(end, finished))
        await lease.forget_windows()
