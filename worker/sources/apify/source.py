"""Apify v2: the runs of a user, of one actor, or of one task.

User and actor lists are read oldest first from the watermark with `startedAfter` (inclusive), and
paged by seeking on the newest `startedAt` seen: offsets only ever count runs that share that one
instant, so retention deleting old runs cannot shift them, and ties longer than a page neither stall
nor skip. The task list has no time filter: it is walked newest first (`desc=1`) down to the watermark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from worker.model import KEPT, Checkpoint, Column, Page, Position, Rejected, Request, Run
from worker.ratelimit import Published
from worker.sources.apify.config import ApifyConfig
from worker.sources.common import (
    MAX_CLOCK_SKEW,
    InFlight,
    ItemError,
    PageError,
    Rewindable,
    check_count,
    check_not_future,
    dump,
    escaped_item,
    isoformat,
    newest_first_checkpoint,
    number,
    parse_time,
    start_times,
    storable,
    text,
    walk_top,
)

# Apify's typed columns of runsync.runs (sql/migrations/0001_initial.sql), in the order a Run's
# `columns` holds them. The usage figure is staged as float8: asyncpg encodes a Python float as
# numeric a hundred times slower, and float8 as text is its shortest exact form.
COLUMNS = (
    Column("actor_id", "text"),
    Column("task_id", "text"),
    Column("build_id", "text"),
    Column("build_number", "text"),
    Column("origin", "text"),
    Column("usage_total_usd", "float8", "{}::text::numeric"),
    Column("default_key_value_store_id", "text"),
    Column("default_dataset_id", "text"),
    Column("default_request_queue_id", "text"),
)

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "TIMED-OUT", "ABORTED"})
OPEN_STATUSES = ("READY", "RUNNING", "TIMING-OUT", "ABORTING")
# Apify: usage and cost of a just-finished run can be preliminary for about ten seconds.
SETTLE = timedelta(seconds=15)


def _resource(path: str) -> str | None:
    """A list of runs is one resource; each single run is its own, read once a pass at most."""
    return None if path.startswith("/v2/actor-runs/") else path


# Apify's published limits: 60 requests a second per resource (stated in X-RateLimit-Limit on
# every answer), 250,000 a minute per user over all resources.
LIMITS = Published(
    per_resource=60.0, per_token=250_000 / 60, header="X-RateLimit-Limit", resource=_resource
)


class ApifySource:
    upstream = "apify"
    partition = None
    refresh = "open_list"

    def __init__(self, config: ApifyConfig) -> None:
        self.page_size = config.page_size
        self.overlap = config.overlap
        if config.task:
            self.list_path = f"/v2/actor-tasks/{quote(config.task, safe='~')}/runs"
            self.newest_first = True
        elif config.actor:
            self.list_path = f"/v2/acts/{quote(config.actor, safe='~')}/runs"
            self.newest_first = False
        else:
            self.list_path = "/v2/actor-runs"
            self.newest_first = False

    def incremental(self, checkpoint: Checkpoint) -> OldestFirst | NewestFirst:
        if self.newest_first:
            # Like the oldest-first pass, the walk goes on a little below the watermark, so a run
            # that becomes visible late is still read.
            floor = checkpoint.watermark - self.overlap if checkpoint.watermark else None
            return NewestFirst(self.list_path, checkpoint, floor=floor, page_size=self.page_size)
        if checkpoint.watermark is not None:
            # Each pass starts a little before the watermark, so a run that becomes visible late,
            # even at the watermark's own instant, is still read; unchanged runs cost no write.
            checkpoint = Checkpoint(checkpoint.watermark - self.overlap, None)
        return OldestFirst(self.list_path, checkpoint, page_size=self.page_size)

    def recent(self, floor: datetime) -> OldestFirst | NewestFirst:
        if self.newest_first:
            return NewestFirst(self.list_path, Checkpoint(floor), page_size=self.page_size)
        return OldestFirst(self.list_path, Checkpoint(floor), page_size=self.page_size)

    def head(self, checkpoint: Checkpoint) -> NewestFirst | None:
        top = walk_top(checkpoint) if self.newest_first else None
        if top is None:  # oldest-first walks read the newest runs last; they have no head
            return None
        return NewestFirst(self.list_path, Checkpoint(top - self.overlap), page_size=self.page_size)

    def backfill(
        self,
        checkpoint: Checkpoint | None,
        since: datetime | None,
        until: datetime | None,
        walk: Position,
    ) -> OldestFirst | NewestFirst:
        checkpoint = checkpoint or Checkpoint(watermark=since)
        if self.newest_first:
            return NewestFirst(
                self.list_path, checkpoint, page_size=self.page_size, until=until, walk=walk
            )
        return OldestFirst(
            self.list_path, checkpoint, page_size=self.page_size, until=until, walk=walk
        )

    @property
    def windowed(self) -> bool:
        """Whether a backfill can be cut into time windows: only lists with a time filter."""
        return not self.newest_first

    def probe(self, since: datetime | None, until: datetime | None, offset: int) -> Request:
        """One run of [since, until], at `offset` in start order: the answer also says the total."""
        params = {"limit": "1", "offset": str(offset)}
        if since is not None:
            params["startedAfter"] = isoformat(since)
        if until is not None:
            params["startedBefore"] = isoformat(until)
        return Request(self.list_path, params)

    def read_probe(self, body: Any, observed_at: datetime) -> tuple[int, datetime | None]:
        """(total, the start of the item at the probed offset) of a probe's answer. Only the
        start is read: an item unreadable otherwise still places a window boundary (the walk
        quarantines it). None when the item has no readable start."""
        items, total, _ = read_list(body)
        item = items[0] if items else None
        started = item.get("startedAt") if isinstance(item, dict) else None
        try:
            start = parse_time(started, "startedAt")
        except ItemError:
            start = None
        return total or 0, start

    def window(
        self,
        checkpoint: Checkpoint | None,
        start: datetime | None,
        end: datetime | None,
        walk: Position,
    ) -> OldestFirst:
        """A walk of one window of a backfill: from `start`, up to and including `end`."""
        checkpoint = checkpoint or Checkpoint(watermark=start)
        return OldestFirst(
            self.list_path, checkpoint, page_size=self.page_size, until=end, walk=walk
        )

    def open_walk(self) -> OldestFirst | NewestFirst:
        """Every run that is open now, whatever its age: one list filtered by every open status.
        A finished run can be resurrected at any age, so the list has no lower time bound."""
        status = ",".join(OPEN_STATUSES)
        if self.newest_first:
            return NewestFirst(
                self.list_path, Checkpoint(), page_size=self.page_size, status=status
            )
        return OldestFirst(self.list_path, Checkpoint(), page_size=self.page_size, status=status)

    def run_request(self, run_id: str) -> Request:
        return Request(f"/v2/actor-runs/{quote(run_id, safe='')}", {})

    def read_run(self, body: Any, observed_at: datetime) -> Run | Rejected:
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise PageError("the single-run answer has no data object")
        return read_item(body["data"], observed_at)


def scope_request(config: ApifyConfig) -> Request:
    """The object of a source's actor or task (given by id or `username~name`): its `data.id` is
    the id that the source's runs carry in actId or actorTaskId."""
    if config.task:
        return Request(f"/v2/actor-tasks/{quote(config.task, safe='~')}", {})
    assert config.actor is not None, "a source of all the user's runs has no actor or task"
    return Request(f"/v2/acts/{quote(config.actor, safe='~')}", {})


def read_item(item: Any, observed_at: datetime, *, partial: bool = False) -> Run | Rejected:
    """One list item (partial: it may omit fields) or single-run object as a Run, or the reason
    it cannot be one."""
    run = _read_common(item, observed_at, partial) if type(item) is dict else None
    return run if run is not None else _read_carefully(item, observed_at, partial)


def _read_carefully(item: Any, observed_at: datetime, partial: bool) -> Run | Rejected:
    run_id = None
    try:
        if not isinstance(item, dict):
            raise ItemError(f"the item is a {type(item).__name__}, not an object")
        text(item, "id", required=True)
        stored, raw, note = escaped_item(item)
        run_id = stored["id"]
        try:
            return _read_fields(item, stored, raw, note, observed_at, partial)
        except ItemError as error:
            raise ItemError(f"run {run_id[:40]}: {error}") from None
    except ItemError as error:
        return Rejected(str(error), dump(item), run_id)


_fromisoformat = datetime.fromisoformat


def _read_common(item: dict[str, Any], observed_at: datetime, partial: bool) -> Run | None:
    """The item as a Run when it has the documented shape exactly (strings where strings go, UTC
    times); None for anything else, which _read_carefully reads again, slowly and with words. A
    backfill runs this for every run it reads: it is written for speed, and a test holds it to
    the same result as _read_carefully."""
    get = item.get
    run_id, status = get("id"), get("status")
    started, finished = get("startedAt"), get("finishedAt")
    actor_id, task_id, build_id = get("actId"), get("actorTaskId"), get("buildId")
    store_id, dataset_id = get("defaultKeyValueStoreId"), get("defaultDatasetId")
    queue_id, build_number = get("defaultRequestQueueId"), get("buildNumber")
    usage, meta = get("usageTotalUsd"), get("meta")
    origin = meta.get("origin") if type(meta) is dict else None
    if not (
        type(run_id) is str and run_id and type(status) is str and status
        and type(started) is str and (finished is None or type(finished) is str)
        and (actor_id is None or type(actor_id) is str) and (task_id is None or type(task_id) is str)
        and (build_id is None or type(build_id) is str) and (store_id is None or type(store_id) is str)
        and (dataset_id is None or type(dataset_id) is str)
        and (queue_id is None or type(queue_id) is str)
        and (build_number is None or type(build_number) is str)
        and (usage is None or type(usage) is float or type(usage) is int)
        and (meta is None or type(meta) is dict) and (origin is None or type(origin) is str)
    ):  # fmt: skip
        return None
    try:
        started_at = _fromisoformat(started)
        finished_at = None if finished is None else _fromisoformat(finished)
    except ValueError:
        return None
    if started_at.tzinfo is not UTC or (finished_at is not None and finished_at.tzinfo is not UTC):
        return None
    if started_at > observed_at + MAX_CLOCK_SKEW:
        return None
    raw, note = storable(item)
    if note is not None:
        return None
    is_terminal = status in TERMINAL_STATUSES
    recheck_at = None
    if is_terminal and finished_at is not None and observed_at < finished_at + SETTLE:
        recheck_at = finished_at + SETTLE
    return Run(
        run_id, status, is_terminal, started_at, finished_at, raw, observed_at, recheck_at,
        None, partial, None, actor_id, (status == "SUCCEEDED") if is_terminal else None,
        (actor_id, task_id, build_id, build_number, origin, usage, store_id, dataset_id, queue_id),
    )  # fmt: skip


# The documented string fields, all optional: (item key, Run field).
_TEXT_FIELDS = (
    ("actId", "actor_id"),
    ("actorTaskId", "task_id"),
    ("buildId", "build_id"),
    ("defaultKeyValueStoreId", "default_key_value_store_id"),
    ("defaultDatasetId", "default_dataset_id"),
    ("defaultRequestQueueId", "default_request_queue_id"),
)


def _read_fields(
    item: dict[str, Any],
    stored: dict[str, Any],
    raw: str,
    note: str | None,
    observed_at: datetime,
    partial: bool,
) -> Run:
    # Items off the documented shape: read field by field, and a field that fails goes through
    # text() again, for the error's words. Text comes from the item as stored (escaped where it
    # had to be), numbers from the item as received (a non-finite one is stored as null).
    get = stored.get
    status = text(stored, "status", required=True)
    texts = {field: get(key) for key, field in _TEXT_FIELDS}
    for (key, _), value in zip(_TEXT_FIELDS, texts.values(), strict=True):
        if value is not None and type(value) is not str:
            text(stored, key)
    started_at = parse_time(get("startedAt"), "startedAt", required=False)
    check_not_future(started_at, observed_at)
    finished_at = parse_time(get("finishedAt"), "finishedAt", required=False)
    meta = get("meta")
    if meta is not None and type(meta) is not dict:
        raise ItemError(f"meta is a {type(meta).__name__}, not an object")
    origin = text(meta, "origin") if meta else None
    build_number = get("buildNumber")
    if build_number is not None and type(build_number) is not str:
        if type(build_number) not in (int, float):
            text(stored, "buildNumber")
        build_number = str(build_number)
    is_terminal = status in TERMINAL_STATUSES
    recheck_at = None
    if is_terminal and finished_at is not None and observed_at < finished_at + SETTLE:
        recheck_at = finished_at + SETTLE
    return Run(
        run_id=stored["id"],
        status=status,
        is_terminal=is_terminal,
        started_at=started_at,
        finished_at=finished_at,
        raw=raw,
        observed_at=observed_at,
        recheck_at=recheck_at,
        partial=partial,
        notes=note,
        scope=texts["actor_id"],
        succeeded=(status == "SUCCEEDED") if is_terminal else None,
        columns=(
            texts["actor_id"],
            texts["task_id"],
            texts["build_id"],
            build_number,
            origin,
            number(item, "usageTotalUsd"),
            texts["default_key_value_store_id"],
            texts["default_dataset_id"],
            texts["default_request_queue_id"],
        ),  # in the order of COLUMNS
    )


def read_list(body: Any) -> tuple[list[Any], int | None, int | None]:
    """The items of a list answer, with its total and served limit when they are numbers."""
    data: Any = body.get("data") if isinstance(body, dict) else None
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise PageError("the list answer has no data.items array")
    total, limit = data.get("total"), data.get("limit")
    return (
        items,
        total if isinstance(total, int) and not isinstance(total, bool) else None,
        limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None,
    )


@dataclass(frozen=True, kw_only=True)
class Offset(Position):
    """An oldest-first walk's position beside its watermark: the runs read at that instant."""

    offset: int = field(default=0, metadata=KEPT)


@dataclass(frozen=True, kw_only=True)
class NewestOffset(InFlight):
    """A newest-first walk's position: the runs read from the top so far."""

    offset: int = field(default=0, metadata=KEPT)


class _Walk(Rewindable):
    """What both directions share: reading a page, noticing a page served twice."""

    _position: tuple[str, ...] = ("done", "_last_page")

    def __init__(
        self,
        path: str,
        *,
        page_size: int,
        until: datetime | None = None,
        walk: Position | None = None,
        status: str | None = None,
    ) -> None:
        self.path = path
        self.page_size = page_size
        self.status = status  # only runs in these statuses (a comma list)
        self.until = until  # a backfill's upper bound
        self.walk = walk or Position()  # kept in the cursor: a backfill resumes only its range
        self.done = False
        self._last_page: tuple[Any, ...] | None = None

    def restart(self) -> bool:
        return False  # offsets cannot be refused; a 400 here is a real error

    def read(
        self, body: Any, observed_at: datetime
    ) -> tuple[list[Any], list[Run | Rejected], list[Run], list[Rejected], int | None, bool]:
        self._save()
        items, total, served_limit = read_list(body)
        check_count(items, self.page_size, self.path)
        signature = (len(items), _item_id(items[0]), _item_id(items[-1])) if items else None
        if signature is not None and signature == self._last_page:
            raise PageError(f"{self.path} served the same page twice; stopping rather than looping")
        self._last_page = signature
        parsed = [read_item(item, observed_at, partial=True) for item in items]
        runs = [p for p in parsed if isinstance(p, Run)]
        rejected = [p for p in parsed if isinstance(p, Rejected)]
        # A short page is the last one; the server may clamp the limit we asked for.
        last = len(items) < min(self.page_size, served_limit or self.page_size)
        return items, parsed, runs, rejected, total, last


class OldestFirst(_Walk):
    """Ascending walk by `startedAfter` = watermark, `offset` = runs already read at that instant."""

    _position = (*_Walk._position, "watermark", "offset")

    def __init__(self, path: str, checkpoint: Checkpoint, **options: Any) -> None:
        super().__init__(path, **options)
        self.watermark = checkpoint.watermark
        self.offset = checkpoint.position(Offset).offset

    def __str__(self) -> str:
        at = isoformat(self.watermark) if self.watermark else "the beginning"
        return f"{self.path} from {at} +{self.offset}"

    @property
    def checkpoint(self) -> Checkpoint:
        return Checkpoint.at(self.watermark, Offset(**self.walk.scope(), offset=self.offset))

    def next_request(self) -> Request | None:
        if self.done:
            return None
        params = {"limit": str(self.page_size), "offset": str(self.offset)}
        if self.watermark is not None:
            params["startedAfter"] = isoformat(self.watermark)
        if self.until is not None:
            params["startedBefore"] = isoformat(self.until)
        if self.status is not None:
            params["status"] = self.status
        return Request(self.path, params)

    def advance(self, body: Any, observed_at: datetime) -> Page:
        items, parsed, runs, rejected, total, last = self.read(body, observed_at)
        newer = [t for t in start_times(runs) if self.watermark is None or t > self.watermark]
        if newer:
            # Seek to the newest instant; the offset counts the runs read at it. Unreadable items
            # after the last of them are read again next time: that repeats, it never skips.
            top = max(newer)
            at_top = [i for i, p in enumerate(parsed) if isinstance(p, Run) and p.started_at == top]
            self.watermark, self.offset = top, at_top[-1] - at_top[0] + 1
        else:
            # Still at the same instant: the offset into the same result set is exact.
            self.offset += len(items)
        self.done = last
        return _page(runs, rejected, self.checkpoint, len(items), total)


class NewestFirst(_Walk):
    """Descending walk by offset from the newest run down to the watermark.

    New runs arriving during the walk push older ones down: a resumed walk reads some runs twice and
    skips none. The watermark moves to the newest run seen only once the walk reaches the old one.
    """

    _position = (*_Walk._position, "top", "offset")

    def __init__(
        self, path: str, checkpoint: Checkpoint, *, floor: datetime | None = None, **options: Any
    ) -> None:
        super().__init__(path, **options)
        self.watermark = checkpoint.watermark
        # Where the walk may stop: the watermark, or a little below it (an incremental pass's
        # overlap, for runs listed late); the watermark itself moves only once the walk is done.
        self.floor = floor if floor is not None else checkpoint.watermark
        position = checkpoint.position(NewestOffset)
        self.offset, self.top = position.offset, position.top

    def __str__(self) -> str:
        floor = isoformat(self.floor) if self.floor else "the beginning"
        return f"{self.path} newest first, offset {self.offset}, down to {floor}"

    @property
    def checkpoint(self) -> Checkpoint:
        position = NewestOffset(**self.walk.scope(), offset=self.offset)
        return newest_first_checkpoint(self.watermark, self.top, self.done, position)

    def next_request(self) -> Request | None:
        if self.done:
            return None
        params = {"desc": "1", "limit": str(self.page_size), "offset": str(self.offset)}
        if self.status is not None:
            params["status"] = self.status
        return Request(self.path, params)

    def advance(self, body: Any, observed_at: datetime) -> Page:
        items, _, runs, rejected, total, last = self.read(body, observed_at)
        if self.until is not None:
            runs = [r for r in runs if r.started_at is None or r.started_at <= self.until]
        times = start_times(runs)
        if times:
            self.top = max(self.top, max(times)) if self.top else max(times)
        self.offset += len(items)
        reached = self.floor is not None and any(t < self.floor for t in times)
        self.done = last or reached
        return _page(runs, rejected, self.checkpoint, len(items), total)


def _page(
    runs: list[Run],
    rejected: list[Rejected],
    checkpoint: Checkpoint,
    items: int,
    total: int | None,
) -> Page:
    times = start_times(runs)
    return Page(
        runs, rejected, checkpoint, items, total, min(times, default=None), max(times, default=None)
    )


def _item_id(item: Any) -> Any:
    return item.get("id") if isinstance(item, dict) else repr(item)[:80]
