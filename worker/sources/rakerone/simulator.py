"""The simulated RakerOne API: projects' action runs (RakerWorld) and their list endpoint.

It follows RakerOne's "List action runs" doc (GET /api/projects/{projectId}/action-runs): pages
newest first, keyset cursors, {"error": code} bodies. Everything it generates is deterministic
given the seed (and the clock it is given). worker.simulator.Simulator serves it over HTTP.

The docs say only "newest first". The simulated server orders a project's runs by when they were
created, newest first, ties by id descending; that key never changes, which keeps keyset cursors
stable. A run that starts as soon as it is created (every run unless asked otherwise) has its
startedAt as its creation time, so for those the order is startedAt's. A run that waits in the
queue first has no startedAt (the key is absent or null) while status is "queued", gets one when
it starts, and keeps its place in the list: startedAt order is then not list order, and a client
cannot rely on it. A run cancelled before it started never gets a startedAt.

Items are free-form: `result` can be any JSON value, including non-finite numbers (written as bare
NaN, Infinity, -Infinity, as Python's json.dumps writes them) and strings with control characters,
NUL and lone surrogates (written as JSON \\u escapes).
"""

from __future__ import annotations

import base64
import bisect
import copy
import itertools
import json
import random
import re
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import wraps
from itertools import accumulate
from operator import attrgetter
from typing import Any, ClassVar

from aiohttp import web

from worker.simulator.contract import Endpoints, Mistyping
from worker.simulator.faults import epoch_ms, listed, mistyped_id
from worker.simulator.seconds import iso as _iso
from worker.simulator.seconds import seconds as _seconds

RAKER_TERMINAL = ("completed", "failed", "cancelled")
RAKER_OPEN = ("processing", "needs_review")
RAKER_QUEUED = "queued"  # created, not started yet: no startedAt

_HOUR = 3600
_TERMINAL_CUM_WEIGHTS = tuple(accumulate((88, 8, 4)))
# Shared result objects: 200,000 generated runs then cost no memory for their results.
_RESULTS = {
    "completed": ({"success": True, "details": "Action executed successfully"},),
    "failed": (
        {"success": False, "details": "Action failed"},
        {"success": False, "details": "Target page returned HTTP 503"},
        {"success": False, "details": "Step 'extract' timed out after 300s"},
        {"success": False, "details": "Selector not found: #price"},
    ),
    "cancelled": ({"success": False, "details": "Cancelled by user"},),
}
_CANCELLED_UNSTARTED = {"success": False, "details": "Cancelled before it started"}
# Free-form results a seeded world may give finished runs (see RakerWorld's odd_results).
_ODD_RESULTS: tuple[object, ...] = (
    float("nan"),
    float("inf"),
    float("-inf"),
    {"success": True, "score": float("nan"), "details": "score not computed"},
    {"success": False, "details": "exit\u0000code 1", "retries": float("inf")},
    {"success": True, "details": "half a surrogate pair: \ud800"},
    {"details": "a low half alone \udfff", "values": [1, float("-inf"), None]},
    "plain text with a bell\x07, an escape\x1b[0m, a tab\t and a DEL\x7f",
    "\u0000",
    "",
    0,
    -1.5e308,
    10**30,
    True,
    [],
    {"nested": {"deeper": {"deepest": ["\ud83d", "\x00", float("nan"), {"": None}]}}},
    {"success": True, "details": "Action executed successfully", "rows": 1_048_576},
)
_MISSING_START = ("absent", "null", "mixed")
_UNSET: object = object()
# Injected failures by status: RakerOne's error code.
_FAILURES = {429: "rate_limited", 500: "internal_error", 502: "bad_gateway", 503: "unavailable"}
_CURSOR_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_CURSOR_FIELDS = {"project", "status", "after", "epoch"}


def _is_int(value: object) -> bool:
    return type(value) is int  # bool is an int subclass, and no cursor field is a bool


def _json_copy(value: object, what: str) -> object:
    """A private copy of a JSON value; TypeError or ValueError early if it is not one."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{what} is not a JSON value: {exc}") from None
    return copy.deepcopy(value)


# A record's place in every listing: (created, id, 0), or a planted item's (created, id, serial).
_Key = tuple[int, str, int]


class _ActionRun:
    """One well-formed run. Its key (created, id, 0) orders every listing and never changes;
    `created` is the startedAt of a run that started at once. `started` is None until it starts;
    `extra` holds fields beyond the usual six."""

    __slots__ = ("absent_start", "extra", "finished", "key", "result", "started", "status",
                 "triggered_by")  # fmt: skip

    def __init__(
        self,
        key: _Key,
        status: str,
        finished: int | None,
        triggered_by: str,
        result: object,
        started: int | None,
        absent_start: bool = False,
    ) -> None:
        self.key, self.status, self.finished = key, status, finished
        self.triggered_by, self.result = triggered_by, result
        self.started, self.absent_start = started, absent_start
        self.extra: dict[str, Any] | None = None


class _RawItem:
    """An arbitrary (maybe malformed) item planted by tests; listed, but never in list_items."""

    __slots__ = ("body", "key", "status")

    def __init__(self, item: object, key: _Key) -> None:
        # Encoding now fails early on unserialisable items and keeps them immutable. Bytes are
        # served verbatim: JSON text json.dumps cannot write (e.g. 1e999).
        if isinstance(item, bytes):
            self.body, item = item, json.loads(item)
        else:
            self.body = json.dumps(item, separators=(",", ":")).encode()
        self.key = key
        status = item.get("status") if isinstance(item, dict) else None
        self.status = status if isinstance(status, str) else None


_Record = _ActionRun | _RawItem
_key = attrgetter("key")


class _Listing:
    """Records sorted ascending by key; pages are read backwards from a position, newest first."""

    __slots__ = ("records",)

    def __init__(self, records: list[_Record] | None = None) -> None:
        self.records = records or []

    def add(self, records: Sequence[_Record]) -> None:
        if len(records) == 1:
            bisect.insort(self.records, records[0], key=_key)
        else:  # timsort merges the two sorted runs in linear time, unlike repeated insorts
            self.records.extend(records)
            self.records.sort(key=_key)

    def remove(self, record: _Record) -> None:
        i = bisect.bisect_left(self.records, record.key, key=_key)
        if self.records[i] is not record:
            raise LookupError("record not in listing")
        del self.records[i]

    def page(self, before: _Key | None, limit: int) -> tuple[list[_Record], bool]:
        """Up to `limit` records with keys below `before`, newest first, and whether more follow."""
        records = self.records
        end = len(records) if before is None else bisect.bisect_left(records, before, key=_key)
        start = max(0, end - limit)
        return records[start:end][::-1], start > 0


class _Project:
    __slots__ = ("by_status", "listing", "runs", "triggers")

    def __init__(self, triggers: list[str]) -> None:
        self.listing = _Listing()
        self.by_status: dict[str, _Listing] = {}
        self.runs: dict[str, _ActionRun] = {}
        self.triggers = triggers  # who starts this project's runs: a few users and the scheduler

    def add(self, records: Sequence[_Record]) -> None:
        self.listing.add(records)
        by_status: dict[str, list[_Record]] = {}
        for record in records:
            if record.status is not None:
                by_status.setdefault(record.status, []).append(record)
        for status, group in by_status.items():
            self.by_status.setdefault(status, _Listing()).add(group)
        self.runs.update((r.key[1], r) for r in records if isinstance(r, _ActionRun))


def _placed(
    now: int, unstarted: bool, started_at: datetime | None, created_at: datetime | None
) -> tuple[int | None, int]:
    """(started, created) in seconds of a new run: unstarted, or started at `started_at`
    (default now); created at `created_at`, default its start (or now), never after it."""
    if unstarted and started_at is not None:
        raise ValueError("an unstarted run has no started_at")
    started = None if unstarted else now if started_at is None else _seconds(started_at)
    created = (started if started is not None else now) if created_at is None else (
        _seconds(created_at)
    )  # fmt: skip
    if started is not None and created > started:
        raise ValueError("a run cannot start before it is created")
    return started, created


class RakerWorld:
    """Projects and their action runs, in memory.

    Options beyond the generated history (projects, seed, anchor, span, open_share, max_limit,
    forbidden):
    - clock: the world's time, epoch milliseconds (default: real time); new runs are created,
      start and finish by it, and the default anchor is its now.
    - queue_share: the share of generated runs that waited in the queue: the newest of them are
      still "queued" (no startedAt), a tenth of the older ones were cancelled before they started
      (status "cancelled", no startedAt), the rest started up to ten minutes after they were
      created, so their startedAt is out of list order. Default 0: every run starts at once.
    - missing_start: how an item without a startedAt shows it: "absent" (no key), "null", or
      "mixed" (a seeded, stable choice per run).
    - odd_results: the share of finished runs (generated, or added by add_runs) whose `result`
      is an odd free-form value: non-finite numbers, NUL and other control characters, lone
      surrogates, bare scalars, deep nesting. Default 0.
    With the defaults, a seed generates the very runs it generated before these options existed.
    """

    def __init__(
        self,
        *,
        projects: dict[str, int] | None = None,
        seed: int = 1,
        anchor: datetime | None = None,
        span: timedelta = timedelta(days=60),
        open_share: float = 0.05,
        max_limit: int = 100,
        forbidden: Iterable[str] = (),
        clock: Callable[[], int] | None = None,
        queue_share: float = 0.0,
        missing_start: str = "mixed",
        odd_results: float = 0.0,
    ) -> None:
        if max_limit < 1:
            raise ValueError("max_limit must be at least 1")
        if missing_start not in _MISSING_START:
            raise ValueError(
                f"missing_start must be one of {_MISSING_START}, got {missing_start!r}"
            )
        for name, share in (("queue_share", queue_share), ("odd_results", odd_results)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {share!r}")
        self._rng = random.Random(seed)
        self._seed = seed
        self._clock = clock or (lambda: time.time_ns() // 1_000_000)
        self.queue_share = queue_share
        self.missing_start = missing_start
        self.odd_results = odd_results
        self.anchor = anchor or datetime.fromtimestamp(self._now(), UTC)
        self.max_limit = max_limit
        self.forbidden = frozenset(forbidden)
        self._projects: dict[str, _Project] = {}
        self._run_ids: set[str] = set()  # ids are unique across projects
        self._raw_serials = itertools.count(
            1
        )  # raw items may share (startedAt, id); 0 is for real runs
        self._cursor_epoch = 0
        anchor_s = _seconds(self.anchor)
        low, high = anchor_s - span // timedelta(seconds=1), anchor_s - _HOUR
        for project, runs in (projects or {}).items():
            self._generate(self._create(project), runs, low, high, open_share)
        for project in self.forbidden:  # forbidden projects exist; the token just may not read them
            if project not in self._projects:
                self._create(project)

    @property
    def projects(self) -> list[str]:
        return list(self._projects)

    def _now(self) -> int:
        """The world's clock in whole seconds."""
        return self._clock() // 1000

    def _absent_start(self, run_id: str) -> bool:
        """Whether the run's item leaves out startedAt (rather than writing null) until it starts."""
        if self.missing_start != "mixed":
            return self.missing_start == "absent"
        return zlib.crc32(f"{self._seed}\0start\0{run_id}".encode()) % 2 == 0

    def _terminal_result(self, status: str) -> object:
        rng = self._rng
        if self.odd_results and rng.random() < self.odd_results:  # no draw at all when off
            return rng.choice(_ODD_RESULTS)
        return rng.choice(_RESULTS[status])

    def _create(self, project: str) -> _Project:
        users = sorted({f"user_{self._rng.randrange(100_000):05d}" for _ in range(5)})
        created = self._projects[project] = _Project([*users, "schedule"])
        return created

    def _new_ids(self, wanted: int) -> list[str]:
        fresh: dict[str, None] = {}
        bits = self._rng.getrandbits
        while len(fresh) < wanted:
            run_id = f"run_{bits(32):08x}"
            if run_id not in self._run_ids:
                fresh[run_id] = None
        self._run_ids.update(fresh)
        return list(fresh)

    def _generate(self, project: _Project, runs: int, low: int, high: int, share: float) -> None:
        rng = self._rng
        starts: list[int] = []
        triggers: list[str] = []
        users = project.triggers[:-1]
        while len(starts) < runs:
            moment = rng.randint(low, high)
            if rng.random() < 0.3:  # a schedule fires several actions in one second: ties
                size = min(runs - len(starts), rng.randint(1, 4))
                starts += [moment] * size
                triggers += ["schedule"] * size
            else:
                starts.append(moment)
                triggers.append(rng.choice(users))
        # The key (created, id, 0) sorts ties by id, so the newest `share` are the last ones.
        planned = sorted(zip(starts, self._new_ids(runs), triggers, strict=True))
        open_from = runs - min(runs, round(runs * share))
        terminal = rng.choices(RAKER_TERMINAL, cum_weights=_TERMINAL_CUM_WEIGHTS, k=runs)
        queue_share, anchor = self.queue_share, high + _HOUR
        records: list[_Record] = []
        for i, (created, run_id, trigger) in enumerate(planned):
            if i >= open_from:
                status = rng.choices(RAKER_OPEN, (4, 1))[0]
            elif rng.random() < 0.01:  # reviews can take a month, so old runs may still be open
                status = "needs_review"
            else:
                status = terminal[i]
            started: int | None = created
            finished: int | None = None
            result: object = None
            queued = bool(queue_share) and rng.random() < queue_share  # no draw when off
            if queued and i >= open_from:
                status, started = RAKER_QUEUED, None
            elif queued and rng.random() < 0.1:
                status, started = "cancelled", None
                finished, result = created + rng.randint(5, 600), _CANCELLED_UNSTARTED
            elif queued:
                started = created + rng.randint(1, 600)
            if started is not None and status in RAKER_TERMINAL:
                # Durations stay under an hour, so no generated run finishes after the anchor.
                finished = started + min(_HOUR - 1, 2 + int(rng.expovariate(1 / 240)))
                finished = max(started, min(finished, anchor))
                result = self._terminal_result(status)
            run = _ActionRun((created, run_id, 0), status, finished, trigger, result, started)
            if started is None:
                run.absent_start = self._absent_start(run_id)
            records.append(run)
        project.add(records)

    def _project(self, project: str) -> _Project:
        try:
            return self._projects[project]
        except KeyError:
            raise KeyError(f"unknown project {project!r}") from None

    def _run(self, project: str, run_id: str) -> _ActionRun:
        try:
            return self._project(project).runs[run_id]
        except KeyError:
            raise KeyError(f"project {project!r} has no run {run_id!r}") from None

    def _listing(self, project: str, status: str | None) -> _Listing:
        found = self._project(project)
        return found.listing if status is None else found.by_status.get(status, _Listing())

    def _item(self, run: _ActionRun, *, private: bool = True) -> dict[str, Any]:
        """One run as the API lists it (this is the single definition of an item); private
        copies its values, so the caller may change them."""
        item: dict[str, Any] = {"id": run.key[1], "status": run.status}
        if run.started is not None:
            item["startedAt"] = _iso(run.started)
        elif not run.absent_start:
            item["startedAt"] = None
        item["finishedAt"] = None if run.finished is None else _iso(run.finished)
        item["triggeredBy"] = run.triggered_by
        item["result"] = copy.deepcopy(run.result) if private else run.result
        if run.extra:
            item.update(copy.deepcopy(run.extra) if private else run.extra)
        return item

    def _item_json(self, record: _Record) -> bytes:
        if isinstance(record, _RawItem):
            return record.body
        return json.dumps(self._item(record, private=False), separators=(",", ":")).encode()

    def _cursor(self, project: str, status: str | None, key: _Key) -> str:
        """The opaque cursor after `key`; the same position always gives the same cursor."""
        payload = {"project": project, "status": status, "after": key, "epoch": self._cursor_epoch}
        raw = json.dumps(payload, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def _cursor_position(self, project: str, status: str | None, cursor: str) -> _Key | None:
        """The key a cursor points after, or None if it is not valid for this very listing."""
        cursor = cursor.rstrip("=")
        if not _CURSOR_CHARS.fullmatch(cursor):
            return None
        try:
            payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        except ValueError:  # bad base64, bad UTF-8 and bad JSON are all ValueErrors
            return None
        if not isinstance(payload, dict) or set(payload) != _CURSOR_FIELDS:
            return None
        after = payload["after"]
        valid = (
            payload["project"] == project
            and payload["status"] == status
            and _is_int(payload["epoch"])
            and payload["epoch"] == self._cursor_epoch
            and isinstance(after, list)
            and len(after) == 3
            and _is_int(after[0])
            and isinstance(after[1], str)
            and _is_int(after[2])
        )
        return (after[0], after[1], after[2]) if valid else None

    def _restatus(self, found: _Project, run: _ActionRun, status: str) -> None:
        found.by_status[run.status].remove(run)  # the status picks the filtered listing
        run.status = status
        found.by_status.setdefault(status, _Listing()).add([run])

    # The public API used by tests and demos to shape the world.

    def endpoints(self) -> RakerEndpoints:
        """Its HTTP endpoints, as worker.simulator.Simulator serves them."""
        return RakerEndpoints(self)

    def now(self) -> datetime:
        """The world's clock as a datetime (UTC, whole seconds, as RakerOne's times are)."""
        return datetime.fromtimestamp(self._now(), UTC)

    def add_runs(
        self,
        project: str,
        count: int = 1,
        *,
        status: str = "processing",
        started_at: datetime | None = None,
        created_at: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """New runs (startedAt default: now); all runs of one call share the startedAt second.

        status "queued" makes runs that have not started: no startedAt (started_at must not be
        given), listed where created_at (default now) puts them. created_at of a started run
        (default: its startedAt) places it in the list; it must not be after started_at.
        """
        found, rng, now = self._project(project), self._rng, self._now()
        started, created = _placed(now, status == RAKER_QUEUED, started_at, created_at)
        runs = []
        for run_id in self._new_ids(count):
            finished = result = None
            if started is not None and status in RAKER_TERMINAL:
                # A run added as finished took a few minutes, but never finishes in the future.
                finished = max(started, min(now, started + rng.randint(2, 600)))
                result = self._terminal_result(status)
            trigger = rng.choice(found.triggers)
            run = _ActionRun((created, run_id, 0), status, finished, trigger, result, started)
            if started is None:
                run.absent_start = self._absent_start(run_id)
            runs.append(run)
        if runs:
            found.add(runs)
        return [self._item(run) for run in runs]

    def add_run(
        self,
        project: str,
        *,
        status: str = "completed",
        started_at: datetime | None = None,
        created_at: datetime | None = None,
        finished_at: datetime | None = None,
        result: object = _UNSET,
        fields: Mapping[str, object] | None = None,
        triggered_by: str = "schedule",
        unstarted: bool | None = None,
    ) -> dict[str, Any]:
        """One run with exactly the given values; unlike add_raw_item it is a real run, part of
        list_items, and it can change status later. Returns its item.

        result is any JSON value (NaN, infinities, NUL, lone surrogates and all; default: the
        status's usual result, or null while open). fields are extra item fields, which may also
        replace startedAt, finishedAt, triggeredBy or result as served (not id or status).
        unstarted (default: status is "queued") leaves startedAt out; a terminal run without a
        finished_at finishes now (never before it started).
        """
        found, now = self._project(project), self._now()
        unstarted = status == RAKER_QUEUED if unstarted is None else unstarted
        started, created = _placed(now, unstarted, started_at, created_at)
        extra = dict(_json_copy(dict(fields or {}), "fields"))  # type: ignore[call-overload]
        if {"id", "status"} & extra.keys():
            raise ValueError("fields cannot replace id or status")
        finished = None if finished_at is None else _seconds(finished_at)
        if finished is None and status in RAKER_TERMINAL:
            finished = max(now, started if started is not None else created)
        if result is _UNSET:
            result = None
            if status in RAKER_TERMINAL:
                result = _CANCELLED_UNSTARTED if unstarted else _RESULTS[status][0]
        (run_id,) = self._new_ids(1)
        run = _ActionRun(
            (created, run_id, 0), status, finished, triggered_by, _json_copy(result, "result"),
            started, self._absent_start(run_id) if started is None else False,
        )  # fmt: skip
        run.extra = extra or None
        found.add([run])
        return self._item(run)

    def start_run(
        self, project: str, run_id: str, *, started_at: datetime | None = None
    ) -> dict[str, Any]:
        """Starts a queued run: status "processing", startedAt now (or started_at); it keeps its
        place in the list. ValueError if it has started already or was cancelled before it did.
        Returns its item."""
        run, found = self._run(project, run_id), self._projects[project]
        if run.started is not None:
            raise ValueError(f"run {run_id!r} has started already")
        if run.status in RAKER_TERMINAL:
            raise ValueError(f"run {run_id!r} was {run.status} before it started")
        run.started = self._now() if started_at is None else _seconds(started_at)
        run.finished = run.result = None
        self._restatus(found, run, "processing")
        return self._item(run)

    def set_status(
        self,
        project: str,
        run_id: str,
        status: str,
        *,
        finished_at: datetime | None = None,
        result: object = None,
    ) -> dict[str, Any]:
        """Changes a run's status and returns its item.

        A terminal status sets finishedAt (default now) and a result, an open one clears both, and
        any other (statuses are free-form) changes only the finished_at and result passed. result
        may be any JSON value (None: the status's usual one). A run that has not started stays
        unstarted when queued again or cancelled (its result then says so); any other status
        starts it now.
        """
        run, found = self._run(project, run_id), self._projects[project]
        finished = None if finished_at is None else _seconds(finished_at)
        now = self._now()
        if run.started is None and status not in (RAKER_QUEUED, "cancelled"):
            run.started = max(now, run.key[0])
        begun = run.key[0] if run.started is None else run.started
        chosen = None if result is None else _json_copy(result, "result")
        if status in RAKER_TERMINAL:
            run.finished = max(now, begun) if finished is None else finished
            usual = _CANCELLED_UNSTARTED if run.started is None else _RESULTS[status][0]
            run.result = usual if chosen is None else chosen
        elif status in RAKER_OPEN or status == RAKER_QUEUED:
            run.finished = run.result = None
        else:
            run.finished = run.finished if finished is None else finished
            run.result = run.result if chosen is None else chosen
        self._restatus(found, run, status)
        return self._item(run)

    def finish_open(self, project: str, status: str = "completed") -> int:
        """Finishes every open run of the project with `status`; returns how many there were.
        Queued runs are not open in this sense: they stay queued."""
        if status not in RAKER_TERMINAL:
            raise ValueError(f"{status!r} is not a terminal status")
        found = self._project(project)
        runs = [
            record
            for open_status in RAKER_OPEN
            for record in found.by_status.get(open_status, _Listing()).records
            if isinstance(record, _ActionRun)
        ]
        for run in runs:
            self.set_status(project, run.key[1], status)
        return len(runs)

    def delete_run(self, project: str, run_id: str) -> None:
        """Removes a run entirely; cursors pointing after it stay valid."""
        run, found = self._run(project, run_id), self._projects[project]
        found.listing.remove(run)
        found.by_status[run.status].remove(run)
        del found.runs[run_id]  # its id stays taken: a deleted run's id never comes back

    def add_raw_item(self, project: str, item: object, *, started_at: datetime) -> None:
        """Plants an arbitrary item in the listing, sorted as if it started at `started_at`; it
        is served but is no run: never in list_items, and it never changes. Bytes are served as
        they are (JSON text)."""
        found = self._project(project)
        fields = json.loads(item) if isinstance(item, bytes) else item
        item_id = fields.get("id") if isinstance(fields, dict) else None
        sort_id = item_id if isinstance(item_id, str) else ""
        found.add([_RawItem(item, (_seconds(started_at), sort_id, next(self._raw_serials)))])

    def remove_raw_items(self, project: str, item_id: str) -> int:
        """Removes the planted items whose id is `item_id`; returns how many there were."""
        found = self._project(project)
        planted = [
            r for r in found.listing.records if isinstance(r, _RawItem) and r.key[1] == item_id
        ]
        for record in planted:
            found.listing.remove(record)
            if record.status is not None:
                found.by_status[record.status].remove(record)
        return len(planted)

    def list_items(self, project: str) -> list[dict[str, Any]]:
        """Every well-formed run as the API lists it now, in list order: newest created first,
        ties by id descending (which is startedAt order only for runs that started at once)."""
        records = self._project(project).listing.records
        return [self._item(r) for r in reversed(records) if isinstance(r, _ActionRun)]

    def get(self, project: str, run_id: str) -> dict[str, Any] | None:
        """One run's item as listed now, or None (RakerOne has no endpoint for one run)."""
        run = self._project(project).runs.get(run_id)
        return None if run is None else self._item(run)

    def expire_cursors(self) -> None:
        """Every cursor handed out so far is refused from now on."""
        self._cursor_epoch += 1


class _Rejected(Exception):
    """A request RakerOne answers with an error body instead of a page."""

    def __init__(self, status: int, code: str, issues: list[dict[str, Any]] | None = None) -> None:
        super().__init__(code)
        self.status, self.code, self.issues = status, code, issues


def _error(status: int, code: str, issues: list[dict[str, Any]] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": code}
    if issues is not None:
        body["issues"] = issues
    return web.json_response(body, status=status)


def _positive_integer(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()):
        message = f"Expected an integer, received {raw!r}"
        raise _Rejected(400, "invalid_query", [_issue(name, "invalid_type", message)])
    if int(raw) < 1:
        message = "Number must be greater than or equal to 1"
        raise _Rejected(400, "invalid_query", [_issue(name, "too_small", message)])
    return int(raw)


def _issue(name: str, code: str, message: str) -> dict[str, Any]:
    return {"code": code, "path": [name], "message": message}


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answering_rejections(handler: _Handler) -> _Handler:
    @wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Rejected as exc:
            return _error(exc.status, exc.code, exc.issues)

    return answer


class RakerEndpoints(Endpoints):
    """RakerOne's list of action runs and the demo controls, served over a RakerWorld."""

    # Paths whose errors (401, unrouted) answer in RakerOne's error format.
    paths = ("/api/", "/_simulator/rakerone/")
    mistypable: ClassVar[Mapping[str, Mistyping]] = {
        "id": mistyped_id,
        "startedAt": epoch_ms,
        "status": listed,
    }

    def __init__(self, world: RakerWorld) -> None:
        self.world = world

    def routes(self) -> list[tuple[str, str, _Handler, str]]:
        """(method, path, handler, route name) of every endpoint."""
        return [
            (method, path, _answering_rejections(handler), name)
            for method, path, handler, name in (
                ("GET", "/api/projects/{projectId}/action-runs", self._list_action_runs,
                 "rakerone.list_action_runs"),
                # Controls for demos driven from a shell; they take the same bearer token.
                ("POST", "/_simulator/rakerone/{projectId}/runs", self._add_runs,
                 "control.rakerone.add_runs"),
                ("POST", "/_simulator/rakerone/{projectId}/finish", self._finish_open,
                 "control.rakerone.finish_open"),
            )
        ]  # fmt: skip

    @staticmethod
    def unauthorized(request: web.Request) -> web.Response:
        """The 401 for a request whose bearer token is missing or wrong."""
        return _error(401, "unauthorized")

    @staticmethod
    def unrouted(exc: web.HTTPException) -> web.Response:
        return _error(exc.status, "not_found" if exc.status == 404 else "method_not_allowed")

    @staticmethod
    def failure(status: int) -> web.Response:
        """An injected rate-limit or server error (worker.simulator.faults)."""
        return _error(status, _FAILURES[status])

    @staticmethod
    def items(answer: object) -> list[dict[str, Any]]:
        """The runs of a page."""
        runs = answer.get("runs") if isinstance(answer, dict) else None
        return [i for i in runs if isinstance(i, dict)] if isinstance(runs, list) else []

    def _existing(self, request: web.Request) -> str:
        project = request.match_info["projectId"]
        if project not in self.world._projects:
            raise _Rejected(404, "not_found")
        return project

    async def _list_action_runs(self, request: web.Request) -> web.Response:
        world, query = self.world, request.query
        # Like a schema-validated route, the query is checked before the project is looked up.
        limit = min(_positive_integer(query, "limit", world.max_limit), world.max_limit)
        project = self._existing(request)
        if project in world.forbidden:
            raise _Rejected(403, "forbidden")
        status, cursor = query.get("status"), query.get("cursor")
        before = None if cursor is None else world._cursor_position(project, status, cursor)
        if cursor is not None and before is None:
            raise _Rejected(400, "invalid_cursor")
        records, more = world._listing(project, status).page(before, limit)
        next_cursor = world._cursor(project, status, records[-1].key) if more else None
        body = b'{"runs":[%s],"nextCursor":%s}' % (
            b",".join(world._item_json(r) for r in records),
            json.dumps(next_cursor).encode(),
        )
        return web.Response(body=body, content_type="application/json")

    async def _add_runs(self, request: web.Request) -> web.Response:
        project = self._existing(request)
        count = min(_positive_integer(request.query, "count", 1), 100_000)
        status = request.query.get("status", "processing")
        added = self.world.add_runs(project, count, status=status)
        return web.json_response({"ids": [item["id"] for item in added]}, status=201)

    async def _finish_open(self, request: web.Request) -> web.Response:
        project = self._existing(request)
        status = request.query.get("status", "completed")
        if status not in RAKER_TERMINAL:
            message = f"Expected one of {', '.join(RAKER_TERMINAL)}, received {status!r}"
            raise _Rejected(400, "invalid_query", [_issue("status", "invalid_enum_value", message)])
        return web.json_response({"finished": self.world.finish_open(project, status)})
