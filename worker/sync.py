"""One pass of one stream of runs: list pages into the store with their checkpoints, then the
runs stored as open, read again until they are terminal.

A pass holds its stream's lease for its whole length, so replicas share streams, never a stream.
Each page's runs and the checkpoint after them commit together; a crash repeats at most the page
in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeGuard, cast

import structlog

from worker import backfill, http, refresh, store
from worker.model import Checkpoint, Outcome, Position
from worker.sources import PageError, Source
from worker.sources.common import isoformat, parse_time
from worker.walk import Pass, PassResult, ProgressCallback, SourceRuntime, stopping, walk_pages

if TYPE_CHECKING:
    from worker.metrics import Metrics

log = structlog.get_logger("runsync.sync")

INCREMENTAL = "incremental"
BACKFILL = "backfill"
RECONCILE = "reconcile"  # the sweep that reads the recent history again (reconcile_lookback)

__all__ = [
    "BACKFILL",
    "INCREMENTAL",
    "RECONCILE",
    "PassResult",
    "ProgressCallback",
    "SourceRuntime",
    "reconcile_if_due",
    "run_pass",
]


async def run_pass(
    runtime: SourceRuntime,
    db: store.Store,
    *,
    stream: str = INCREMENTAL,
    since: datetime | None = None,
    until: datetime | None = None,
    stop: asyncio.Event | None = None,
    progress: ProgressCallback | None = None,
    not_within: Callable[[], timedelta] | None = None,
    restart: bool = False,
    metrics: Metrics | None = None,
) -> PassResult:
    """One pass; never raises for upstream or database trouble: the result says what happened.

    A new stream's first incremental pass copies the history first, as a backfill in windows
    (where the upstream's list can be cut into them); the pass then goes on from where the copy
    ended. `progress` hears that copy's pages too.

    `not_within`: skip the pass if any replica started one of this stream more recently than it
    says (on the worker's clock; the pass's age is measured on the database's), so replicas on
    one schedule run each stream once per tick between them.
    `metrics`: where the daemon counts the pass, and the stream's figures read after it.
    """
    if stream == INCREMENTAL and runtime.source.windowed:
        copied = await _first_copy(runtime, db, stop, progress, metrics)
        if copied is not None:
            return copied
    asked = Asked(stream, since, until, restart, not_within)
    result = await _pass(runtime, db, asked, stop, progress)
    if metrics is not None:
        metrics.pass_finished(result)
        await _measure(runtime, db, metrics)
    return result


async def reconcile_if_due(
    runtime: SourceRuntime,
    db: store.Store,
    *,
    stop: asyncio.Event | None = None,
    metrics: Metrics | None = None,
) -> PassResult | None:
    """The reconcile sweep of a stream, when `reconcile_every` has passed since the last one
    (a new stream's first pass reads everything: the first sweep comes `reconcile_every` after
    it); None when it is not due or switched off."""
    every = runtime.config.reconcile_every
    if every is None or stopping(stop):
        return None
    try:
        async with db.lease(runtime.name, runtime.stream(RECONCILE)) as lease:
            if lease is None or not await lease.due(every, runtime.stream(INCREMENTAL)):
                return None
    except store.DatabaseError:
        return None  # the incremental pass reports the database's trouble
    return await run_pass(runtime, db, stream=RECONCILE, stop=stop, metrics=metrics)


async def _first_copy(
    runtime: SourceRuntime,
    db: store.Store,
    stop: asyncio.Event | None,
    progress: ProgressCallback | None,
    metrics: Metrics | None,
) -> PassResult | None:
    """The history copied by a backfill of all of it, when the incremental stream has never run
    and no finished backfill covers it; None when the incremental pass may go on. A copy killed
    midway resumes its windows on the next pass. Otherwise the incremental pass's result: skipped
    while another process copies, or the copy's failure."""
    try:
        needed = await db.needs_first_copy(
            runtime.name, runtime.stream(INCREMENTAL), runtime.stream(BACKFILL)
        )
    except store.DatabaseError:
        return None  # the incremental pass reports the database's trouble
    if not needed:
        return None
    with structlog.contextvars.bound_contextvars(first_copy=True):  # on each of its log lines
        copy = await run_pass(
            runtime, db, stream=BACKFILL, stop=stop, progress=progress, metrics=metrics
        )
    if copy.outcome == Outcome.SUCCEEDED and not stopping(stop):
        return None
    # A copy that succeeded as the stop came: the incremental pass did not run.
    outcome = Outcome.INTERRUPTED if copy.outcome == Outcome.SUCCEEDED else copy.outcome
    result = PassResult(runtime.name, runtime.stream(INCREMENTAL), outcome=outcome)
    if copy.outcome == Outcome.SKIPPED:
        return _skipped(result, "another process is copying the history (its backfill)")
    result.error = copy.error and f"the first copy (backfill pass {copy.pass_id}): {copy.error}"
    return result


@dataclass(frozen=True)
class Asked:
    """What a pass is asked to do: which stream of the source, and for a backfill its range."""

    stream: str = INCREMENTAL
    since: datetime | None = None
    until: datetime | None = None
    restart: bool = False  # walk a finished backfill again
    # Skip the pass when a replica started one of this stream more recently than this says.
    not_within: Callable[[], timedelta] | None = None


async def _pass(
    runtime: SourceRuntime,
    db: store.Store,
    asked: Asked,
    stop: asyncio.Event | None,
    progress: ProgressCallback | None,
) -> PassResult:
    result = PassResult(runtime.name, runtime.stream(asked.stream))
    try:
        # A place among the process's passes first: a pass waiting in line holds no lease, so
        # another replica may walk the stream meanwhile.
        async with (
            runtime.passes.place(runtime.client.limits),  # its group: the token it paces under
            db.lease(runtime.name, result.stream) as lease,
        ):
            if lease is None:
                return _skipped(result, "another pass holds this stream's lease")
            if asked.not_within is not None:
                age = await lease.last_pass_age()
                if age is not None and age < asked.not_within():
                    return _skipped(result, "another replica ran this stream this tick")
            result.pass_id = await lease.start_pass()
            state = Pass(runtime, lease, result, datetime.now(UTC), stop, progress)
            with structlog.contextvars.bound_contextvars(
                source=runtime.name, pass_id=result.pass_id, stream=result.stream
            ):
                await _run_leased(state, asked)
    except store.DatabaseError as error:
        result.outcome, result.error = Outcome.FAILED, f"database: {error}"
        _log_finished(result, source=result.source, stream=result.stream, pass_id=result.pass_id)
    return result


async def _measure(runtime: SourceRuntime, db: store.Store, metrics: Metrics) -> None:
    """The stream's figures only the database knows (lag, open runs, its last success in any
    process, a backfill in flight)."""
    backfill_stream, stream = runtime.stream(BACKFILL), runtime.stream(INCREMENTAL)
    try:
        figures = await db.stream_figures(
            runtime.name, runtime.source.partition, backfill_stream, stream
        )
    except (*store.DatabaseError, TimeoutError) as error:
        log.debug("stream figures unavailable", source=runtime.name, error=str(error))
        return  # the gauges keep what the last pass read
    metrics.stream_figures(runtime.name, stream, backfill=backfill_stream, **figures)


def _skipped(result: PassResult, reason: str) -> PassResult:
    result.outcome = Outcome.SKIPPED
    log.info("pass skipped", source=result.source, stream=result.stream, reason=reason)
    return result


async def _run_leased(state: Pass, asked: Asked) -> None:
    result, lease = state.result, state.lease
    started, cpu = time.monotonic(), time.process_time()
    log.info("pass started")
    try:
        if asked.stream == BACKFILL:
            await _backfill(state, asked)
        elif asked.stream == RECONCILE:
            await _reconcile(state)
        else:
            await _incremental(state)
        result.outcome = Outcome.INTERRUPTED if state.stopping else Outcome.SUCCEEDED
    except (http.UpstreamError, PageError) as error:
        result.outcome, result.error = Outcome.FAILED, str(error)
    except store.DatabaseError as error:
        result.outcome, result.error = Outcome.FAILED, f"database: {error}"
    except asyncio.CancelledError:
        result.outcome = Outcome.INTERRUPTED
        try:
            await asyncio.shield(lease.finish_pass(state.pass_id, result.outcome, None))
        except (*store.DatabaseError, asyncio.CancelledError):
            pass  # the connection was busy or gone; the pass stays marked as running
        result.duration_ms = int((time.monotonic() - started) * 1000)
        result.cpu_ms = int((time.process_time() - cpu) * 1000)
        _log_finished(result)
        raise
    try:
        await lease.finish_pass(state.pass_id, result.outcome, result.error)
    except store.DatabaseError as error:
        log.warning("could not record the end of the pass", error=str(error))
    result.duration_ms = int((time.monotonic() - started) * 1000)
    result.cpu_ms = int((time.process_time() - cpu) * 1000)
    _log_finished(result)


def _log_finished(result: PassResult, **context: object) -> None:
    """The one line that ends every pass; its keys are stable (README, "Logs"). `runs`: the items
    of every list page the pass read; `written`: rows inserted or changed."""
    fields = {
        "outcome": result.outcome,
        "pages": result.pages,
        "runs": result.items,
        "written": result.written,
        "quarantined": result.quarantined,
        "refreshed": result.refreshed,
        "duration_ms": result.duration_ms,
        "cpu_ms": result.cpu_ms,  # the process's, so it includes passes running beside this one
    }
    if result.outcome == Outcome.FAILED:
        log.error("pass failed", error=result.error, **context, **fields)
    else:
        log.info(f"pass {result.outcome}", **context, **fields)


async def _incremental(state: Pass) -> None:
    """The list walk, then the open runs. One page that cannot be read or stored does not hold
    up the rest: a walk in flight is resumed only after the runs newer than it are read (the
    source's head walk), and the open runs are read again even when a walk failed; the pass
    still fails, with the walk's error, and the next one tries again from the checkpoint."""
    runtime, lease = state.runtime, state.lease
    source: Source = runtime.source
    checkpoint = await lease.checkpoint() or Checkpoint()
    copied = await lease.checkpoint(runtime.stream(BACKFILL))
    if covers(copied, checkpoint):
        watermark = cast(datetime, copied.watermark)  # covers() says it is not None
        log.info("going on from the end of the finished backfill", watermark=isoformat(watermark))
        checkpoint = Checkpoint(copied.watermark)
    # Which runs were open must be known before the list walk crosses any of them off.
    pending = refresh.Pending(await lease.open_snapshot(source.partition, state.started_at))
    failures: list[Exception] = []
    walks = [
        (source.head(checkpoint), False),
        (source.incremental(checkpoint), True),
    ]
    for paginator, checkpointed in walks:
        if paginator is None or state.stopping:
            continue
        try:
            await walk_pages(state, paginator, checkpointed=checkpointed, observe=pending.see)
        except (http.UpstreamError, PageError) as error:
            log.warning("walk failed; going on with the rest", position=str(paginator))
            failures.append(error)
    if not state.stopping:
        try:
            await refresh.open_runs(state, pending)
        except (http.UpstreamError, PageError) as error:
            failures.append(error)
    if failures:
        raise failures[0]


def covers(copied: Checkpoint | None, checkpoint: Checkpoint) -> TypeGuard[Checkpoint]:
    """Whether a backfill (its checkpoint `copied`) read every run the incremental stream at
    `checkpoint` has yet to: it finished, its range reaches the present, it began at or before
    the stream's watermark (the beginning of history, for a stream that never ran), and it
    ended past that watermark."""
    if copied is None or copied.watermark is None:
        return False
    mark = copied.position(Position)
    if not mark.done:
        return False
    since, until = mark.range or (None, None)
    if until is not None:
        return False
    if checkpoint.watermark is None:
        return since is None and not checkpoint.cursor
    return (since is None or parse_time(since, "since") <= checkpoint.watermark) and (
        copied.watermark > checkpoint.watermark
    )


async def _reconcile(state: Pass) -> None:
    """Reads every run started in the last `reconcile_lookback` again and stores what changed.

    Polling reads runs stored as open and runs open now; a run that finished, was resurrected and
    finished again between two passes is neither. This sweep, on its own schedule, is how such a
    change reaches the table. Its cost: one request per page of runs in the lookback.

    A sweep that listed its whole range then reads by id the stored runs started in it that it
    did not list (refresh.unlisted): a finished run deleted upstream is marked gone that way. The
    range they are taken from is the swept one less the overlap at each end: a run started at the
    floor's instant, or just before the sweep began and not yet visible, is not a suspect."""
    config = state.runtime.config
    now = await state.lease.database_now()
    floor = now - config.reconcile_lookback
    listed: set[str] = set()
    complete = await walk_pages(
        state, state.runtime.source.recent(floor), checkpointed=False,
        observe=lambda runs: listed.update(run.run_id for run in runs),
    )  # fmt: skip
    if complete and not state.stopping:
        await refresh.unlisted(state, listed, floor + config.overlap, now - config.overlap)


async def _backfill(state: Pass, asked: Asked) -> None:
    """A walk of [since, until], resumed where an interrupted one of the same range stopped.

    A finished one leaves a mark, so running it again (a restarted job) does nothing unless asked.
    """
    since, until = asked.since, asked.until
    walk = Position(
        range=(isoformat(since) if since else None, isoformat(until) if until else None)
    )
    saved = await state.lease.checkpoint()
    mark = saved.position(Position) if saved is not None else None
    same_range = mark is not None and mark.range == walk.range
    if mark is not None and same_range and mark.done and not asked.restart:
        state.result.note = f"already complete (pass {mark.pass_id}); --restart walks it again"
        log.info("backfill already complete", completed_by_pass=mark.pass_id)
        return
    resume = (
        saved if mark is not None and same_range and not mark.done and not asked.restart else None
    )
    if state.runtime.source.windowed:
        await backfill.run(state, walk, resume, since, until)
        return
    paginator = state.runtime.source.backfill(resume, since, until, walk)
    done = Checkpoint.at(None, dataclasses.replace(walk, done=True, pass_id=state.result.pass_id))
    await walk_pages(state, paginator, checkpointed=True, done_checkpoint=done)
