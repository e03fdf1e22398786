"""The request loop: a paginator's pages, fetched and stored one after the other.

Every walk of a pass goes through here: the checkpointed list walk, and the walks that look for
open runs again. A page's runs (and, for a checkpointed walk, the checkpoint after them) commit
in one transaction before the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

import structlog

from worker import budget, http, store
from worker.config import SourceConfig
from worker.model import Checkpoint, Outcome, Page, Rejected, Request, Run, Stream
from worker.sources import PageError, Paginator, Source

log = structlog.get_logger("runsync.walk")

ProgressCallback = Callable[[Page, store.Written], None]

# Reads of one page with unreadable items: an item garbled on the way reads well next time, and
# only what two reads in a row find unreadable alike is quarantined, so a flaky upstream loses no
# run.
PAGE_READS = 4


@dataclass
class SourceRuntime:
    """One stream of runs of a configured source, with the source's upstream client."""

    config: SourceConfig
    source: Source
    client: http.Client
    passes: budget.Passes = field(default_factory=budget.Passes)  # shared by the process's sources

    @property
    def name(self) -> str:
        return self.config.name

    def stream(self, kind: str) -> Stream:
        """The key of this stream's checkpoint, lease and passes: per partition where there are
        some."""
        return Stream(kind, self.source.partition)


@dataclass
class PassResult:
    source: str
    stream: str
    outcome: Outcome = Outcome.RUNNING
    pass_id: int | None = None
    pages: int = 0
    items: int = 0
    written: int = 0  # rows inserted or changed
    inserted: int = 0
    updated: int = 0
    quarantined: int = 0
    refreshed: int = 0
    error: str | None = None
    duration_ms: int = 0
    cpu_ms: int = 0
    note: str | None = None  # what a person should know about an uneventful pass

    @property
    def label(self) -> str:
        """The source, and its partition (a project) where it has several streams."""
        partition = Stream.parse(self.stream).part
        return f"{self.source} project {partition}" if partition else self.source

    @property
    def ok(self) -> bool:
        # Skipped means another replica is running this stream right now: not a failure.
        return self.outcome in (Outcome.SUCCEEDED, Outcome.SKIPPED)

    def count(
        self, written: store.Written, *, items: int = 0, pages: int = 0, refreshed: int = 0
    ) -> None:
        self.pages += pages
        self.items += items
        self.written += written.runs
        self.inserted += written.inserted
        self.updated += written.updated
        self.quarantined += written.quarantined
        self.refreshed += refreshed


def stopping(stop: asyncio.Event | None) -> bool:
    return stop is not None and stop.is_set()


@dataclass(frozen=True)
class Pass:
    """One pass of one stream, as each of its steps sees it: the stream and its upstream client,
    the lease it holds (every write goes through it, and fails once another process took the
    stream over), its figures, when it started, and how it is told to stop or to report its
    progress. A backfill's window is the same pass writing through the window's own lease."""

    runtime: SourceRuntime
    lease: store.Lease
    result: PassResult
    started_at: datetime  # on the worker's clock, before the pass read anything
    stop: asyncio.Event | None = None
    progress: ProgressCallback | None = None  # hears the pages of its checkpointed walks

    @property
    def stopping(self) -> bool:
        return stopping(self.stop)

    @property
    def pass_id(self) -> int:
        """Its row in runsync.passes: a Pass is made once the row is."""
        assert self.result.pass_id is not None, "a Pass is made once its pass has started"
        return self.result.pass_id

    def through(self, lease: store.Lease, progress: ProgressCallback | None) -> Pass:
        """The same pass writing through another lease (a window's) and reporting elsewhere."""
        return dataclasses.replace(self, lease=lease, progress=progress)


def log_rejected(rejected: list[Rejected]) -> None:
    if rejected:
        log.warning("items quarantined", count=len(rejected), reason=rejected[0].reason)


async def walk_pages(
    state: Pass,
    paginator: Paginator,
    *,
    checkpointed: bool,
    done_checkpoint: Checkpoint | None = None,
    observe: Callable[[list[Run]], None] | None = None,
    enough: Callable[[], bool] | None = None,
) -> bool:
    """Fetches and stores pages until the paginator is done; False if the pass's stop cut it
    short.

    A checkpointed walk moves the stream's checkpoint with each page and reports its pages to the
    pass's progress; one that is not counts its items as refreshed. `observe` hears each page's
    runs; `enough` ends the walk early when what it looked for is found.
    """
    runtime, lease, result, stop = state.runtime, state.lease, state.result, state.stop
    progress = state.progress if checkpointed else None
    log.info("walk", position=str(paginator))
    # The next page, fetched while this one is written.
    ahead: asyncio.Task[http.Response] | None = None
    try:
        while (request := paginator.next_request()) is not None:
            try:
                page = await _read_page(runtime, paginator, request, ahead)
            except http.UpstreamError as error:
                if error.status == 400 and paginator.restart():
                    log.warning("position refused; walking again from the top", error=str(error))
                    ahead = None
                    continue
                raise
            following = paginator.next_request()
            ahead = None
            if following is not None and not stopping(stop):
                ahead = asyncio.create_task(_fetch(runtime, following))
            if not checkpointed:
                checkpoint: Checkpoint | store.Keep = store.KEEP
            elif following is None and done_checkpoint is not None:
                # A finished backfill says so, for the range it walked, and how far it read: an
                # incremental stream may go on from there (sync.covers).
                checkpoint = Checkpoint(page.checkpoint.watermark, done_checkpoint.cursor)
            else:
                checkpoint = page.checkpoint
            refreshed = 0 if checkpointed else page.items
            written = await lease.save_page(
                state.pass_id,
                runtime.source.upstream,
                page.runs,
                page.rejected,
                checkpoint=checkpoint,
                items=page.items if checkpointed else 0,
                refreshed=refreshed,
            )
            result.count(written, items=page.items, pages=1, refreshed=refreshed)
            log_rejected(page.rejected)
            log.debug(
                "page stored", position=str(paginator), items=page.items, written=written.runs
            )
            if progress is not None:
                progress(page, written)
            if observe is not None:
                observe(page.runs)
            if enough is not None and enough():
                return True
            if stopping(stop):
                log.info("stopping after the page in flight", position=str(paginator))
                return False
        return True
    finally:
        if ahead is not None:
            ahead.cancel()
            with contextlib.suppress(asyncio.CancelledError, http.UpstreamError):
                await ahead


async def _fetch(runtime: SourceRuntime, request: Request) -> http.Response:
    return await runtime.client.get_json(request.path, request.params)


async def _read_page(
    runtime: SourceRuntime,
    paginator: Paginator,
    request: Request,
    ahead: asyncio.Task[http.Response] | None,
) -> Page:
    """One page of the walk (fetched ahead, or now), read again until two reads in a row agree
    on its unreadable items: only those are quarantined. A page that reads differently every
    time fails (PageError): its items are neither quarantined nor skipped, and the next pass reads
    it again. An answer over the size cap is asked for again in smaller pages: only a single
    item over the cap stops the walk."""
    earlier: list[str] | None = None
    attempt = 0
    while attempt < PAGE_READS:
        try:
            response = await (ahead if ahead is not None else _fetch(runtime, request))
        except http.TooLarge as error:
            if not paginator.shrink():
                raise
            log.warning("answer too large; asking for smaller pages", error=str(error),
                        page_size=paginator.page_size)  # fmt: skip
            # The same page in fewer items: a walk that shrinks stays where it was, not done.
            request, ahead = cast(Request, paginator.next_request()), None
            continue
        ahead = None
        attempt += 1
        page = paginator.advance(response.body, response.observed_at)
        unreadable = sorted(item.raw for item in page.rejected)
        if not unreadable or unreadable == earlier:
            return page
        earlier = unreadable
        paginator.undo()
        if attempt == PAGE_READS:
            raise PageError(
                f"{request.path}: its unreadable items differed on each of {PAGE_READS} reads"
            )
        log.info(
            "page has unreadable items; reading it again", items=len(unreadable), attempt=attempt
        )
    raise AssertionError("unreachable")
