"""The daemon: one APScheduler job per source, signals, and a graceful stop.

SIGTERM or SIGINT sets the stop event: no new pass starts, running passes commit the page in flight
and return; whatever has not returned after the drain timeout is cancelled (its transaction rolls
back, so at most that page is read again next time).
"""

from __future__ import annotations

import asyncio
import math
import random
import signal
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypedDict, Unpack

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from worker import cron as crontab
from worker import health, metrics, runtime, sources, store, sync, webhooks
from worker.config import Settings, SourceConfig, format_duration
from worker.statuspage import StatusPage
from worker.walk import SourceRuntime

log = structlog.get_logger("runsync.scheduler")

DRAIN_TIMEOUT = 30.0


@contextmanager
def _stop_on_signals(stop: asyncio.Event, install: bool) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if install else ()
    for number in signals:
        loop.add_signal_handler(number, _request_stop, stop, number)
    try:
        yield
    finally:
        for number in signals:
            loop.remove_signal_handler(number)


def _request_stop(stop: asyncio.Event, number: int) -> None:
    if not stop.is_set():
        log.info("stop requested", signal=signal.Signals(number).name)
    stop.set()


def trigger_for(config: SourceConfig) -> BaseTrigger:
    if config.cron:
        return _cron_trigger(crontab.parse(config.cron))
    seconds = _interval(config).total_seconds()
    # Jitter spreads the passes a little more, a tenth of the interval at most.
    return _PhasedInterval(
        seconds=seconds, jitter=min(seconds / 10, 30), start_date=phase_of(config), timezone=UTC
    )


def _interval(config: SourceConfig) -> timedelta:
    """The interval of a source without cron (config gives every such source one)."""
    assert config.every is not None, f"source {config.name} has neither every nor cron"
    return config.every


def longest_interval(config: SourceConfig, today: date) -> timedelta:
    """The longest time the schedule leaves between two passes: its interval, or its cron's
    longest gap (the daemon exports it, for an alert on a stream without a recent success)."""
    if config.cron:
        return crontab.parse(config.cron).longest_gap(today)
    return _interval(config)


class _PhasedInterval(IntervalTrigger):  # type: ignore[misc]  # APScheduler 3 has no types
    """Ticks on the grid start_date + n x interval, each jittered anew. APScheduler's own
    interval adds the interval to the last fire time, so its jitter adds up from tick to tick,
    and after the pass at start every source would tick at start + n x interval: all at once."""

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
        after = (previous_fire_time or now - timedelta(microseconds=1)).timestamp()
        start = self.start_date.timestamp()
        tick = start + self.interval_length * (
            math.floor((after - start) / self.interval_length) + 1
        )
        if self.jitter is not None:
            tick += random.uniform(0, self.jitter)
        return datetime.fromtimestamp(tick, tz=self.timezone)


PHASE_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def phase_of(config: SourceConfig) -> datetime:
    """Where in its interval a source's ticks fall: a share of it drawn from the source's name,
    the same in every replica. The sources of a daemon are spread over the interval instead of
    all ticking at once (1,000 sources every 30 s are 33 passes a second, not 1,000 every 30 s
    whose last ones start late), and replicas tick each source together, one of them running
    it."""
    share = zlib.crc32(config.name.encode()) / 2**32
    return PHASE_EPOCH + _interval(config) * share


def _cron_trigger(cron: crontab.Cron) -> BaseTrigger:
    """The expression as APScheduler's CronTrigger takes it: each field's values spelled out (its
    weekdays are numbered from Monday, so they go by name), and two triggers when a day matches
    if either day field does (CronTrigger wants both)."""
    fields = {
        "minute": _values(cron.minutes, 60),
        "hour": _values(cron.hours, 24),
        "month": _values(cron.months, 12),
        "timezone": UTC,
    }
    days = _values(cron.days, 31)
    weekdays = (
        "*" if len(cron.weekdays) == 7 else ",".join(crontab.WEEKDAYS[d] for d in cron.weekdays)
    )
    if not cron.either_day:
        return CronTrigger(day=days, day_of_week=weekdays, **fields)
    by_weekday = CronTrigger(day_of_week=weekdays, **fields)
    if not cron.days_of_month_come():
        return by_weekday  # '0 0 30 2 mon': only the Mondays of February
    return OrTrigger([CronTrigger(day=days, **fields), by_weekday])


def _values(values: tuple[int, ...], every: int) -> str:
    return "*" if len(values) == every else ",".join(map(str, values))


# Replicas fire a cron tick at one instant, give or take their clocks' skew. A margin of half a
# long gap would let a pass off the schedule (the pass at start, `runsync sync`) stand in for the
# next tick: with @daily, a pass at 20:00 would skip the 03:00 tick after it.
CRON_MARGIN = timedelta(minutes=1)
# Replicas tick a source at its phase (phase_of), but jitter moves each tick by up to a tenth of
# the interval, and a replica whose clock is off ticks off too, so their ticks may fall anywhere
# in the interval. With this share of it as the margin, a stream's passes are never closer than
# that, whatever the phases; with half, three replicas a third of an interval apart ran one every
# two thirds of it. A replica skips its own next tick only if its pass started a fifth of an
# interval late (a thousand sources ticking at once made some that late: hence the phases).
INTERVAL_MARGIN = 0.8


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Tick:
    """One firing of a source's schedule, on the worker's clock.

    A pass of the stream that any replica started after `fire_time - margin` ran this tick. The
    margin is a share of the gap since the fire time before (INTERVAL_MARGIN; for cron, half, at
    most CRON_MARGIN), so replicas whose ticks differ by their phase, jitter or clocks' skew
    share one tick.
    """

    fire_time: datetime
    margin: timedelta
    clock: Callable[[], datetime] = _now

    def not_within(self) -> timedelta:
        """How recent, now, a pass must be to count for this tick, on the worker's clock: the
        time since the fire time plus the margin. The database measures the pass's age on its
        own clock; both are durations, so an offset between the clocks cancels."""
        return self.clock() - self.fire_time + self.margin


def tick_at(config: SourceConfig, woken: datetime, clock: Callable[[], datetime] = _now) -> Tick:
    """The tick a run of the source's job woken at `woken` serves."""
    if config.cron:
        cron = crontab.parse(config.cron)
        # A cron job wakes at its fire time, or later (the pass at start, a late wake-up).
        fire_time = cron.latest_at_or_before(woken)
        gap = fire_time - cron.previous_before(fire_time)
        return Tick(fire_time, min(gap / 2, CRON_MARGIN), clock)
    # An interval's job wakes at its fire time, jittered by a tenth of the interval at most.
    return Tick(woken, _interval(config) * INTERVAL_MARGIN, clock)


def next_fire_times(config: SourceConfig, now: datetime, count: int = 3) -> list[datetime]:
    """The schedule's next fire times after `now` (an interval's as if started now, no jitter)."""
    if not config.cron:
        every = _interval(config)
        first = now + ((phase_of(config) - now) % every or every)  # on a tick: the next one
        return [first + every * n for n in range(count)]
    trigger = trigger_for(config)
    times: list[datetime] = [trigger.get_next_fire_time(None, now)]
    while len(times) < count:
        times.append(trigger.get_next_fire_time(times[-1], times[-1]))
    return times


STARTUP_RETRY = (1.0, 30.0)  # seconds: the first wait for the database at start, and the longest


class _Starting:
    """What /readyz says until the daemon runs: why it is not ready yet."""

    def __init__(self) -> None:
        self.reason = "starting"
        self.check: health.Check | None = None  # the running daemon's, once it runs

    async def readiness(self) -> dict[str, Any] | None:
        if self.check is None:
            return {"reason": self.reason}
        return await self.check()


async def run_daemon(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    install_signals: bool = True,
    drain_timeout: float = DRAIN_TIMEOUT,
) -> int:
    """The daemon. Its endpoint answers from the start; while the database cannot be reached (down,
    starting, out of connections), it says not ready and tries again, with backoff, until it can
    or a stop is asked for. A configuration mistake (a wrong password, user or database name)
    raises runtime.DatabaseUnavailable at once."""
    stop = stop or asyncio.Event()
    meters = metrics.Metrics()
    starting = _Starting()
    page = _status_page(settings, starting)
    own = settings.status_page_listen
    endpoint = health.HealthServer(
        settings.listen, starting.readiness, metrics=meters, page=None if own else page
    )
    servers: list[health.HealthServer | health.PageServer] = [endpoint]
    if own is not None and page is not None:  # the page on an address of its own
        servers.append(health.PageServer(own, page))
    started: list[health.HealthServer | health.PageServer] = []
    with _stop_on_signals(stop, install_signals):
        try:
            for server in servers:
                await server.start()
                started.append(server)
            if page is not None:
                shown = servers[-1]
                log.info("status page", url=f"http://{shown.host}:{shown.port}/")
            async with AsyncExitStack() as stack:
                rt = await _open_when_reachable(settings, stop, stack, starting)
                if rt is not None:
                    if page is not None:
                        page.store = rt.store
                        stack.push_async_callback(page.close)  # before the store closes
                    await _serve(settings, rt, stop, meters, starting, endpoint, drain_timeout)
        finally:
            for server in started:
                await server.stop()
    log.info("daemon stopped")
    return 0


def _status_page(settings: Settings, starting: _Starting) -> StatusPage | None:
    """The status page ([http] status_page), showing why it has no figures until the database
    can be used."""
    if not settings.status_page:
        return None
    names = [s.name for s in settings.sources]
    partitions = {s.name: sources.partitions(s) for s in settings.sources}
    return StatusPage(names, partitions, waiting=lambda: starting.reason)


async def _open_when_reachable(
    settings: Settings, stop: asyncio.Event, stack: AsyncExitStack, starting: _Starting
) -> runtime.Runtime | None:
    """The runtime, once the database can be used; None if a stop came first."""
    delay, longest = STARTUP_RETRY
    while not stop.is_set():
        try:
            return await stack.enter_async_context(runtime.open_runtime(settings))
        except runtime.DatabaseUnavailable as error:
            if not error.transient:
                raise
            starting.reason = f"waiting for the database ({error.cause})"
            log.warning("database unavailable; trying again", error=str(error), retry_in_s=delay)
        with suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
        delay = min(delay * 2, longest)
    return None


async def _serve(
    settings: Settings,
    rt: runtime.Runtime,
    stop: asyncio.Event,
    meters: metrics.Metrics,
    starting: _Starting,
    endpoint: health.HealthServer,
    drain_timeout: float,
) -> None:
    """Every source on its schedule, until a stop is asked for; then the drain."""
    running: set[asyncio.Task[None]] = set()
    outcomes = health.PassOutcomes(settings.unhealthy_after)
    clients = {name: streams[0].client for name, streams in rt.streams.items()}
    for name, client in clients.items():
        client.observer = meters.upstream(name)  # a source's streams share its client
    meters.budgets(rt.store.connections, rt.passes)
    meters.outcomes(outcomes)
    today = outcomes.started_at.date()
    for stream in (stream for streams in rt.streams.values() for stream in streams):
        interval = longest_interval(stream.config, today)
        meters.schedule(stream.name, stream.stream(sync.INCREMENTAL), interval)

    async def job(config: SourceConfig) -> None:
        if stop.is_set():
            return
        # APScheduler hands a job no fire time, so the tick is read off the schedule.
        tick = tick_at(config, datetime.now(UTC))
        name = config.name
        task = asyncio.current_task()
        assert task is not None  # APScheduler runs a coroutine's job as a task
        running.add(task)
        try:
            results = await _side_by_side(
                rt.streams[name], rt.store, stop=stop, not_within=tick.not_within,
                metrics=meters, reconcile=True,
            )  # fmt: skip
            for result in results:
                outcomes.record(result.source, result.stream, result.outcome, result.error)
        except asyncio.CancelledError:
            log.warning("pass cancelled after the drain timeout", source=name)
        except Exception:
            log.exception("pass crashed", source=name)
        finally:
            running.discard(task)

    scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone=UTC)
    for config in settings.sources:
        scheduler.add_job(
            job,
            trigger_for(config),
            args=[config],
            id=config.name,
            max_instances=1,  # a source never overlaps itself
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC) + timedelta(milliseconds=10),
        )

    async def readiness() -> dict[str, Any] | None:
        if not scheduler.running:
            return {"reason": "the scheduler is not running"}
        try:
            await rt.store.ping()
        except (*store.DatabaseError, TimeoutError) as error:
            return {"reason": f"database unreachable: {type(error).__name__}"}
        if failing := outcomes.failing():
            names = ", ".join(dict.fromkeys(f["source"] for f in failing))
            return {
                "reason": f"failing for longer than "
                f"{format_duration(settings.unhealthy_after)}: {names}",
                "failing": failing,
            }
        return None

    endpoint.webhooks = webhooks.receiver(settings.sources, rt.store, clients, meters)
    starting.check = readiness
    scheduler.start()
    log.info(
        "daemon started",
        listen=f"{endpoint.host}:{endpoint.port}",
        sources={c.name: c.schedule for c in settings.sources},
        webhooks=[c.name for c in settings.sources if c.webhook_secret],
        max_connections=settings.max_connections,
        max_passes=settings.max_passes,
    )
    try:
        await stop.wait()
    finally:
        # No new pass starts; running ones commit their page in flight. Only then is the
        # scheduler shut down: its executor cancels the jobs still running.
        scheduler.pause()
        await _drain(running, drain_timeout)
        scheduler.shutdown(wait=False)
        endpoint.webhooks = None


async def _drain(running: set[asyncio.Task[None]], seconds: float) -> None:
    if not running:
        return
    log.info("waiting for passes to commit their page in flight", passes=len(running))
    _, pending = await asyncio.wait(set(running), timeout=seconds)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


async def run_once(
    settings: Settings,
    names: Sequence[str],
    *,
    progress_for: Callable[[str], sync.ProgressCallback] | None = None,
) -> list[sync.PassResult]:
    """One incremental pass of each named source, side by side. `progress_for` gives the page
    callback of a stream (by its label), for a progress bar."""
    stop = asyncio.Event()
    with _stop_on_signals(stop, True):
        async with runtime.open_runtime(settings, names or None) as rt:
            streams = [stream for streams in rt.streams.values() for stream in streams]
            return await _side_by_side(
                streams, rt.store, stop=stop, reconcile=True, progress_for=progress_for
            )


async def run_backfill(
    settings: Settings,
    name: str,
    since: datetime | None,
    until: datetime | None,
    progress: sync.ProgressCallback | None = None,
    *,
    restart: bool = False,
) -> list[sync.PassResult]:
    """A backfill of each stream of a source (each project), side by side."""
    stop = asyncio.Event()
    with _stop_on_signals(stop, True):
        async with runtime.open_runtime(settings, [name]) as rt:
            return await _side_by_side(
                rt.streams[name], rt.store, stream=sync.BACKFILL, since=since, until=until,
                stop=stop, progress=progress, restart=restart,
            )  # fmt: skip


class _PassOptions(TypedDict, total=False):
    """What _side_by_side passes on to each stream's sync.run_pass."""

    stream: str
    since: datetime | None
    until: datetime | None
    stop: asyncio.Event | None
    not_within: Callable[[], timedelta] | None
    restart: bool
    metrics: metrics.Metrics | None


async def _side_by_side(
    streams: Sequence[SourceRuntime],
    db: store.Store,
    *,
    reconcile: bool = False,
    progress: sync.ProgressCallback | None = None,
    progress_for: Callable[[str], sync.ProgressCallback] | None = None,
    **options: Unpack[_PassOptions],
) -> list[sync.PassResult]:
    """A pass of each stream, side by side; then, with `reconcile`, the sweeps that are due.
    Each pass's progress: `progress`, or `progress_for` the stream's label."""

    def one(stream: SourceRuntime) -> Awaitable[sync.PassResult]:
        if progress_for is not None:
            label = sync.PassResult(stream.name, stream.stream(sync.INCREMENTAL)).label
            return sync.run_pass(stream, db, progress=progress_for(label), **options)
        return sync.run_pass(stream, db, progress=progress, **options)

    results = list(await asyncio.gather(*(one(s) for s in streams)))
    if reconcile:
        stop, metrics = options.get("stop"), options.get("metrics")
        sweeps = await asyncio.gather(
            *(sync.reconcile_if_due(s, db, stop=stop, metrics=metrics) for s in streams)
        )
        results += [sweep for sweep in sweeps if sweep is not None]
    return results
