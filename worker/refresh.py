"""Reading again the runs stored as open, until they are terminal, at the cost of what changed.

The open runs as they stood before the pass are the pending set; the pass's own list walk crosses
some off. Then, by what the upstream offers:
- Apify, GitHub: one walk of the open runs over the whole history (Apify: one list filtered by
  every open status, one request per thousand open runs; GitHub: a walk per open status, each
  answered 304 for free while nothing changed), crosses off those still open, and finds the runs
  that are open again (Apify resurrects finished runs at any age, GitHub re-runs them). Only runs that left the open statuses,
  just-finished runs due for a second look at their figures, and runs whose items are in
  quarantine (a garbled read may read well now) are read one by one.
- RakerOne (no endpoint for one run, one status per filter): for each status pending runs are in,
  a walk of the list filtered by it, down to the oldest of them (to the end when one has no start
  time yet): about one request per open status. Runs left over have changed status: one walk of
  the unfiltered list down to the oldest of them finds their new state. That walk is long only
  when a long-open run changes, once.
Runs not found at all are gone: marked, and not looked for again. A run that finished, ran again
and finished again between two passes is seen by neither; the reconcile sweep
(worker/sync.py) finds it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import cast

import structlog

from worker import http
from worker.model import Rejected, Run
from worker.sources.contract import ByWalks, OpenList, PageError
from worker.walk import PAGE_READS, Pass, SourceRuntime, log_rejected, walk_pages

log = structlog.get_logger("runsync.refresh")

BATCH = 200  # open runs read one by one per transaction
# Runs a reconcile sweep did not list, read by id at most this many a sweep (one request each);
# the rest wait for the next sweep.
UNLISTED = 200


STRATEGIES = ("open_list", "walks")  # what a source's `refresh` may say


async def open_runs(state: Pass, pending: Pending) -> None:
    """The open runs read again, the way the source says (`refresh`): a walk of the open runs
    then the single-run endpoint (Apify, GitHub), or a walk per status (RakerOne)."""
    strategy = state.runtime.source.refresh
    if strategy == "walks":
        await by_walks(state, pending)
    elif strategy == "open_list":
        await by_open_list(state, pending)
    else:  # a new upstream's mistake: never fall into another's way silently
        name = state.runtime.name
        raise ValueError(f"{name}: unknown refresh strategy {strategy!r} ({STRATEGIES})")


async def by_open_list(state: Pass, pending: Pending) -> None:
    source = cast(OpenList, state.runtime.source)  # open_runs checked its refresh
    await walk_pages(state, source.open_walk(), checkpointed=False, observe=pending.see)
    if state.stopping:
        return
    due = await state.lease.due_rechecks(source.partition, state.started_at)
    # Runs whose items were quarantined lately: a garbled read may read well now (then its
    # quarantined items are let go); a bad run stays in quarantine.
    quarantined = await state.lease.quarantined_runs(source.partition, BATCH)
    await one_by_one(state, list(dict.fromkeys([*pending.ids(), *due, *quarantined])))


async def one_by_one(state: Pass, run_ids: list[str]) -> None:
    """Reads each run with the single-run endpoint, at most `concurrency` at a time."""
    runtime, source = state.runtime, state.runtime.source
    for start in range(0, len(run_ids), BATCH):
        if state.stopping:
            return
        batch = run_ids[start : start + BATCH]
        try:
            async with asyncio.TaskGroup() as group:
                reads = [group.create_task(_read_run(runtime, run_id)) for run_id in batch]
        except ExceptionGroup as failures:
            raise failures.exceptions[0] from None  # the others were cancelled with it
        observations = [read.result() for read in reads]
        runs = [o for o in observations if isinstance(o, Run)]
        rejected = [o for o in observations if isinstance(o, Rejected)]
        gone = [run_id for run_id, o in zip(batch, observations, strict=True) if o is None]
        written = await state.lease.save_refreshed(
            state.pass_id, source.upstream, runs, rejected, gone, source.partition
        )
        state.result.count(written, refreshed=len(batch))
        log_rejected(rejected)
        if gone:
            log.info("runs gone upstream", count=len(gone), example=gone[0])


async def unlisted(state: Pass, listed: set[str], since: datetime, until: datetime) -> None:
    """After a reconcile sweep that listed every run started in its range: the stored runs of
    the stream started in [since, until) that it did not list, and not marked gone yet, read by
    id (at most UNLISTED a sweep, the rest at the next one). A listing that leaves a run out
    proves nothing (it may lag, skip an item when others are deleted during the walk, or place a
    re-run by another time than its start): only a 404 of the single-run endpoint marks a run
    gone; one found is stored as it is now. Runs with no start time are in no range: while open
    they are read again anyway.

    Only where the upstream has a single-run endpoint (refresh = "open_list": Apify, GitHub).
    RakerOne has none: a finished run deleted there stays stored, not marked gone (its refresh
    marks open runs gone once a complete walk of the list passes them).
    """
    source = state.runtime.source
    if source.refresh != "open_list":
        return
    suspects, total = await state.lease.unlisted_runs(
        source.partition, since, until, listed, state.pass_id, UNLISTED
    )
    if not suspects:
        return
    log.info(
        "runs the sweep did not list; reading them by id",
        suspects=total, reading=len(suspects), left_for_next_sweep=total - len(suspects),
    )  # fmt: skip
    await one_by_one(state, suspects)


async def _read_run(runtime: SourceRuntime, run_id: str) -> Run | Rejected | None:
    """The run as the upstream has it now; None when the upstream no longer has it.

    An answer that cannot be read is asked again, like a list page (walk.PAGE_READS), so a run
    garbled on the way is not mistaken for a broken one.
    """
    source = cast(OpenList, runtime.source)  # only by_open_list reads runs one by one
    request = source.run_request(run_id)
    earlier: Rejected | None = None
    for attempt in range(1, PAGE_READS + 1):
        try:
            response = await runtime.client.get_json(request.path, request.params)
        except http.UpstreamError as error:
            if error.status == 404:
                return None
            raise
        observed = source.read_run(response.body, response.observed_at)
        if isinstance(observed, Run) and observed.run_id != run_id:
            observed = Rejected(
                f"asked for run {run_id[:40]}, got run {observed.run_id[:40]}", observed.raw
            )
        if isinstance(observed, Run) or observed == earlier:
            return observed
        earlier = observed
        if attempt == PAGE_READS:  # neither quarantined nor taken: read again next pass
            raise PageError(f"run {run_id[:40]}: its answer differed on each of {PAGE_READS} reads")
    raise AssertionError("unreachable")


class Pending:
    """Open runs as they stood before the pass, crossed off as the pass sees them again."""

    def __init__(self, snapshot: Iterable[tuple[str, str, datetime | None]]) -> None:
        self._runs = {run_id: (status, started_at) for run_id, status, started_at in snapshot}

    def __len__(self) -> int:
        return len(self._runs)

    def see(self, runs: Iterable[Run]) -> None:
        for run in runs:
            self._runs.pop(run.run_id, None)

    def statuses(self) -> list[str]:
        return sorted({status for status, _ in self._runs.values()})

    def waiting(self, status: str) -> bool:
        return any(s == status for s, _ in self._runs.values())

    def floor(self, margin: timedelta, status: str | None = None) -> datetime | None:
        """Where a newest-first walk that must meet them all may stop: the oldest start, less
        `margin`; None (walk to the end) when one has no start time to place it by."""
        starts = [started for s, started in self._runs.values() if status in (None, s)]
        if not starts or None in starts:
            return None
        return min(cast(list[datetime], starts)) - margin  # None is not in starts

    def seen_all(self, status: str) -> bool:
        """Whether every run that was in `status` has been seen again."""
        return not self.waiting(status)

    def ids(self) -> list[str]:
        return list(self._runs)


async def by_walks(state: Pass, pending: Pending) -> None:
    source = cast(ByWalks, state.runtime.source)  # open_runs checked its refresh
    overlap = state.runtime.config.overlap
    for status in pending.statuses():
        if not pending.waiting(status):  # crossed off by an earlier status walk
            continue
        if state.stopping:
            return
        await walk_pages(
            state, source.status_walk(status, pending.floor(overlap, status)), checkpointed=False,
            observe=pending.see, enough=functools.partial(pending.seen_all, status),
        )  # fmt: skip
    if not pending or state.stopping:
        return
    log.info("open runs changed status; searching the list for them", runs=len(pending))
    complete = await walk_pages(
        state, source.search_walk(pending.floor(overlap)), checkpointed=False,
        observe=pending.see, enough=lambda: not pending,
    )  # fmt: skip
    if complete and pending:
        # The walk went past every one of them: the upstream no longer has these runs.
        gone = pending.ids()
        await state.lease.save_refreshed(
            state.pass_id, source.upstream, [], [], gone, source.partition
        )
        log.info("runs gone upstream", count=len(gone), example=gone[0])
