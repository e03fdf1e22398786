"""One pass of one source: list pages into the store with their checkpoints, then the open runs.

A pass holds its source's lock for its whole length, so replicas share sources, never a source.
Each page's runs and the checkpoint after them commit together; a crash repeats at most the page
in flight. After the list walk, every run still stored as open is read again until it is terminal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from worker import http, store
from worker.config import SourceConfig
from worker.model import Checkpoint, Page, Rejected, Run
from worker.sources import PageError, Paginator, Source

log = structlog.get_logger("runsync.sync")

INCREMENTAL = "incremental"
BACKFILL = "backfill"
REFRESH_BATCH = 200

ProgressCallback = Callable[[Page, store.Written], None]


@dataclass
class SourceRuntime:
    """A configured source with its upstream client, alive for as long as the process."""

    config: SourceConfig
    source: Source
    client: http.Client

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class PassResult:
    source: str
    stream: str
    outcome: str = "running"  # succeeded | failed | interrupted | skipped
    pass_id: int | None = None
    pages: int = 0
    items: int = 0
    written: int = 0
    quarantined: int = 0
    refreshed: int = 0
    error: str | None = None
    duration_ms: int = 0

    @property
    def ok(self) -> bool:
        # Skipped means another replica is running this source right now: not a failure.
        return self.outcome in ("succeeded", "skipped")

    def count(self, written: store.Written, *, items: int = 0, pages: int = 0, refreshed: int = 0):
        self.pages += pages
        self.items += items
        self.written += written.runs
        self.quarantined += written.quarantined
        self.refreshed += refreshed


async def run_pass(
    runtime: SourceRuntime,
    db: store.Store,
    *,
    stream: str = INCREMENTAL,
    since: datetime | None = None,
    until: datetime | None = None,
    stop: asyncio.Event | None = None,
    progress: ProgressCallback | None = None,
) -> PassResult:
    """One pass; never raises for upstream or database trouble: the result says what happened."""
    result = PassResult(runtime.name, stream)
    try:
        async with db.lease(runtime.name, stream) as lease:
            if lease is None:
                result.outcome = "skipped"
                log.info("pass skipped", source=runtime.name, stream=stream,
                         reason="another process holds this source's lock")  # fmt: skip
                return result
            result.pass_id = await lease.start_pass()
            with structlog.contextvars.bound_contextvars(
                source=runtime.name, pass_id=result.pass_id, stream=stream
            ):
                await _run_leased(runtime, lease, result, since, until, stop, progress)
    except store.DatabaseError as error:
        result.outcome, result.error = "failed", f"database: {error}"
        log.error("pass failed", source=runtime.name, stream=stream, error=result.error)
    return result


async def _run_leased(runtime, lease, result, since, until, stop, progress) -> None:
    started_at, started = datetime.now(UTC), time.monotonic()
    log.info("pass started")
    try:
        paginator = _paginator(
            runtime.source, await lease.checkpoint(), result.stream, since, until
        )
        await _walk(runtime, lease, result, paginator, stop, progress)
        if result.stream == INCREMENTAL and not _stopping(stop):
            await _refresh_open_runs(runtime, lease, result, started_at, stop)
        result.outcome = "interrupted" if _stopping(stop) else "succeeded"
    except (http.UpstreamError, PageError) as error:
        result.outcome, result.error = "failed", str(error)
    except store.DatabaseError as error:
        result.outcome, result.error = "failed", f"database: {error}"
    except asyncio.CancelledError:
        result.outcome = "interrupted"
        try:
            await asyncio.shield(lease.finish_pass(result.pass_id, result.outcome, None))
        except (*store.DatabaseError, asyncio.CancelledError):
            pass  # the connection was busy or gone; the pass stays marked as running
        raise
    try:
        await lease.finish_pass(result.pass_id, result.outcome, result.error)
    except store.DatabaseError as error:
        log.warning("could not record the end of the pass", error=str(error))
    result.duration_ms = int((time.monotonic() - started) * 1000)
    fields = {
        "pages": result.pages,
        "runs": result.items,
        "written": result.written,
        "quarantined": result.quarantined,
        "refreshed": result.refreshed,
        "duration_ms": result.duration_ms,
    }
    if result.outcome == "failed":
        log.error("pass failed", error=result.error, **fields)
    else:
        log.info(f"pass {result.outcome}", **fields)


def _paginator(source: Source, checkpoint: Checkpoint | None, stream, since, until) -> Paginator:
    if stream == BACKFILL:
        return source.backfill(checkpoint, since, until)
    return source.incremental(checkpoint or Checkpoint())


async def _walk(runtime, lease, result, paginator: Paginator, stop, progress) -> None:
    log.info("walk", position=str(paginator))
    while (request := paginator.next_request()) is not None:
        response = await runtime.client.get_json(request.path, request.params)
        page = paginator.advance(response.body, response.observed_at)
        finished = paginator.next_request() is None
        # A finished backfill leaves no checkpoint: the next one starts over.
        checkpoint = None if finished and result.stream == BACKFILL else page.checkpoint
        written = await lease.save_page(
            result.pass_id,
            runtime.source.upstream,
            page.runs,
            page.rejected,
            checkpoint,
            items=page.items,
        )
        result.count(written, items=page.items, pages=1)
        _log_rejected(page.rejected)
        log.debug("page stored", position=str(paginator), items=page.items, written=written.runs)
        if progress is not None:
            progress(page, written)
        if _stopping(stop):
            log.info("stopping after the page in flight", position=str(paginator))
            return


async def _refresh_open_runs(runtime, lease, result, pass_started: datetime, stop) -> None:
    """Reads again, one by one, the runs stored as open that this pass's list did not update."""
    after = ""
    while not _stopping(stop):
        run_ids = await lease.open_runs(pass_started, after, REFRESH_BATCH)
        if not run_ids:
            return
        after = run_ids[-1]
        try:
            async with asyncio.TaskGroup() as group:
                reads = [group.create_task(_read_run(runtime, run_id)) for run_id in run_ids]
        except ExceptionGroup as failures:
            raise failures.exceptions[0] from None  # the others were cancelled with it
        observations = [read.result() for read in reads]
        runs = [o for o in observations if isinstance(o, Run)]
        rejected = [o for o in observations if isinstance(o, Rejected)]
        gone = [run_id for run_id, o in zip(run_ids, observations, strict=True) if o is None]
        written = await lease.save_refreshed(
            result.pass_id, runtime.source.upstream, runs, rejected, gone
        )
        result.count(written, refreshed=len(run_ids))
        _log_rejected(rejected)
        if gone:
            log.info("runs gone upstream", count=len(gone), example=gone[0])


async def _read_run(runtime: SourceRuntime, run_id: str) -> Run | Rejected | None:
    """The run as the upstream has it now; None when the upstream no longer has it."""
    request = runtime.source.run_request(run_id)
    try:
        response = await runtime.client.get_json(request.path, request.params)
    except http.UpstreamError as error:
        if error.status == 404:
            return None
        raise
    observed = runtime.source.read_run(response.body, response.observed_at)
    if isinstance(observed, Run) and observed.run_id != run_id:
        return Rejected(
            f"asked for run {run_id[:40]}, got run {observed.run_id[:40]}", observed.raw
        )
    return observed


def _log_rejected(rejected: list[Rejected]) -> None:
    if rejected:
        log.warning("items quarantined", count=len(rejected), reason=rejected[0].reason)


def _stopping(stop: asyncio.Event | None) -> bool:
    return stop is not None and stop.is_set()
