"""The simulated Apify API v2: an in-memory account (ApifyWorld) and its run endpoints.

It follows Apify's "Get user runs list" and "Get list of runs" docs, and everything it generates
is deterministic given the seed. worker.simulator.Simulator serves it over HTTP.
"""

from __future__ import annotations

import bisect
import gc
import heapq
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache, wraps
from itertools import accumulate, islice
from operator import attrgetter

from aiohttp import web

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "TIMED-OUT", "ABORTED"})
OPEN_STATUSES = frozenset({"READY", "RUNNING", "TIMING-OUT", "ABORTING"})
ALL_STATUSES = TERMINAL_STATUSES | OPEN_STATUSES
USERNAME = "janedoe"

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Folding random bytes onto the alphabet makes id generation one C-level pass (bias is harmless).
_BYTE_TO_ID_CHAR = bytes(ord(_ALPHABET[b % 62]) for b in range(256))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HOUR_MS = 3_600_000
# Lookup tables make timestamp formatting ~3x faster than strftime, which matters per list item.
_MIN_SEC = [f"{m:02d}:{s:02d}" for m in range(60) for s in range(60)]
_MILLIS = [f"{ms:03d}" for ms in range(1000)]
_ACTOR_NAMES = (
    "web-scraper",
    "google-maps-extractor",
    "price-monitor",
    "news-crawler",
    "pdf-export",
)
_TASK_SUFFIXES = ("daily", "hourly", "weekly", "eu")
_ORIGINS = ("API", "WEB", "SCHEDULER", "DEVELOPMENT", "WEBHOOK", "ACTOR", "CLI")
_ORIGIN_CUM_WEIGHTS = tuple(accumulate((40, 15, 30, 5, 5, 3, 2)))
_TERMINAL_MIX = ("SUCCEEDED", "FAILED", "TIMED-OUT", "ABORTED")
_TERMINAL_CUM_WEIGHTS = tuple(accumulate((86, 7, 3, 4)))
_EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "TIMED-OUT": 1, "ABORTED": 143}
_OPTIONS = {"build": "latest", "timeoutSecs": 3600, "memoryMbytes": 1024, "diskMbytes": 2048}
# The documented list-item fields in documented order; %-formatting is ~2x faster than json.dumps.
_ITEM_TEMPLATE = (
    '{"id":"%s","actId":"%s","actorTaskId":%s,"status":"%s","startedAt":"%s","finishedAt":%s,'
    '"buildId":"%s","buildNumber":"%s","meta":{"origin":"%s"},"usageTotalUsd":%r,'
    '"defaultKeyValueStoreId":"%s","defaultDatasetId":"%s","defaultRequestQueueId":"%s"}'
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _to_us(moment: datetime) -> int:
    # Naive datetimes count as UTC, the only zone the Apify docs speak of.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _to_ms(moment: datetime) -> int:
    return _to_us(moment) // 1000


@lru_cache(maxsize=8192)
def _hour_prefix(hour: int) -> str:
    return (_EPOCH + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:")


def _iso(ms: int) -> str:
    """Apify's timestamp format, e.g. 2019-11-30T07:34:24.202Z."""
    hour, rest = divmod(ms, _HOUR_MS)
    seconds, millis = divmod(rest, 1000)
    return f"{_hour_prefix(hour)}{_MIN_SEC[seconds]}.{_MILLIS[millis]}Z"


def _store_ids(run_id: str) -> tuple[str, str, str]:
    """Default KVS, dataset and queue ids: derived from the run id, so they cost no memory."""
    rev = run_id[::-1]
    return rev[5:] + rev[:5], rev[9:] + rev[:9], rev[13:] + rev[:13]


def _random_ids(rng: random.Random, count: int, taken: Container[str] = ()) -> list[str]:
    """`count` distinct 17-char alphanumeric ids, none of them in `taken`."""
    fresh: dict[str, None] = {}
    while len(fresh) < count:
        need = count - len(fresh)
        blob = rng.randbytes(17 * need).translate(_BYTE_TO_ID_CHAR).decode("ascii")
        batch = (blob[i : i + 17] for i in range(0, 17 * need, 17))
        fresh.update(dict.fromkeys(i for i in batch if i not in taken))
    return list(fresh)


def _check_status(status: str) -> None:
    if status not in ALL_STATUSES:
        raise ValueError(f"unknown run status {status!r}")


class _Run:
    """One well-formed run; slots keep a million of them affordable."""

    __slots__ = ("act", "finished", "id", "origin", "started", "status", "task", "usage")

    def __init__(
        self,
        run_id: str,
        started: int,
        finished: int | None,
        status: str,
        owner: tuple[dict, dict | None],
        origin: str,
    ) -> None:
        self.id, self.started, self.finished, self.status = run_id, started, finished, status
        self.act, self.task = owner
        self.origin = origin
        self.usage: float | None = None  # None derives it from the duration


class _Raw:
    """An arbitrary (maybe malformed) list item planted by tests; only /v2/actor-runs lists it."""

    __slots__ = ("body", "id", "started", "status")

    def __init__(self, item: object, started: int) -> None:
        # Encoding now fails early on unserialisable items and keeps them immutable.
        self.body = json.dumps(item, separators=(",", ":")).encode()
        fields = item if isinstance(item, dict) else {}
        run_id, status = fields.get("id"), fields.get("status")
        self.id = run_id if isinstance(run_id, str) else ""
        self.status = status if isinstance(status, str) and status in ALL_STATUSES else None
        self.started = started


_Record = _Run | _Raw
_started = attrgetter("started")
_order = attrgetter("started", "id")  # the listing order; attrgetter keeps bulk sorts in C


@lru_cache(maxsize=512)
def _index_keys(act_id: str | None, task_id: str | None, status: str | None) -> tuple:
    """The (scope, status) index lists a record belongs to; few combinations, so cached."""
    scopes = [scope for scope in ("", act_id, task_id) if scope is not None]
    return tuple((scope, s) for s in dict.fromkeys((None, status)) for scope in scopes)


def _merged_slice(spans: list[tuple[list, int, int]], start: int, stop: int) -> list:
    """Items start..stop of the union of sorted spans, found by bisecting time, not by walking."""
    low = min(records[lo].started for records, lo, _ in spans)
    high = max(records[hi - 1].started for records, _, hi in spans)
    while low < high:  # the earliest startedAt with more than `start` records at or before it
        mid = (low + high) // 2
        at_or_before = sum(
            bisect.bisect_right(r, mid, lo, hi, key=_started) - lo for r, lo, hi in spans
        )
        low, high = (low, mid) if at_or_before > start else (mid + 1, high)
    firsts = [bisect.bisect_left(r, low, lo, hi, key=_started) for r, lo, hi in spans]
    skip = start - sum(first - lo for first, (_, lo, _) in zip(firsts, spans, strict=True))
    want = skip + stop - start
    parts = [
        r[first : min(hi, first + want)] for first, (r, _, hi) in zip(firsts, spans, strict=True)
    ]
    return list(islice(heapq.merge(*parts, key=_order), skip, want))


class ApifyWorld:
    """The simulated account: actors, tasks and their runs, in memory."""

    def __init__(
        self,
        *,
        runs: int = 0,
        seed: int = 1,
        anchor: datetime | None = None,
        open_share: float = 0.02,
        span: timedelta = timedelta(days=90),
    ) -> None:
        self._rng = random.Random(seed)
        self.anchor = anchor or datetime.now(UTC).replace(microsecond=0)
        self._runs: dict[str, _Run] = {}
        # Sorted (startedAt, id) lists keyed by (scope, status): scope "" is the whole user, else
        # an actor or task id; status None holds every status.
        self._index: dict[tuple[str, str | None], list[_Record]] = {}
        self._resurrections: Counter[str] = Counter()
        self._details: dict[str, tuple[dict, tuple[str, ...]]] = {}  # set_detail's, per run
        anchor_ms, span_ms = _to_ms(self.anchor), span // timedelta(milliseconds=1)
        self._create_account(anchor_ms, span_ms)
        self._generate(runs, anchor_ms - span_ms, anchor_ms - _HOUR_MS, open_share)

    def _create_account(self, anchor_ms: int, span_ms: int) -> None:
        rng = self._rng
        names = rng.sample(_ACTOR_NAMES, rng.randint(3, 5))
        ids = _random_ids(rng, 1 + 4 * len(names) + len(_TASK_SUFFIXES))
        self.user_id = ids.pop()
        self.actors: list[dict] = [
            {"id": ids.pop(), "name": n, "username": USERNAME} for n in names
        ]
        self.tasks: list[dict] = []
        for i in range(rng.randint(2, len(_TASK_SUFFIXES))):
            actor = self.actors[i % len(self.actors)]
            name = f"{actor['name']}-{_TASK_SUFFIXES[i]}"
            self.tasks.append(
                {"id": ids.pop(), "name": name, "username": USERNAME, "actId": actor["id"]}
            )
        # Three builds per actor released across the span, so older runs report older builds.
        releases = [anchor_ms - span_ms * k // 3 for k in (4, 2, 1)]
        self._builds: dict[str, tuple[list[int], list[tuple[str, str]]]] = {}
        self._hourly_usd: dict[str, float] = {}
        for actor in self.actors:
            patch = rng.randint(1, 40)
            builds = [(ids.pop(), f"0.1.{patch + k}") for k in range(3)]
            self._builds[actor["id"]] = (releases, builds)
            self._hourly_usd[actor["id"]] = round(rng.uniform(0.05, 0.8), 3)
        # Task owners get half the actors' total weight, so about a third of runs are task runs.
        act_weights = [rng.uniform(1, 4) for _ in self.actors]
        task_weights = [rng.uniform(1, 4) for _ in self.tasks]
        scale = sum(act_weights) / 2 / sum(task_weights)
        self._owners = [(a, None) for a in self.actors] + [
            (self._actor_of(t), t) for t in self.tasks
        ]
        self._owner_weights = list(accumulate(act_weights + [w * scale for w in task_weights]))

    def _generate(self, count: int, low_ms: int, high_ms: int, open_share: float) -> None:
        rng = self._rng
        starts = sorted(low_ms + int(rng.random() * (high_ms - low_ms + 1)) for _ in range(count))
        ids = _random_ids(rng, count)
        owners = rng.choices(self._owners, cum_weights=self._owner_weights, k=count)
        origins = rng.choices(_ORIGINS, cum_weights=_ORIGIN_CUM_WEIGHTS, k=count)
        statuses = rng.choices(_TERMINAL_MIX, cum_weights=_TERMINAL_CUM_WEIGHTS, k=count)
        open_count = min(count, round(count * open_share))
        statuses[count - open_count :] = rng.choices(("RUNNING", "READY"), (4, 1), k=open_count)
        # Durations stay under an hour, so no generated run finishes after the anchor.
        expo = rng.expovariate
        ends = [
            None
            if status in OPEN_STATUSES
            else start + min(_HOUR_MS, 1000 + int(expo(1 / 600_000)))
            for start, status in zip(starts, statuses, strict=True)
        ]
        gc_was_enabled = gc.isenabled()
        gc.disable()  # a million new objects would trigger futile full collections (~25% slower)
        try:
            fields = zip(ids, starts, ends, statuses, owners, origins, strict=True)
            runs = [_Run(*run_fields) for run_fields in fields]
            runs.sort(key=_order)  # starts are sorted already; this only orders ties by id
            self._runs.update((run.id, run) for run in runs)
            for run in runs:
                for key in self._keys(run):
                    self._index.setdefault(key, []).append(run)
        finally:
            if gc_was_enabled:
                gc.enable()

    @staticmethod
    def _keys(record: _Record) -> tuple:
        if isinstance(record, _Raw):
            return _index_keys(None, None, record.status)
        return _index_keys(record.act["id"], record.task and record.task["id"], record.status)

    def _add(self, record: _Record) -> None:
        for key in self._keys(record):
            bisect.insort(self._index.setdefault(key, []), record, key=_order)

    def _remove(self, record: _Record) -> None:
        for key in self._keys(record):
            records = self._index[key]
            i = bisect.bisect_left(records, _order(record), key=_order)
            while records[i] is not record:  # steps past raw items that share the sort key
                i += 1
            del records[i]

    def _page(
        self,
        scope: str,
        statuses: Iterable[str] | None,
        after_ms: int | None,
        before_ms: int | None,
        desc: bool,
        offset: int,
        limit: int,
    ) -> tuple[int, list]:
        """(total, records) of one listing page, in O(log n + limit) for a single status list."""
        spans = []
        for status in sorted(statuses) if statuses else [None]:
            records = self._index.get((scope, status), [])
            lo = 0 if after_ms is None else bisect.bisect_left(records, after_ms, key=_started)
            hi = (
                len(records)
                if before_ms is None
                else bisect.bisect_right(records, before_ms, key=_started)
            )
            if lo < hi:
                spans.append((records, lo, hi))
        total = sum(hi - lo for _, lo, hi in spans)
        # A descending page is an ascending slice counted from the end, then reversed.
        start, stop = (total - offset - limit, total - offset) if desc else (offset, offset + limit)
        start, stop = max(0, start), min(total, stop)
        if start >= stop:
            return total, []
        if len(spans) == 1:
            records, lo, _ = spans[0]
            page = records[lo + start : lo + stop]
        else:
            page = _merged_slice(spans, start, stop)
        return total, page[::-1] if desc else page

    def _actor_of(self, task: dict) -> dict:
        return next(a for a in self.actors if a["id"] == task["actId"])

    def _lookup(self, entities: list[dict], ref: str) -> dict | None:
        """An actor or task by id or by Apify's `username~name` form."""
        return next((e for e in entities if ref in (e["id"], f"{e['username']}~{e['name']}")), None)

    def _usage(self, run: _Run) -> float:
        if run.usage is not None:
            return run.usage
        if run.finished is None:
            return 0.0  # open runs report no usage until they finish
        return round(
            max(0, run.finished - run.started) / _HOUR_MS * self._hourly_usd[run.act["id"]], 4
        )

    def _item_json(self, record: _Record) -> bytes:
        """One list item as JSON bytes (this is the single definition of a list item)."""
        if isinstance(record, _Raw):
            return record.body
        run = record
        releases, builds = self._builds[run.act["id"]]
        build_id, build_number = builds[max(0, bisect.bisect_right(releases, run.started) - 1)]
        return (_ITEM_TEMPLATE % (
            run.id, run.act["id"], f'"{run.task["id"]}"' if run.task else "null", run.status,
            _iso(run.started), "null" if run.finished is None else f'"{_iso(run.finished)}"',
            build_id, build_number, run.origin, self._usage(run), *_store_ids(run.id),
        )).encode()  # fmt: skip

    def _item(self, run: _Run) -> dict:
        return json.loads(self._item_json(run))

    def _detail(self, run: _Run) -> dict:
        item = self._item(run)
        millis = (_now_ms() if run.finished is None else run.finished) - run.started
        compute_units = round(millis / _HOUR_MS, 4)  # at 1 GB of memory, one CU per hour
        stats = {
            "inputBodyLen": 240, "restartCount": 0, "resurrectCount": self._resurrections[run.id],
            "durationMillis": millis, "runTimeSecs": millis / 1000, "computeUnits": compute_units,
            "memAvgBytes": 268_435_456, "memMaxBytes": 536_870_912, "cpuAvgUsage": 12.5,
        }  # fmt: skip
        detail = {
            **item, "userId": self.user_id, "exitCode": _EXIT_CODES.get(run.status),
            "stats": stats, "options": _OPTIONS, "usage": {"ACTOR_COMPUTE_UNITS": compute_units},
            "usageUsd": {"ACTOR_COMPUTE_UNITS": item["usageTotalUsd"]},
        }  # fmt: skip
        fields, omit = self._details.get(run.id, ({}, ()))
        detail.update(fields)
        for key in omit:
            detail.pop(key, None)
        return detail

    # The public API used by tests and demos to shape the world.

    def add_runs(
        self,
        count: int = 1,
        *,
        status: str = "RUNNING",
        started_at: datetime | None = None,
        actor_id: str | None = None,
        task_id: str | None = None,
    ) -> list[dict]:
        """New runs (startedAt default: now); all runs of one call share a given started_at."""
        _check_status(status)
        task = self._lookup(self.tasks, task_id) if task_id else None
        actor = self._lookup(self.actors, actor_id) if actor_id else None
        if task_id and task is None:
            raise KeyError(f"unknown task {task_id!r}")
        if actor_id and actor is None:
            raise KeyError(f"unknown actor {actor_id!r}")
        if task and actor and task["actId"] != actor["id"]:
            raise ValueError(f"task {task_id!r} does not belong to actor {actor_id!r}")
        rng, created = self._rng, []
        for run_id in _random_ids(rng, count, self._runs):
            started = _now_ms() if started_at is None else _to_ms(started_at)
            if task is not None:
                owner = (self._actor_of(task), task)
            elif actor is not None:
                owner = (actor, None)
            else:
                owner = rng.choices(self._owners, cum_weights=self._owner_weights)[0]
            finished = started + rng.randint(1000, 600_000) if status in TERMINAL_STATUSES else None
            origin = rng.choices(_ORIGINS, cum_weights=_ORIGIN_CUM_WEIGHTS)[0]
            run = self._runs[run_id] = _Run(run_id, started, finished, status, owner, origin)
            self._add(run)
            created.append(self._item(run))
        return created

    def set_status(
        self,
        run_id: str,
        status: str,
        *,
        finished_at: datetime | None = None,
        usage_total_usd: float | None = None,
    ) -> dict:
        """Changes a run; an open status clears finishedAt, as Apify resurrects finished runs."""
        _check_status(status)
        run = self._runs[run_id]
        self._remove(run)  # the status is part of the index keys
        if status in OPEN_STATUSES:
            self._resurrections[run_id] += run.status in TERMINAL_STATUSES
            run.finished = None
        else:
            run.finished = (
                max(_now_ms(), run.started) if finished_at is None else _to_ms(finished_at)
            )
        run.status = status
        if usage_total_usd is not None:
            run.usage = float(usage_total_usd)
        self._add(run)
        return self._item(run)

    def finish_open(self, status: str = "SUCCEEDED") -> int:
        """Finishes every open run with `status`; returns how many there were."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"{status!r} is not a terminal status")
        runs = [
            r
            for s in sorted(OPEN_STATUSES)
            for r in self._index.get(("", s), ())
            if isinstance(r, _Run)
        ]
        for run in runs:
            self.set_status(run.id, status)
        return len(runs)

    def delete_run(self, run_id: str) -> None:
        """Removes a run entirely, as Apify's data retention does."""
        self._remove(self._runs.pop(run_id))
        self._resurrections.pop(run_id, None)
        self._details.pop(run_id, None)

    def set_detail(
        self, run_id: str, fields: Mapping[str, object] | None = None, *, omit: Iterable[str] = ()
    ) -> None:
        """What GET /v2/actor-runs/{runId} says beside the generated fields (e.g. statusMessage):
        `fields` over them, the keys in `omit` left out. Each call replaces the previous one."""
        if run_id not in self._runs:
            raise KeyError(f"unknown run {run_id!r}")
        self._details[run_id] = (dict(fields or {}), tuple(omit))

    def add_raw_item(self, item: object, *, started_at: datetime) -> None:
        """Plants an arbitrary item in the user listing, sorted as if it started at `started_at`."""
        self._add(_Raw(item, _to_ms(started_at)))

    def list_items(self) -> list[dict]:
        """Every well-formed run as a list item, ascending by (startedAt, id)."""
        return [self._item(r) for r in self._index.get(("", None), ()) if isinstance(r, _Run)]

    def get(self, run_id: str) -> dict | None:
        """One run as GET /v2/actor-runs/{runId} returns it, or None."""
        run = self._runs.get(run_id)
        return None if run is None else self._detail(run)


# Injected failures by status: Apify's error type and message.
_FAILURES = {
    429: ("rate-limit-exceeded", "You have exceeded the rate limit. Please slow down."),
    500: ("internal-server-error", "Internal server error. Please try again later."),
    502: ("bad-gateway", "Bad gateway. Please try again later."),
    503: ("service-unavailable", "Service is temporarily unavailable. Please try again later."),
}


class _InvalidInput(Exception):
    """A query parameter the real API would reject with 400 invalid-input."""


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


def _integer(query: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or int(raw) < minimum:
        raise _InvalidInput(f"Parameter '{name}' must be an integer >= {minimum}, got {raw!r}.")
    return int(raw)


def _boolean(query: Mapping[str, str], name: str) -> bool:
    raw = query.get(name, "0")
    if raw not in ("1", "true", "0", "false"):
        raise _InvalidInput(f"Parameter '{name}' must be 1, true, 0 or false, got {raw!r}.")
    return raw in ("1", "true")


def _statuses(query: Mapping[str, str]) -> frozenset[str] | None:
    raw = query.get("status")
    if raw is None:
        return None
    for status in raw.split(","):
        if status not in ALL_STATUSES:
            allowed = ", ".join(sorted(ALL_STATUSES))
            raise _InvalidInput(
                f"Parameter 'status' has unknown status {status!r} (allowed: {allowed})."
            )
    return frozenset(raw.split(","))


def _instant_us(query: Mapping[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        return _to_us(datetime.fromisoformat(raw))
    except ValueError:
        raise _InvalidInput(
            f"Parameter '{name}' must be an ISO 8601 datetime (UTC), got {raw!r}."
        ) from None


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answering_invalid_input(handler: _Handler) -> _Handler:
    """Turns a rejected query parameter into Apify's 400 invalid-input answer."""

    @wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except _InvalidInput as exc:
            return _error(400, "invalid-input", str(exc))

    return answer


class ApifyEndpoints:
    """Apify's run endpoints (GET only) and the demo controls, served over an ApifyWorld."""

    def __init__(self, world: ApifyWorld) -> None:
        self.world = world

    def routes(self) -> list[tuple[str, str, _Handler, str]]:
        """(method, path, handler, route name) of every endpoint."""
        return [
            (method, path, _answering_invalid_input(handler), name)
            for method, path, handler, name in (
                ("GET", "/v2/actor-runs", self._list_user_runs, "apify.list_user_runs"),
                ("GET", "/v2/acts/{actorId}/runs", self._list_actor_runs, "apify.list_actor_runs"),
                (
                    "GET",
                    "/v2/actor-tasks/{taskId}/runs",
                    self._list_task_runs,
                    "apify.list_task_runs",
                ),
                ("GET", "/v2/actor-runs/{runId}", self._get_run, "apify.get_run"),
                # Controls for demos driven from a shell; they take the same bearer token.
                ("POST", "/_simulator/apify/runs", self._add_runs, "control.add_runs"),
                ("POST", "/_simulator/apify/finish", self._finish_open, "control.finish_open"),
            )
        ]

    @staticmethod
    def unauthorized() -> web.Response:
        return _error(401, "token-not-valid", "Authentication token is not valid.")

    @staticmethod
    def unrouted(exc: web.HTTPException) -> web.Response:
        kind = "page-not-found" if exc.status == 404 else "method-not-allowed"
        return _error(exc.status, kind, exc.reason)

    @staticmethod
    def failure(status: int) -> web.Response:
        """An injected rate-limit or server error (worker.simulator.faults)."""
        kind, message = _FAILURES[status]
        return _error(status, kind, message)

    async def _list_user_runs(self, request: web.Request) -> web.Response:
        return self._listing(request, "", time_filter=True)

    async def _list_actor_runs(self, request: web.Request) -> web.Response:
        actor = self.world._lookup(self.world.actors, request.match_info["actorId"])
        if actor is None:
            return _error(404, "record-not-found", "Actor was not found")
        return self._listing(request, actor["id"], time_filter=True)

    async def _list_task_runs(self, request: web.Request) -> web.Response:
        task = self.world._lookup(self.world.tasks, request.match_info["taskId"])
        if task is None:
            return _error(404, "record-not-found", "Actor task was not found")
        # This endpoint has no startedAfter/startedBefore, so they are ignored like unknown params.
        return self._listing(request, task["id"], time_filter=False)

    async def _get_run(self, request: web.Request) -> web.Response:
        detail = self.world.get(request.match_info["runId"])
        if detail is None:
            return _error(404, "record-not-found", "Actor run was not found")
        return web.json_response({"data": detail})

    async def _add_runs(self, request: web.Request) -> web.Response:
        count = _integer(request.query, "count", 1, 1)
        status = request.query.get("status", "RUNNING")
        if status not in ALL_STATUSES:
            raise _InvalidInput(f"status {status!r} is not an Actor job status")
        added = self.world.add_runs(min(count, 100_000), status=status)
        return web.json_response({"data": {"ids": [item["id"] for item in added]}}, status=201)

    async def _finish_open(self, request: web.Request) -> web.Response:
        status = request.query.get("status", "SUCCEEDED")
        if status not in TERMINAL_STATUSES:
            raise _InvalidInput(f"status {status!r} is not a terminal status")
        return web.json_response({"data": {"finished": self.world.finish_open(status)}})

    def _listing(self, request: web.Request, scope: str, *, time_filter: bool) -> web.Response:
        query = request.query
        offset = _integer(query, "offset", 0, 0)
        limit = min(_integer(query, "limit", 1000, 1), 1000)
        desc = _boolean(query, "desc")
        statuses = _statuses(query)
        after_us = _instant_us(query, "startedAfter") if time_filter else None
        before_us = _instant_us(query, "startedBefore") if time_filter else None
        # Runs start on whole milliseconds, so inclusive sub-millisecond bounds round inwards.
        after_ms = None if after_us is None else -(-after_us // 1000)
        before_ms = None if before_us is None else before_us // 1000
        total, records = self.world._page(scope, statuses, after_ms, before_ms, desc, offset, limit)
        items = b",".join(self.world._item_json(r) for r in records)
        body = b'{"data":{"total":%d,"offset":%d,"limit":%d,"desc":%s,"count":%d,"items":[%s]}}' % (
            total, offset, limit, b"true" if desc else b"false", len(records), items,
        )  # fmt: skip
        return web.Response(body=body, content_type="application/json")
