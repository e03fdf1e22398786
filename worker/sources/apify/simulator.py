"""The simulated Apify API v2: an in-memory account (ApifyWorld) and its run endpoints.

It follows Apify's "Get user runs list" and "Get list of runs" docs and what the real service is
observed to do beyond them (upstream-docs/apify-observed-behaviour.md): usage that settles a few
seconds after a run finishes, resurrected runs, list items that omit documented fields or carry
undocumented ones, the single run's extra fields, an open set of origins, per-resource rate
limits, and the real error types. Everything it generates is deterministic given the seed (and
the clock it is given). worker.simulator.Simulator serves it over HTTP.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import heapq
import json
import math
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache, wraps
from itertools import accumulate, islice
from operator import attrgetter
from typing import Any, ClassVar

from aiohttp import web

from worker.simulator.contract import Endpoints, Mistyping
from worker.simulator.faults import epoch_ms, listed, mistyped_id

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "TIMED-OUT", "ABORTED"})
OPEN_STATUSES = frozenset({"READY", "RUNNING", "TIMING-OUT", "ABORTING"})
ALL_STATUSES = TERMINAL_STATUSES | OPEN_STATUSES
USERNAME = "janedoe"
# meta.origin is an open set: these are the ones known today, and UNKNOWN_ORIGIN stands for one
# that appears later (any client must take it as it is).
KNOWN_ORIGINS = (
    "DEVELOPMENT", "WEB", "API", "SCHEDULER", "TEST", "WEBHOOK", "ACTOR", "CLI", "STANDBY", "CI",
    "MCP",
)  # fmt: skip
UNKNOWN_ORIGIN = "AGENT"
RATE_LIMIT = 60  # Apify's default requests per second per resource

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
_ORIGINS = ("API", "WEB", "SCHEDULER", "DEVELOPMENT", "WEBHOOK", "ACTOR", "CLI", "TEST",
            "STANDBY", "CI", "MCP", UNKNOWN_ORIGIN)  # fmt: skip
_ORIGIN_CUM_WEIGHTS = tuple(accumulate((400, 150, 300, 50, 50, 30, 20, 5, 5, 5, 3, 2)))
_TERMINAL_MIX = ("SUCCEEDED", "FAILED", "TIMED-OUT", "ABORTED")
_TERMINAL_CUM_WEIGHTS = tuple(accumulate((86, 7, 3, 4)))
_EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "TIMED-OUT": 1, "ABORTED": 143}
_STATUS_MESSAGES = {
    "READY": "Waiting for a server to start the run",
    "RUNNING": "Crawled {n} of {m} pages",
    "TIMING-OUT": "Timing out...",
    "ABORTING": "Aborting...",
    "SUCCEEDED": "Finished! Total {m} requests: {m} succeeded, 0 failed.",
    "FAILED": "The Actor process exited with code 1: Error: net::ERR_CONNECTION_RESET",
    "TIMED-OUT": "The Actor run timed out after 3600 seconds",
    "ABORTED": "The Actor run was aborted by the user",
}
_OPTIONS = {"build": "latest", "timeoutSecs": 3600, "memoryMbytes": 1024, "diskMbytes": 2048}
_CU_USD = 0.4  # the price of one compute unit, which turns a run's cost into its compute units
# The usage items a run reports; only compute units cost anything here.
_USAGE_ITEMS = (
    "ACTOR_COMPUTE_UNITS", "DATASET_READS", "DATASET_WRITES", "KEY_VALUE_STORE_READS",
    "KEY_VALUE_STORE_WRITES", "KEY_VALUE_STORE_LISTS", "REQUEST_QUEUE_READS",
    "REQUEST_QUEUE_WRITES", "DATA_TRANSFER_INTERNAL_GBYTES", "DATA_TRANSFER_EXTERNAL_GBYTES",
    "PROXY_RESIDENTIAL_TRANSFER_GBYTES", "PROXY_SERPS",
)  # fmt: skip
_USER_AGENTS = (
    "ApifyClient/2.9.3 (linux; Node/v20.11.0); isAtHome/false",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari",
    "apify-client-python/1.8.1 (linux; Python/3.12.3); isAtHome/false",
    "curl/8.5.0",
)
# The list-item fields: the documented ones in documented order (with `userId` and
# `buildNumberInt`, which recorded items carry too); %-formatting is ~2x faster than json.dumps.
# The actorTaskId and usageTotalUsd parts come formatted, or empty where the item omits them.
_ITEM_TEMPLATE = (
    '{"id":"%s","actId":"%s","userId":"%s",%s"status":"%s","startedAt":"%s","finishedAt":%s,'
    '"buildId":"%s","buildNumber":"%s","buildNumberInt":%d,"meta":{"origin":"%s"},%s'
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


def _js_text(number: float) -> str:
    """A number as JavaScript's JSON.stringify writes it: whole numbers without a fraction."""
    if number.is_integer() and abs(number) < 2**53:
        return str(int(number))
    return repr(number)


def _js(number: float) -> float | int:
    """A number as a JavaScript service's JSON parses back: an int when it is whole."""
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def _store_ids(run_id: str) -> tuple[str, str, str]:
    """Default KVS, dataset and queue ids: derived from the run id, so they cost no memory."""
    rev = run_id[::-1]
    return rev[5:] + rev[:5], rev[9:] + rev[:9], rev[13:] + rev[:13]


def _build_number_int(build_number: str) -> int:
    """`buildNumberInt` of a "major.minor.build" number. The encoding (major * 10^8 + minor * 10^5
    + build) is an inference: recorded items only show that the field is an integer."""
    major, minor, build = (int(part) for part in build_number.split("."))
    return major * 100_000_000 + minor * 100_000 + build


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


def _share(value: float, name: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within [0, 1], got {value!r}")
    return value


# The actor a run is of, and the task when it was started through one.
_Owner = tuple[dict[str, Any], dict[str, Any] | None]


class _Run:
    """One well-formed run; slots keep a million of them affordable."""

    __slots__ = ("act", "finished", "id", "origin", "started", "status", "task", "usage")

    def __init__(
        self,
        run_id: str,
        started: int,
        finished: int | None,
        status: str,
        owner: _Owner,
        origin: str,
    ) -> None:
        self.id, self.started, self.finished, self.status = run_id, started, finished, status
        self.act, self.task = owner
        self.origin = origin
        self.usage: float | None = None  # the final figure when set; None derives it


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
def _index_keys(
    act_id: str | None, task_id: str | None, status: str | None
) -> tuple[tuple[str, str | None], ...]:
    """The (scope, status) index lists a record belongs to; few combinations, so cached."""
    scopes = [scope for scope in ("", act_id, task_id) if scope is not None]
    return tuple((scope, s) for s in dict.fromkeys((None, status)) for scope in scopes)


def _merged_slice(
    spans: list[tuple[list[_Record], int, int]], start: int, stop: int
) -> list[_Record]:
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


class RateLimiter:
    """Apify's per-resource rate limit: at most `limit` requests in any sliding one-second window.

    A resource is one object's endpoint: the run list of the user, of one actor or of one task,
    or one run (`/v2/actor-runs/{runId}`). Each resource keeps the arrival times of the requests
    it let through in the last second; a request that finds `limit` of them there is refused
    (HTTP 429) and is not added, so a client that keeps hammering still gets `limit` a second
    through. `limit` None lets everything through but still counts. The per-user limit (250,000 a
    minute over all resources) is not simulated. `clock` gives seconds (monotonic) and is
    independent of the world's clock, so a frozen world clock does not freeze the window.
    """

    def __init__(self, limit: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"rate_limit must be at least 1 or None, got {limit!r}")
        self.limit = limit
        self.clock = clock
        self.requests: Counter[str] = Counter()  # every request asked of a resource
        self.refused: Counter[str] = Counter()  # the 429s a resource answered
        self._windows: dict[str, deque[float]] = {}

    @property
    def refused_total(self) -> int:
        """How many requests were answered 429 over all resources."""
        return self.refused.total()

    def admit(self, resource: str) -> bool:
        """Counts a request to `resource`; False if it is over the limit (answer it 429)."""
        self.requests[resource] += 1
        if self.limit is None:
            return True
        now = self.clock()
        window = self._windows.get(resource)
        if window is None:
            if len(self._windows) >= 4096:  # every single run is a resource: forget idle ones
                self._windows = {k: w for k, w in self._windows.items() if w[-1] > now - 1.0}
            window = self._windows[resource] = deque()
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= self.limit:
            self.refused[resource] += 1
            return False
        window.append(now)
        return True

    def reset(self) -> None:
        """Forgets the windows and the counts."""
        self.requests.clear()
        self.refused.clear()
        self._windows.clear()


class ApifyWorld:
    """The simulated account: actors, tasks and their runs, in memory.

    Options beyond the generated history (runs, seed, anchor, open_share, span):
    - clock: the world's time, epoch milliseconds (default: real time). New runs start, runs
      finish, open runs' durations grow and usage settles by it. The default anchor is its now.
    - settle_seconds: how long a finished run's usage and cost stay preliminary (lower than the
      final figure) after its finishedAt; 0 settles at once.
    - omit_share: the share of runs whose list items omit `usageTotalUsd`, `actorTaskId` or both
      (a seeded, stable choice per run); the single run always has them. Default 0: the existing
      product tests index items by those keys.
    - rate_limit: requests per second per resource (RateLimiter), None for no limit;
      rate_clock: the limiter's monotonic clock in seconds.
    - live_auth_error: a wrong token gets the live API's 401 `user-or-token-not-found` "User was
      not found or authentication token is not valid" instead of the simulator's older 401
      `token-not-valid` "Authentication token is not valid." (kept by default because an existing
      product test looks for that message). A missing token is 401 `token-not-provided` either way.
    - detail_meta: the single run's `meta` carries `userAgent` and `clientIp` (and `scheduleId`,
      `scheduledAt` for scheduled runs) beyond the list item's `origin`. Off by default: the
      product tests compare a run read one by one with the list item, `meta` included.
    - forbidden: actors, tasks (by id or `username~name`) and runs the token may not read: their
      endpoints answer 403 insufficient-permissions. `self.forbidden` can be changed later.
    """

    def __init__(
        self,
        *,
        runs: int = 0,
        seed: int = 1,
        anchor: datetime | None = None,
        open_share: float = 0.02,
        span: timedelta = timedelta(days=90),
        clock: Callable[[], int] | None = None,
        settle_seconds: float = 10.0,
        omit_share: float = 0.0,
        rate_limit: int | None = RATE_LIMIT,
        rate_clock: Callable[[], float] = time.monotonic,
        live_auth_error: bool = False,
        detail_meta: bool = False,
        forbidden: Iterable[str] = (),
    ) -> None:
        if settle_seconds < 0:
            raise ValueError(f"settle_seconds must not be negative, got {settle_seconds!r}")
        self._rng = random.Random(seed)
        self._seed = seed
        self._clock = clock or _now_ms
        self._settle_ms = round(settle_seconds * 1000)
        self.omit_share = _share(omit_share, "omit_share")
        self.rate_limiter = RateLimiter(rate_limit, rate_clock)
        # Whether answers state the limit in X-RateLimit-Limit, as Apify's do; off, a client can
        # learn it only from its 429s.
        self.stamp_rate_limit = True
        self.live_auth_error = live_auth_error
        self.detail_meta = detail_meta
        self.forbidden: set[str] = set(forbidden)
        self.anchor = anchor or datetime.fromtimestamp(self._clock() // 1000, UTC)
        self._runs: dict[str, _Run] = {}
        # Sorted (startedAt, id) lists keyed by (scope, status): scope "" is the whole user, else
        # an actor or task id; status None holds every status.
        self._index: dict[tuple[str, str | None], list[_Record]] = {}
        self._resurrections: Counter[str] = Counter()
        # set_detail's, per run
        self._details: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {}
        # Runs that finished lately enough that their usage may still be preliminary.
        self._settling: dict[str, None] = {}
        self._carried: dict[str, float] = {}  # the usage a resurrected run had when it reopened
        self._messages: dict[str, tuple[str, bool]] = {}  # statusMessage set by tests
        anchor_ms, span_ms = _to_ms(self.anchor), span // timedelta(milliseconds=1)
        self._create_account(anchor_ms, span_ms)
        self._generate(runs, anchor_ms - span_ms, anchor_ms - _HOUR_MS, open_share)

    def _create_account(self, anchor_ms: int, span_ms: int) -> None:
        rng = self._rng
        names = rng.sample(_ACTOR_NAMES, rng.randint(3, 5))
        ids = _random_ids(rng, 1 + 4 * len(names) + len(_TASK_SUFFIXES))
        self.user_id = ids.pop()
        self.actors: list[dict[str, Any]] = [
            {"id": ids.pop(), "name": n, "username": USERNAME} for n in names
        ]
        self.tasks: list[dict[str, Any]] = []
        for i in range(rng.randint(2, len(_TASK_SUFFIXES))):
            actor = self.actors[i % len(self.actors)]
            name = f"{actor['name']}-{_TASK_SUFFIXES[i]}"
            self.tasks.append(
                {"id": ids.pop(), "name": name, "username": USERNAME, "actId": actor["id"]}
            )
        # Three builds per actor released across the span, so older runs report older builds.
        releases = [anchor_ms - span_ms * k // 3 for k in (4, 2, 1)]
        self._builds: dict[str, tuple[list[int], list[tuple[str, str, int]]]] = {}
        self._hourly_usd: dict[str, float] = {}
        for actor in self.actors:
            patch = rng.randint(1, 40)
            numbers = [f"0.1.{patch + k}" for k in range(3)]
            builds = [(ids.pop(), n, _build_number_int(n)) for n in numbers]
            self._builds[actor["id"]] = (releases, builds)
            self._hourly_usd[actor["id"]] = round(rng.uniform(0.05, 0.8), 3)
        # Task owners get half the actors' total weight, so about a third of runs are task runs.
        act_weights = [rng.uniform(1, 4) for _ in self.actors]
        task_weights = [rng.uniform(1, 4) for _ in self.tasks]
        scale = sum(act_weights) / 2 / sum(task_weights)
        self._owners: list[_Owner] = [(a, None) for a in self.actors] + [
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
        # Only runs that started within an hour of the settling horizon can still be settling.
        horizon = self._clock() - self._settle_ms
        if self._settle_ms and runs:
            first = bisect.bisect_left(runs, horizon - _HOUR_MS, key=_started)
            for run in runs[first:]:
                if run.finished is not None and run.finished > horizon:
                    self._settling[run.id] = None

    @staticmethod
    def _keys(record: _Record) -> tuple[tuple[str, str | None], ...]:
        if isinstance(record, _Raw):
            return _index_keys(None, None, record.status)
        task_id = None if record.task is None else record.task["id"]
        return _index_keys(record.act["id"], task_id, record.status)

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
    ) -> tuple[int, list[_Record]]:
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

    def _actor_of(self, task: dict[str, Any]) -> dict[str, Any]:
        return next(a for a in self.actors if a["id"] == task["actId"])

    def _lookup(self, entities: list[dict[str, Any]], ref: str) -> dict[str, Any] | None:
        """An actor or task by id or by Apify's `username~name` form."""
        return next((e for e in entities if ref in (e["id"], f"{e['username']}~{e['name']}")), None)

    def _fraction(self, salt: str, run_id: str) -> float:
        """A seeded number in [0, 1) fixed for the run: per-run traits that cost no memory."""
        digest = hashlib.blake2b(f"{self._seed}\0{salt}\0{run_id}".encode(), digest_size=8)
        return int.from_bytes(digest.digest(), "big") / 2**64

    def _final_usage(self, run: _Run) -> float:
        """The run's settled cost in USD (what an open run has run up so far: 0, or what it had
        when it was resurrected)."""
        if run.usage is not None:
            return run.usage
        if run.finished is None:
            return self._carried.get(run.id, 0.0)
        return round(
            max(0, run.finished - run.started) / _HOUR_MS * self._hourly_usd[run.act["id"]], 4
        )

    def _is_settling(self, run: _Run) -> bool:
        return (
            run.id in self._settling
            and run.finished is not None
            and self._clock() < run.finished + self._settle_ms
        )

    def _usage(self, run: _Run) -> float:
        """The cost served now: preliminary (between half and 95% of the final figure, rounded
        down) while the run settles, final afterwards."""
        final = self._final_usage(run)
        if not self._is_settling(run):
            return final
        share = 0.5 + 0.45 * self._fraction("settle", run.id)
        return math.floor(final * share * 10_000) / 10_000

    def _finishing(self, run: _Run) -> None:
        """Bookkeeping for a run that has just become finished."""
        self._carried.pop(run.id, None)
        if self._settle_ms:
            self._settling[run.id] = None
            if len(self._settling) > 10_000:
                self.unsettled()  # prunes the ones that have settled

    def _build(self, run: _Run) -> tuple[str, str, int]:
        releases, builds = self._builds[run.act["id"]]
        return builds[max(0, bisect.bisect_right(releases, run.started) - 1)]

    def _item_json(self, record: _Record, *, complete: bool = False) -> bytes:
        """One list item as JSON bytes (this is the single definition of a list item); complete
        keeps the fields a list item may omit, as the single run does."""
        if isinstance(record, _Raw):
            return record.body
        run = record
        build_id, build_number, build_int = self._build(run)
        omit_task = omit_usage = False
        if self.omit_share and not complete and self._fraction("omit", run.id) < self.omit_share:
            which = self._fraction("omit-which", run.id)
            omit_task, omit_usage = which < 2 / 3, which >= 1 / 3
        task_part = (
            "" if omit_task
            else f'"actorTaskId":"{run.task["id"]}",' if run.task else '"actorTaskId":null,'
        )  # fmt: skip
        usage_part = "" if omit_usage else f'"usageTotalUsd":{_js_text(self._usage(run))},'
        return (_ITEM_TEMPLATE % (
            run.id, run.act["id"], self.user_id, task_part, run.status, _iso(run.started),
            "null" if run.finished is None else f'"{_iso(run.finished)}"',
            build_id, build_number, build_int, run.origin, usage_part, *_store_ids(run.id),
        )).encode()  # fmt: skip

    def _item(self, run: _Run) -> dict[str, Any]:
        item: dict[str, Any] = json.loads(self._item_json(run))
        return item

    def _status_message(self, run: _Run) -> tuple[str, bool]:
        if run.id in self._messages:
            return self._messages[run.id]
        pages = 20 + int(self._fraction("pages", run.id) * 480)
        done = pages * (self._clock() - run.started) // (10 * 60_000) if run.finished is None else 0
        text = _STATUS_MESSAGES[run.status].format(n=max(0, min(pages - 1, done)), m=pages)
        return text, run.status in TERMINAL_STATUSES

    def _meta(self, run: _Run) -> dict[str, Any]:
        meta: dict[str, Any] = {"origin": run.origin}
        if not self.detail_meta:
            return meta
        pick = self._fraction("meta", run.id)
        from_console = run.origin in ("WEB", "DEVELOPMENT", "TEST")
        meta["clientIp"] = None if run.origin in ("SCHEDULER", "ACTOR", "WEBHOOK") else (
            f"203.0.113.{int(pick * 254) + 1}"
        )  # fmt: skip
        meta["userAgent"] = _USER_AGENTS[1 if from_console else int(pick * len(_USER_AGENTS))]
        if run.origin == "SCHEDULER":
            meta["scheduleId"] = _store_ids(run.id)[0][::-1]
            meta["scheduledAt"] = _iso(run.started - 1000 - int(pick * 2000))
        return meta

    def _detail(self, run: _Run) -> dict[str, Any]:
        """The run as GET /v2/actor-runs/{runId} serves it."""
        item = json.loads(self._item_json(run, complete=True))
        usd = float(item["usageTotalUsd"])
        millis = max(0, (self._clock() if run.finished is None else run.finished) - run.started)
        compute_units = round(usd / _CU_USD, 6)
        message, message_is_terminal = self._status_message(run)
        kvs, dataset, queue = _store_ids(run.id)
        stats = {
            "inputBodyLen": 240, "migrationCount": 0, "rebootCount": 0, "restartCount": 0,
            "resurrectCount": self._resurrections[run.id], "durationMillis": millis,
            "runTimeSecs": _js(millis / 1000), "computeUnits": _js(compute_units),
            "memAvgBytes": 268_435_456, "memMaxBytes": 536_870_912, "memCurrentBytes": 0,
            "cpuAvgUsage": 12.5, "cpuMaxUsage": 98.25, "cpuCurrentUsage": 0,
            "netRxBytes": 1_048_576, "netTxBytes": 262_144,
        }  # fmt: skip
        usage: dict[str, float] = dict.fromkeys(_USAGE_ITEMS, 0)
        usage_usd: dict[str, float] = dict.fromkeys(_USAGE_ITEMS, 0)
        usage["ACTOR_COMPUTE_UNITS"] = _js(compute_units)
        usage_usd["ACTOR_COMPUTE_UNITS"] = _js(usd)
        detail = {
            **item,
            "meta": self._meta(run),
            "statusMessage": message,
            "isStatusMessageTerminal": message_is_terminal,
            "stats": stats,
            "options": dict(_OPTIONS),
            "usage": usage,
            "usageUsd": usage_usd,
            "platformUsageBillingModel": "USER",
            "generalAccess": "FOLLOW_USER_SETTING",
            "storageIds": {
                "datasets": {"default": dataset},
                "keyValueStores": {"default": kvs},
                "requestQueues": {"default": queue},
            },
            "containerUrl": f"https://{run.id.lower()[:12]}.runs.apify.net",
            "consoleUrl": f"https://console.apify.com/view/runs/{run.id}",
        }
        if run.status in TERMINAL_STATUSES:  # absent while the run is open
            detail["exitCode"] = _EXIT_CODES[run.status]
        fields, omit = self._details.get(run.id, ({}, ()))
        detail.update(fields)
        for key in omit:
            detail.pop(key, None)
        return detail

    # The public API used by tests and demos to shape the world.

    def endpoints(self) -> ApifyEndpoints:
        """Its HTTP endpoints, as worker.simulator.Simulator serves them."""
        return ApifyEndpoints(self)

    def now(self) -> datetime:
        """The world's clock as a datetime (UTC, millisecond precision)."""
        return _EPOCH + timedelta(milliseconds=self._clock())

    def add_runs(
        self,
        count: int = 1,
        *,
        status: str = "RUNNING",
        started_at: datetime | None = None,
        actor_id: str | None = None,
        task_id: str | None = None,
    ) -> list[dict[str, Any]]:
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
            started = self._clock() if started_at is None else _to_ms(started_at)
            owner: _Owner
            if task is not None:
                owner = (self._actor_of(task), task)
            elif actor is not None:
                owner = (actor, None)
            else:
                owner = rng.choices(self._owners, cum_weights=self._owner_weights)[0]
            finished = started + rng.randint(1000, 600_000) if status in TERMINAL_STATUSES else None
            origin = rng.choices(_ORIGINS, cum_weights=_ORIGIN_CUM_WEIGHTS)[0]
            run = self._runs[run_id] = _Run(run_id, started, finished, status, owner, origin)
            if finished is not None:
                self._finishing(run)
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
    ) -> dict[str, Any]:
        """Changes a run and returns its list item. A terminal status sets finishedAt (default:
        now, never before startedAt), starts the usage's settling and drops exitCode's absence;
        an open status on a finished run resurrects it (finishedAt null, resurrectCount + 1, the
        usage it had stays until it finishes again). usage_total_usd is the final figure."""
        _check_status(status)
        run = self._runs[run_id]
        self._remove(run)  # the status is part of the index keys
        if status in OPEN_STATUSES:
            if run.status in TERMINAL_STATUSES:
                self._resurrections[run_id] += 1
                self._carried[run_id] = self._final_usage(run)
            run.finished = None
            self._settling.pop(run_id, None)
        else:
            run.finished = (
                max(self._clock(), run.started) if finished_at is None else _to_ms(finished_at)
            )
            self._finishing(run)
        run.status = status
        if usage_total_usd is not None:
            run.usage = float(usage_total_usd)
        self._add(run)
        return self._item(run)

    def resurrect(self, run_id: str) -> dict[str, Any]:
        """Puts a finished run back to RUNNING, as Apify does at any age: the same id and
        startedAt, finishedAt null, stats.resurrectCount + 1, no exitCode. It finishes again with
        set_status (or finish_open). Returns its list item; ValueError if the run is open."""
        run = self._runs[run_id]
        if run.status not in TERMINAL_STATUSES:
            raise ValueError(f"run {run_id!r} is {run.status}, not finished")
        return self.set_status(run_id, "RUNNING")

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

    def set_status_message(self, run_id: str, text: str | None, *, terminal: bool = False) -> None:
        """Sets the single run's `statusMessage` (any characters: NUL, lone surrogates...) and
        `isStatusMessageTerminal`; it stays through status changes until set again. None goes
        back to the message the status implies."""
        if run_id not in self._runs:
            raise KeyError(run_id)
        if text is None:
            self._messages.pop(run_id, None)
        else:
            self._messages[run_id] = (text, terminal)

    def settle_all(self) -> int:
        """Settles every preliminary usage figure now, whatever the clock says; returns how many
        runs were still settling."""
        settling = self.unsettled()
        self._settling.clear()
        return len(settling)

    def unsettled(self) -> list[str]:
        """The ids of finished runs whose usage is still preliminary, in no particular order."""
        settling = [run_id for run_id in self._settling if self._is_settling(self._runs[run_id])]
        self._settling = dict.fromkeys(settling)
        return settling

    def delete_run(self, run_id: str) -> None:
        """Removes a run entirely, as Apify's data retention does."""
        self._remove(self._runs.pop(run_id))
        self._forget(run_id)

    def _forget(self, run_id: str) -> None:
        for table in (
            self._resurrections,
            self._settling,
            self._carried,
            self._messages,
            self._details,
        ):
            table.pop(run_id, None)

    def delete_started_before(self, moment: datetime) -> int:
        """Data retention: deletes every run (and planted raw item) that started before `moment`,
        so the offsets of everything after them shift down. Returns how many runs went."""
        cut = _to_ms(moment)
        for records in self._index.values():
            del records[: bisect.bisect_left(records, cut, key=_started)]
        gone = [run_id for run_id, run in self._runs.items() if run.started < cut]
        for run_id in gone:
            del self._runs[run_id]
            self._forget(run_id)
        return len(gone)

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

    def list_items(self) -> list[dict[str, Any]]:
        """Every well-formed run as a list item now (omissions, settling usage and all),
        ascending by (startedAt, id): the truth the list endpoints serve."""
        return [self._item(r) for r in self._index.get(("", None), ()) if isinstance(r, _Run)]

    def get(self, run_id: str) -> dict[str, Any] | None:
        """One run as GET /v2/actor-runs/{runId} returns it now, or None."""
        run = self._runs.get(run_id)
        return None if run is None else self._detail(run)

    def details(self) -> list[dict[str, Any]]:
        """Every well-formed run as the single-run endpoint returns it now, in list order."""
        return [self._detail(r) for r in self._index.get(("", None), ()) if isinstance(r, _Run)]


# Injected failures by status: Apify's error type and message.
_FAILURES = {
    429: (
        "rate-limit-exceeded",
        f"You have exceeded the rate limit of {RATE_LIMIT} requests per second",
    ),
    500: ("internal-server-error", "Internal server error. Please try again later."),
    502: ("bad-gateway", "Bad gateway. Please try again later."),
    503: ("service-unavailable", "Service is temporarily unavailable. Please try again later."),
}
_PERMISSIONS = (
    "Insufficient permissions for the {}. Make sure you're passing a correct API token and that it"
    " has the required permissions."
)


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


class ApifyEndpoints(Endpoints):
    """Apify's run endpoints (GET only) and the demo controls, served over an ApifyWorld."""

    paths = ("/v2/", "/_simulator/apify/")
    default = True  # Apify's error format answers for the paths no upstream claims
    mistypable: ClassVar[Mapping[str, Mistyping]] = {
        "id": mistyped_id,
        "startedAt": epoch_ms,
        "status": listed,
    }

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

    def unauthorized(self, request: web.Request) -> web.Response:
        """The 401 for a request whose bearer token is missing or wrong."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(401, "token-not-provided", "Authentication token was not provided")
        if self.world.live_auth_error:
            return _error(
                401,
                "user-or-token-not-found",
                "User was not found or authentication token is not valid",
            )
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

    def resource(self, request: web.Request) -> str | None:
        """The rate-limited resource a routed request asks for: its endpoint with the actor or
        task named by id (both names of one are one resource); None for the controls."""
        name, info = request.match_info.route.name, request.match_info
        world = self.world
        if name == "apify.list_user_runs":
            return "/v2/actor-runs"
        if name == "apify.list_actor_runs":
            actor = world._lookup(world.actors, info["actorId"])
            return f"/v2/acts/{actor['id'] if actor else info['actorId']}/runs"
        if name == "apify.list_task_runs":
            task = world._lookup(world.tasks, info["taskId"])
            return f"/v2/actor-tasks/{task['id'] if task else info['taskId']}/runs"
        if name == "apify.get_run":
            return f"/v2/actor-runs/{info['runId']}"
        return None

    def throttled(self, request: web.Request) -> web.Response | None:
        """The 429 for a request over its resource's rate limit, or None to go on."""
        resource = self.resource(request)
        limiter = self.world.rate_limiter
        if resource is None or limiter.admit(resource):
            return None
        message = f"You have exceeded the rate limit of {limiter.limit} requests per second"
        return _error(429, "rate-limit-exceeded", message)

    @property
    def rate_limited(self) -> int:
        """The 429s of the world's rate limit."""
        return self.world.rate_limiter.refused_total

    def stamp(self, response: web.StreamResponse) -> None:
        """Adds X-RateLimit-Limit, which every answer of the real API carries."""
        limit = self.world.rate_limiter.limit
        if limit is not None and self.world.stamp_rate_limit:
            response.headers["X-RateLimit-Limit"] = str(limit)

    @staticmethod
    def items(answer: object) -> list[dict[str, Any]]:
        """The runs of a page (data.items) or the single run (data)."""
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, dict):
            return []
        runs = data.get("items")
        return [i for i in runs if isinstance(i, dict)] if isinstance(runs, list) else [data]

    def _forbidden(self, *refs: str | None) -> bool:
        return not self.world.forbidden.isdisjoint(ref for ref in refs if ref)

    def _names(self, entity: dict[str, Any]) -> tuple[str, str]:
        return entity["id"], f"{entity['username']}~{entity['name']}"

    async def _list_user_runs(self, request: web.Request) -> web.Response:
        return self._listing(request, "", time_filter=True)

    async def _list_actor_runs(self, request: web.Request) -> web.Response:
        actor = self.world._lookup(self.world.actors, request.match_info["actorId"])
        if actor is None:
            return _error(404, "record-not-found", "Actor was not found")
        if self._forbidden(*self._names(actor)):
            return _error(403, "insufficient-permissions", _PERMISSIONS.format("Actor"))
        return self._listing(request, actor["id"], time_filter=True)

    async def _list_task_runs(self, request: web.Request) -> web.Response:
        task = self.world._lookup(self.world.tasks, request.match_info["taskId"])
        if task is None:
            return _error(404, "record-not-found", "Actor task was not found")
        if self._forbidden(*self._names(task)):
            return _error(403, "insufficient-permissions", _PERMISSIONS.format("Actor task"))
        # This endpoint has no startedAfter/startedBefore, so they are ignored like unknown params.
        return self._listing(request, task["id"], time_filter=False)

    async def _get_run(self, request: web.Request) -> web.Response:
        world = self.world
        run = world._runs.get(request.match_info["runId"])
        if run is None:
            return _error(404, "record-not-found", "Actor run was not found")
        owners = [*self._names(run.act), *(self._names(run.task) if run.task else ())]
        if self._forbidden(run.id, *owners):
            return _error(403, "insufficient-permissions", _PERMISSIONS.format("Actor run"))
        return web.json_response({"data": world._detail(run)})

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
