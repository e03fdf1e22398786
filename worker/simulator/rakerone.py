"""The simulated RakerOne API: projects' action runs (RakerWorld) and their list endpoint.

It follows RakerOne's "List action runs" doc (GET /api/projects/{projectId}/action-runs): pages
newest first by (startedAt, id), keyset cursors, {"error": code} bodies. Everything it generates is
deterministic given the seed. worker.simulator.Simulator serves it over HTTP.
"""

from __future__ import annotations

import base64
import bisect
import itertools
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import wraps
from itertools import accumulate
from operator import attrgetter

from aiohttp import web

RAKER_TERMINAL = ("completed", "failed", "cancelled")
RAKER_OPEN = ("processing", "needs_review")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
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
# Injected failures by status: RakerOne's error code.
_FAILURES = {429: "rate_limited", 500: "internal_error", 502: "bad_gateway", 503: "unavailable"}
_CURSOR_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_CURSOR_FIELDS = {"project", "status", "after", "epoch"}


def _seconds(moment: datetime) -> int:
    """Whole seconds since the epoch, rounded down; naive datetimes count as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(seconds=1)


def _iso(seconds: int) -> str:
    """RakerOne's timestamp format, e.g. 2024-06-10T15:22:30Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _is_int(value: object) -> bool:
    return type(value) is int  # bool is an int subclass, and no cursor field is a bool


class _ActionRun:
    """One well-formed run; its key (startedAt, id, 0) orders every listing and never changes."""

    __slots__ = ("finished", "key", "result", "status", "triggered_by")

    def __init__(
        self,
        key: tuple[int, str, int],
        status: str,
        finished: int | None,
        triggered_by: str,
        result: dict | None,
    ) -> None:
        self.key, self.status, self.finished = key, status, finished
        self.triggered_by, self.result = triggered_by, result


class _RawItem:
    """An arbitrary (maybe malformed) item planted by tests; listed, but never in list_items."""

    __slots__ = ("body", "key", "status")

    def __init__(self, item: object, key: tuple[int, str, int]) -> None:
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

    def add(self, records: list[_Record]) -> None:
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

    def page(self, before: tuple | None, limit: int) -> tuple[list[_Record], bool]:
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

    def add(self, records: list[_Record]) -> None:
        self.listing.add(records)
        by_status: dict[str, list[_Record]] = {}
        for record in records:
            if record.status is not None:
                by_status.setdefault(record.status, []).append(record)
        for status, group in by_status.items():
            self.by_status.setdefault(status, _Listing()).add(group)
        self.runs.update((r.key[1], r) for r in records if isinstance(r, _ActionRun))


class RakerWorld:
    """Projects and their action runs, in memory."""

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
    ) -> None:
        if max_limit < 1:
            raise ValueError("max_limit must be at least 1")
        self._rng = random.Random(seed)
        self.anchor = anchor or datetime.now(UTC).replace(microsecond=0)
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
        rng, starts, triggers = self._rng, [], []
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
        # The key (startedAt, id, 0) sorts ties by id, so the newest `share` are the last ones.
        planned = sorted(zip(starts, self._new_ids(runs), triggers, strict=True))
        open_from = runs - min(runs, round(runs * share))
        terminal = rng.choices(RAKER_TERMINAL, cum_weights=_TERMINAL_CUM_WEIGHTS, k=runs)
        records: list[_Record] = []
        for i, (started, run_id, trigger) in enumerate(planned):
            if i >= open_from:
                status = rng.choices(RAKER_OPEN, (4, 1))[0]
            elif rng.random() < 0.01:  # reviews can take a month, so old runs may still be open
                status = "needs_review"
            else:
                status = terminal[i]
            finished = result = None
            if status in RAKER_TERMINAL:
                # Durations stay under an hour, so no generated run finishes after the anchor.
                finished = started + min(_HOUR - 1, 2 + int(rng.expovariate(1 / 240)))
                result = rng.choice(_RESULTS[status])
            records.append(_ActionRun((started, run_id, 0), status, finished, trigger, result))
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

    def _item(self, run: _ActionRun) -> dict:
        """One run as the API lists it (this is the single definition of an item)."""
        started, run_id, _ = run.key
        return {
            "id": run_id,
            "status": run.status,
            "startedAt": _iso(started),
            "finishedAt": None if run.finished is None else _iso(run.finished),
            "triggeredBy": run.triggered_by,
            "result": None if run.result is None else dict(run.result),
        }

    def _item_json(self, record: _Record) -> bytes:
        if isinstance(record, _RawItem):
            return record.body
        return json.dumps(self._item(record), separators=(",", ":")).encode()

    def _cursor(self, project: str, status: str | None, key: tuple) -> str:
        """The opaque cursor after `key`; the same position always gives the same cursor."""
        payload = {"project": project, "status": status, "after": key, "epoch": self._cursor_epoch}
        raw = json.dumps(payload, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def _cursor_position(self, project: str, status: str | None, cursor: str) -> tuple | None:
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
        return tuple(after) if valid else None

    # The public API used by tests and demos to shape the world.

    def add_runs(
        self,
        project: str,
        count: int = 1,
        *,
        status: str = "processing",
        started_at: datetime | None = None,
    ) -> list[dict]:
        """New runs (startedAt default: now); all runs of one call share the startedAt second."""
        found, rng, now = self._project(project), self._rng, int(time.time())
        started = now if started_at is None else _seconds(started_at)
        runs = []
        for run_id in self._new_ids(count):
            finished = result = None
            if status in RAKER_TERMINAL:
                # A run added as finished took a few minutes, but never finishes in the future.
                finished = max(started, min(now, started + rng.randint(2, 600)))
                result = rng.choice(_RESULTS[status])
            trigger = rng.choice(found.triggers)
            runs.append(_ActionRun((started, run_id, 0), status, finished, trigger, result))
        if runs:
            found.add(runs)
        return [self._item(run) for run in runs]

    def set_status(
        self,
        project: str,
        run_id: str,
        status: str,
        *,
        finished_at: datetime | None = None,
        result: dict | None = None,
    ) -> dict:
        """Changes a run's status and returns its item.

        A terminal status sets finishedAt (default now) and a result, an open one clears both, and
        any other (statuses are free-form) changes only the finished_at and result passed.
        """
        run, found = self._run(project, run_id), self._projects[project]
        found.by_status[run.status].remove(run)  # the status picks the filtered listing
        finished = None if finished_at is None else _seconds(finished_at)
        if status in RAKER_TERMINAL:
            run.finished = max(int(time.time()), run.key[0]) if finished is None else finished
            run.result = _RESULTS[status][0] if result is None else dict(result)
        elif status in RAKER_OPEN:
            run.finished = run.result = None
        else:
            run.finished = run.finished if finished is None else finished
            run.result = run.result if result is None else dict(result)
        run.status = status
        found.by_status.setdefault(status, _Listing()).add([run])
        return self._item(run)

    def finish_open(self, project: str, status: str = "completed") -> int:
        """Finishes every open run of the project with `status`; returns how many there were."""
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
        """Plants an arbitrary item in the listing, sorted as if it started at `started_at`;
        bytes are served as they are (JSON text)."""
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

    def list_items(self, project: str) -> list[dict]:
        """Every well-formed run as a list item, newest first (startedAt desc, id desc)."""
        records = self._project(project).listing.records
        return [self._item(r) for r in reversed(records) if isinstance(r, _ActionRun)]

    def expire_cursors(self) -> None:
        """Every cursor handed out so far is refused from now on."""
        self._cursor_epoch += 1


class _Rejected(Exception):
    """A request RakerOne answers with an error body instead of a page."""

    def __init__(self, status: int, code: str, issues: list[dict] | None = None) -> None:
        super().__init__(code)
        self.status, self.code, self.issues = status, code, issues


def _error(status: int, code: str, issues: list[dict] | None = None) -> web.Response:
    body: dict = {"error": code}
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


def _issue(name: str, code: str, message: str) -> dict:
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


class RakerEndpoints:
    """RakerOne's list of action runs and the demo controls, served over a RakerWorld."""

    # Paths whose errors (401, unrouted) answer in RakerOne's error format.
    paths = ("/api/", "/_simulator/rakerone/")

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
    def unauthorized() -> web.Response:
        return _error(401, "unauthorized")

    @staticmethod
    def unrouted(exc: web.HTTPException) -> web.Response:
        return _error(exc.status, "not_found" if exc.status == 404 else "method_not_allowed")

    @staticmethod
    def failure(status: int) -> web.Response:
        """An injected rate-limit or server error (worker.simulator.faults)."""
        return _error(status, _FAILURES[status])

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
