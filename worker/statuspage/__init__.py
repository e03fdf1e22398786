"""The status page: where every source stands and what its runs did, for a person with a browser.

Read-only, and safe to face the internet beside the webhooks: it shows what `runsync status`
shows (names, figures, the first line of errors, which never hold a secret) and the analytics
views' charts, nothing of the config's secrets or URLs. health.py serves it over HTTP; this module
only knows what to show, and owns Jinja2. The front end's assets (Chart.js and the page's own
script and style) ship inside the package: the page loads nothing from elsewhere.

static/chart.umd.min.js is Chart.js (MIT, static/chart.js-LICENSE.md) exactly as npm publishes
it: `npm pack chart.js@VERSION`, then package/dist/chart.umd.min.js and package/LICENSE.md. To
update it, copy those two and change CHART_JS to the new version and the file's sha256.

Every figure comes from the database, with the database's clock. However many browsers look, the
page costs the database one status read per STATUS_TTL, one read of the charts' recent days per
CHART_TTL and one of a range's older days per HISTORY_TTL, each read on one connection of the
process's budget (so at most one per kind of figure at once, within [database] max_connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import jinja2

from worker import status
from worker.store import DatabaseError

if TYPE_CHECKING:
    from worker.store import Store

RANGES = (7, 30, 90)  # the charts' ranges, in days
DEFAULT_RANGE = 30
REFRESH_SECONDS = 15  # how often an open page reads the sources again
STATUS_TTL = 5.0  # seconds a status read answers every page that asks
# The charts' days are read in two parts: the last RECENT_DAYS, where runs still start, end and
# settle their costs, at most every CHART_TTL seconds; the days before, which seldom change (a
# resurrected run, a late backfill), at most every HISTORY_TTL seconds. On a busy history the
# older days are most of the read.
CHART_TTL = 60.0
HISTORY_TTL = 600.0
RECENT_DAYS = 2
STALE_TTLS = 3  # a figure up to this many TTLs old is shown while it is read again behind it
# The Chart.js shipped in static/: its version, and the sha256 of the file npm publishes.
CHART_JS = ("4.6.1", "87364cc2b2a76a6684929e7d6b80b18a897794db38400caff1fcf1791c6925d2")
TOP_ACTORS = 7  # the cost chart's stacks: the actors that cost most over the range, then "other"

_ASSET_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}

T = TypeVar("T")


class Unavailable(Exception):
    """The page cannot read the database: not yet (starting, waiting for it), or it failed."""


def _unanswered(error: BaseException) -> Unavailable:
    return Unavailable(f"the database did not answer ({type(error).__name__})")


class BadRange(ValueError):
    """A chart range the page does not offer."""


def chart_range(text: str | None) -> int:
    """The days of `?days=`: one of RANGES; DEFAULT_RANGE when not given."""
    if text is None or text == "":
        return DEFAULT_RANGE
    offered_texts = {str(days): days for days in RANGES}
    if text in offered_texts:
        return offered_texts[text]
    offered = ", ".join(str(days) for days in RANGES)
    raise BadRange(f"days must be one of {offered}, not {text[:20]!r}")


@dataclass(frozen=True)
class Asset:
    name: str
    body: bytes
    content_type: str
    # A digest of the content: the assets' URLs carry it, so a browser may keep them forever.
    version: str


def _assets() -> dict[str, Asset]:
    found = {}
    for entry in resources.files(__name__).joinpath("static").iterdir():
        suffix = entry.name[entry.name.rfind(".") :]
        if entry.is_file() and suffix in _ASSET_TYPES:
            body = entry.read_bytes()
            version = hashlib.sha256(body).hexdigest()[:12]
            found[entry.name] = Asset(entry.name, body, _ASSET_TYPES[suffix], version)
    return found


class _Cached(Generic[T]):
    """One value, read at most once every `ttl` seconds however many ask. A value older than
    `ttl` but younger than STALE_TTLS times it is answered as it is while a read in the background
    replaces it (stale while revalidating): an open page, which asks every REFRESH_SECONDS, never
    waits for the database. An older one is not shown as if current: the asker waits for a read,
    as the first asker does, and everyone who comes meanwhile waits for that same read. A failed
    read drops the value, so that the next asker is told what fails."""

    def __init__(self, read: Callable[[], Awaitable[T]], ttl: float, clock: Callable[[], float]):
        self._read, self._ttl, self._clock = read, ttl, clock
        self._value: tuple[float, T] | None = None
        self._lock = asyncio.Lock()
        self._refresh: asyncio.Task[None] | None = None

    def _older_than(self, ttls: float) -> bool:
        return self._value is None or self._clock() - self._value[0] >= self._ttl * ttls

    async def get(self) -> T:
        if self._older_than(STALE_TTLS):
            async with self._lock:  # one read, whoever else is waiting for it
                if self._value is None or self._older_than(STALE_TTLS):  # None: for mypy
                    self._value = (self._clock(), await self._read())
                return self._value[1]
        if self._older_than(1) and self._refresh is None:
            self._refresh = asyncio.create_task(self._again())
        assert self._value is not None
        return self._value[1]

    async def _again(self) -> None:
        try:
            async with self._lock:
                self._value = (self._clock(), await self._read())
        except Exception:  # the next asker reads again, and is told what fails
            self._value = None
        finally:
            self._refresh = None

    def forget(self) -> None:
        """The value is not to be shown: the next asker waits for a read."""
        self._value = None

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh


def _number(value: Decimal | float | int | None) -> float | None:
    """A figure for JSON: None for a missing or non-finite one (numeric can hold NaN)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _history_span(days: int) -> Callable[[date], tuple[date, date]]:
    """A range's days before the recent ones, for the database's today."""
    return lambda today: (today - timedelta(days=days - 1), today - timedelta(days=RECENT_DAYS))


def _days(first: date, last: date) -> list[date]:
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def chart_data(found: Mapping[str, Any], days: int) -> dict[str, Any]:
    """Store.charts's rows as the page's charts: one label per day of the range (days without
    runs count zero), the runs by outcome, the cost of the TOP_ACTORS costliest actors and the
    rest as "other", and the durations' percentiles (None on days without finished runs)."""
    labels = _days(found["first_day"], found["last_day"])
    index = {day: i for i, day in enumerate(labels)}
    runs = {key: [0] * len(labels) for key in ("succeeded", "failed", "open")}
    for row in found["runs"]:
        for key in runs:
            runs[key][index[row["day"]]] = row[key]
    totals: dict[str, float] = {}
    for row in found["cost"]:
        actor = row["actor_id"] or "(no actor)"
        totals[actor] = totals.get(actor, 0.0) + (_number(row["usage_total_usd"]) or 0.0)
    ranked = sorted(totals, key=lambda actor: (-totals[actor], actor))
    # A stack called "other" holding one actor would hide a name for nothing.
    shown = ranked if len(ranked) <= TOP_ACTORS + 1 else ranked[:TOP_ACTORS]
    cost = {actor: [0.0] * len(labels) for actor in shown}
    if len(ranked) > len(shown):
        cost["other"] = [0.0] * len(labels)
    for row in found["cost"]:
        actor = row["actor_id"] or "(no actor)"
        series = cost[actor if actor in shown else "other"]
        series[index[row["day"]]] += _number(row["usage_total_usd"]) or 0.0
    durations: dict[str, list[float | None]] = {
        key: [None] * len(labels) for key in ("p50", "p90", "p99")
    }
    for row in found["durations"]:
        for key, value in zip(("p50", "p90", "p99"), row["seconds"] or (), strict=False):
            number = _number(value)
            durations[key][index[row["day"]]] = None if number is None else round(number, 3)
    return {
        "days": days,
        "labels": [day.isoformat() for day in labels],
        "runs": runs,
        "cost": {actor: [round(v, 6) for v in series] for actor, series in cost.items()},
        "durations": durations,
    }


class StatusPage:
    """What the page shows, rendered; the store is given once the database can be used."""

    def __init__(
        self,
        sources: Sequence[str],
        partitions: Mapping[str, Sequence[str]] | None = None,
        *,
        waiting: Callable[[], str] = lambda: "starting",
        clock: Callable[[], float] = time.monotonic,
        refresh_seconds: float | None = None,
        status_ttl: float | None = None,
        chart_ttl: float | None = None,
    ) -> None:
        """`waiting`: why there is no store yet. The intervals default to the module's."""
        self.sources = list(sources)
        self.partitions = dict(partitions or {})
        # None until the daemon has its database; read when a browser first asks (read at once,
        # the figures would be those from before the first passes).
        self.store: Store | None = None
        self.waiting = waiting  # why there is no store yet
        self._clock = clock
        self.assets = _assets()
        self._templates = jinja2.Environment(
            loader=jinja2.PackageLoader(__name__, "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._templates.filters["age"] = status.age
        self._templates.filters["first_line"] = status.first_line
        self._templates.globals.update(
            failing=status.failing,
            backfill_summary=status.backfill_summary,
            reconcile_summary=status.reconcile_summary,
            asset=self.asset_url,
            ranges=RANGES,
            refresh_seconds=REFRESH_SECONDS,
        )
        self._status = _Cached(self._read_status, STATUS_TTL, clock)
        recent = self._days_reader(lambda today: (today - timedelta(days=RECENT_DAYS - 1), today))
        self._recent = _Cached(recent, chart_ttl or CHART_TTL, clock)
        # Each range's charts as last put together, with the two reads they came from.
        self._merged: dict[int, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {}
        self._history = {
            days: _Cached(self._days_reader(_history_span(days)), HISTORY_TTL, clock)
            for days in RANGES
        }

    async def close(self) -> None:
        """Stops the reads in the background (before the store closes)."""
        await self._status.close()
        await self._recent.close()
        for cached in self._history.values():
            await cached.close()

    def asset_url(self, name: str) -> str:
        # Relative, as every URL the page uses: it works behind a proxy that serves it under a
        # path of its own (https://example.com/runsync/).
        return f"status/assets/{name}?v={self.assets[name].version}"

    async def _read_status(self) -> tuple[list[dict[str, Any]], datetime]:
        store = self._ready()
        try:
            rows = await store.status(self.sources, self.partitions)
            now = await store.now()
        except (*DatabaseError, TimeoutError) as error:
            raise _unanswered(error) from error
        return status.records(rows, now), now

    def _days_reader(
        self, span: Callable[[date], tuple[date, date]]
    ) -> Callable[[], Awaitable[dict[str, Any]]]:
        """What reads the charts' rows of the days `span` gives for the database's today."""

        async def read() -> dict[str, Any]:
            store = self._ready()
            try:
                first, last = span(await store.today())
                return await store.charts(first, last)
            except (*DatabaseError, TimeoutError) as error:
                raise _unanswered(error) from error

        return read

    def _ready(self) -> Store:
        if self.store is None:
            raise Unavailable(self.waiting())
        return self.store

    async def _sources_context(self) -> dict[str, Any]:
        """The sources' part of the page: their records, or why there are none."""
        try:
            records, now = await self._status.get()
        except Unavailable as error:
            return {"records": None, "problem": str(error), "now": None}
        failing = [r["source"] for r in records if any(map(status.failing, r["streams"]))]
        return {"records": records, "problem": None, "now": now, "failing_sources": failing}

    async def page(self, days: int) -> str:
        """The whole page, its charts over `days`."""
        context = await self._sources_context()
        return self._templates.get_template("page.html").render(days=days, **context)

    async def sources_fragment(self) -> str:
        """The sources' section alone: what an open page fetches every REFRESH_SECONDS."""
        context = await self._sources_context()
        return self._templates.get_template("sources.html").render(**context)

    async def charts(self, days: int) -> dict[str, Any]:
        """The charts' data over `days` (one of RANGES); raises Unavailable without a database."""
        history = self._history[days]
        for _ in range(3):
            older, recent = await history.get(), await self._recent.get()
            if older["last_day"] + timedelta(days=1) == recent["first_day"]:
                merged = self._merged.get(days)
                if merged is None or merged[0] is not older or merged[1] is not recent:
                    rows = {key: older[key] + recent[key] for key in ("runs", "cost", "durations")}
                    span = {"first_day": older["first_day"], "last_day": recent["last_day"]}
                    merged = (older, recent, chart_data({**span, **rows}, days))
                    self._merged[days] = merged
                return merged[2]
            # The day changed between the two reads: the one read the day before is read again.
            (history if older["last_day"] < recent["first_day"] else self._recent).forget()
        raise Unavailable("the database's day did not settle")  # two midnights in a few reads
