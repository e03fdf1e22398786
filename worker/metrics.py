"""The daemon's Prometheus metrics; the one module that imports prometheus_client.

Each Metrics object has a registry of its own, so a test can build several. The facts come in from
where they happen: every request attempt (an http.Observer per source), the end of every pass (its
result), the figures the database gave at the end of a pass (lag, open runs, backfills), and every
webhook delivery. Nothing here touches the database: a scrape only reads what was recorded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from worker.model import Outcome

if TYPE_CHECKING:  # the budgets and results are read, not made, here: no import at run time
    from worker.budget import Passes
    from worker.health import PassOutcomes
    from worker.store import Connections, Written
    from worker.walk import PassResult

# A pass takes from a tenth of a second (nothing new) to an hour (a first pass over a big history).
PASS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        stream = ["source", "stream"]

        def counter(name: str, text: str, labels: list[str]) -> Counter:
            return Counter(f"runsync_{name}", text, labels, registry=self.registry)

        def gauge(name: str, text: str, labels: list[str]) -> Gauge:
            return Gauge(f"runsync_{name}", text, labels, registry=self.registry)

        self.requests = counter(
            "http_requests",
            "Upstream request attempts by answer: the HTTP status code, or timeout or error "
            "(connection failed, body broken off or too large) when there was none",
            ["source", "code"],
        )
        self.retries = counter(
            "http_retries", "Upstream requests tried again after a transient failure", ["source"]
        )
        self.rate_limited = counter(
            "http_rate_limited", "Upstream answers 429 Too Many Requests", ["source"]
        )
        self.passes = counter(
            "passes",
            "Passes by outcome: succeeded, failed, interrupted, skipped",
            [*stream, "outcome"],
        )
        self.pass_seconds = Histogram(
            "runsync_pass_duration_seconds",
            "How long passes took (skipped ones are not counted)",
            stream,
            buckets=PASS_BUCKETS,
            registry=self.registry,
        )
        self.pages = counter("pages", "List pages read and stored", stream)
        self.items = counter("items_read", "Items read from list pages, readable or not", stream)
        self.inserted = counter(
            "runs_inserted", "Runs stored for the first time (stream webhook: by webhooks)", stream
        )
        self.updated = counter("runs_updated", "Stored runs changed by a later observation", stream)
        self.quarantined = counter(
            "items_quarantined", "Items that could not be read as runs, kept in quarantine", stream
        )
        self.last_success = gauge(
            "last_success_timestamp_seconds", "When a pass last succeeded (unix time)", stream
        )
        self.lag = gauge(
            "lag_seconds",
            "Now minus the start of the newest stored run, as of the stream's last pass",
            stream,
        )
        self.open_runs = gauge(
            "open_runs", "Stored runs not yet terminal, followed until they are", stream
        )
        self.backfill_runs = gauge(
            "backfill_runs_read",
            "Runs read so far by the newest pass of a backfill that has not finished",
            stream,
        )
        self.backfill_idle = gauge(
            "backfill_idle_seconds",
            "How long a backfill that has not finished had gone without storing a page, as of "
            "the stream's last pass",
            stream,
        )
        self.stored_success = gauge(
            "stream_last_success_timestamp_seconds",
            "When a pass of the stream last succeeded, in any process (the database's record, "
            "read at the end of each pass; unix time)",
            stream,
        )
        self.oldest_open = gauge(
            "oldest_open_run_timestamp_seconds",
            "When the stream's oldest open run started (or, not started yet, was first stored), "
            "as of its last pass (unix time)",
            stream,
        )
        self.interval = gauge(
            "stream_interval_seconds",
            "The longest time the stream's schedule leaves between two passes: its every, or "
            "its cron's longest gap",
            stream,
        )
        self.webhooks = counter(
            "webhook_deliveries",
            "Webhook deliveries by outcome: stored, unchanged, quarantined, out_of_scope, "
            "ignored, unauthorized, not_found, bad_request, too_large, unavailable",
            ["source", "outcome"],
        )
        self._backfills: dict[str, set[str]] = {}  # per source: the streams shown as in flight

    def upstream(self, source: str) -> UpstreamObserver:
        """What a source's http.Client reports its requests to."""
        return UpstreamObserver(self, source)

    def pass_finished(self, result: PassResult) -> None:
        """A pass's figures, from its result (a sync.PassResult)."""
        labels = (result.source, result.stream)
        self.passes.labels(*labels, result.outcome).inc()
        if result.outcome == Outcome.SKIPPED:
            return
        self.pass_seconds.labels(*labels).observe(result.duration_ms / 1000)
        self.pages.labels(*labels).inc(result.pages)
        self.items.labels(*labels).inc(result.items)
        self.inserted.labels(*labels).inc(result.inserted)
        self.updated.labels(*labels).inc(result.updated)
        self.quarantined.labels(*labels).inc(result.quarantined)
        if result.outcome == Outcome.SUCCEEDED:
            self.last_success.labels(*labels).set_to_current_time()

    def stream_figures(
        self,
        source: str,
        stream: str,
        *,
        newest_started_at: datetime | None,
        open_runs: int,
        oldest_open_at: datetime | None,
        last_success_at: datetime | None,
        backfill: str,
        backfill_runs_read: int | None,
        backfill_idle_seconds: float | None,
    ) -> None:
        """What the database said at the end of a pass; lag keeps growing until the next one."""
        self.open_runs.labels(source, stream).set(open_runs)
        if newest_started_at is not None:
            newest = newest_started_at.timestamp()
            self.lag.labels(source, stream).set_function(lambda: max(time.time() - newest, 0.0))
        _set_or_remove(self.oldest_open, (source, stream), oldest_open_at)
        if last_success_at is not None:
            self.stored_success.labels(source, stream).set(last_success_at.timestamp())
        shown = self._backfills.setdefault(source, set())
        if backfill_runs_read is not None:
            self.backfill_runs.labels(source, backfill).set(backfill_runs_read)
            self.backfill_idle.labels(source, backfill).set(backfill_idle_seconds or 0.0)
            shown.add(backfill)
        elif backfill in shown:  # finished: no longer in flight
            self.backfill_runs.remove(source, backfill)
            self.backfill_idle.remove(source, backfill)
            shown.discard(backfill)

    def schedule(self, source: str, stream: str, interval: timedelta) -> None:
        """A stream's schedule: the longest time it leaves between two passes."""
        self.interval.labels(source, stream).set(interval.total_seconds())

    def outcomes(self, outcomes: PassOutcomes) -> None:
        """What /readyz judges by (a health.PassOutcomes), read at each scrape: which streams
        fail and since when, the threshold, and the daemon's start."""
        self.registry.register(_Outcomes(outcomes))

    def budgets(self, connections: Connections, passes: Passes) -> None:
        """The process's budgets (a store.Connections, a budget.Passes), read at each scrape."""
        self.registry.register(_Budgets(connections, passes))

    def written(self, source: str, stream: str, written: Written) -> None:
        """What a write outside a pass changed (a store.Written; stream "webhook")."""
        self.inserted.labels(source, stream).inc(written.inserted)
        self.updated.labels(source, stream).inc(written.updated)
        self.quarantined.labels(source, stream).inc(written.quarantined)

    def webhook(self, source: str, outcome: str) -> None:
        self.webhooks.labels(source, outcome).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text a scrape gets, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _set_or_remove(gauge: Gauge, labels: tuple[str, ...], moment: datetime | None) -> None:
    """A time on a gauge's series (unix time), or the series gone when there is none."""
    if moment is not None:
        gauge.labels(*labels).set(moment.timestamp())
    else:
        with contextlib.suppress(KeyError):  # prometheus_client before 0.21 raised it
            gauge.remove(*labels)


class UpstreamObserver:
    """An http.Observer that counts one source's request attempts."""

    def __init__(self, metrics: Metrics, source: str) -> None:
        self._metrics = metrics
        self._source = source
        self._retries = metrics.retries.labels(source)
        self._rate_limited = metrics.rate_limited.labels(source)

    def answered(self, code: str) -> None:
        self._metrics.requests.labels(self._source, code).inc()
        if code == "429":
            self._rate_limited.inc()

    def retried(self) -> None:
        self._retries.inc()


class _Budgets:
    """The connection and pass budgets' figures, as they are at the scrape."""

    # (kind, name, help, figure): a figure of store.Connections (c) or budget.Passes (p).
    FIGURES: tuple[tuple[str, str, str, Callable[[Connections, Passes], float]], ...] = (
        ("gauge", "db_connections_limit",
         "Database connections this process may open ([database] max_connections)",
         lambda c, p: c.limit),
        ("gauge", "db_connections_in_use", "Database connections in use now",
         lambda c, p: c.in_use),
        ("gauge", "db_connections_waiting",
         "Reads and writes waiting for a database connection now", lambda c, p: c.waiting),
        ("gauge", "db_connection_oldest_wait_seconds",
         "How long the longest waiting read or write has waited for a connection",
         lambda c, p: c.oldest_wait()),
        ("counter", "db_connection_waits",
         "Reads and writes that found every connection of the budget in use",
         lambda c, p: c.waits),
        ("counter", "db_connection_wait_seconds",
         "Time spent waiting for database connections, all waits together",
         lambda c, p: c.waited_seconds),
        ("counter", "db_connections_refused",
         "New connections the server refused (too many clients, starting up); asked again",
         lambda c, p: c.refused),
        ("gauge", "passes_limit", "Passes this process may run at once ([worker] max_passes)",
         lambda c, p: p.limit),
        ("gauge", "passes_in_flight",
         "Passes running now, and backfill windows beyond their pass's first",
         lambda c, p: p.in_flight),
        ("gauge", "passes_queued", "Passes waiting for their turn now", lambda c, p: p.queued),
        ("gauge", "pass_oldest_wait_seconds",
         "How long the first pass in line has waited for its turn",
         lambda c, p: p.oldest_wait()),
        ("counter", "pass_waits", "Passes that had to wait for their turn",
         lambda c, p: p.waits),
    )  # fmt: skip

    def __init__(self, connections: Connections, passes: Passes) -> None:
        self.connections = connections
        self.passes = passes

    def collect(self) -> Iterator[Metric]:
        family = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily}
        for kind, name, text, figure in self.FIGURES:
            value = figure(self.connections, self.passes)
            yield family[kind](f"runsync_{name}", text, value=value)


class _Outcomes:
    """The streams' failures as /readyz judges them (a health.PassOutcomes), at the scrape."""

    def __init__(self, outcomes: PassOutcomes) -> None:
        self.outcomes = outcomes

    def collect(self) -> Iterator[Metric]:
        outcomes = self.outcomes
        yield GaugeMetricFamily(
            "runsync_unhealthy_after_seconds",
            "How long a stream may fail before /readyz says so ([http] unhealthy_after)",
            value=outcomes.threshold.total_seconds(),
        )
        yield GaugeMetricFamily(
            "runsync_daemon_start_timestamp_seconds",
            "When the daemon began its passes (unix time); /readyz counts a stream that has "
            "not succeeded since as failing from then",
            value=outcomes.started_at.timestamp(),
        )
        failing = GaugeMetricFamily(
            "runsync_stream_failing",
            "1 while the stream's newest pass that ran to an end (in this process) failed, else 0",
            labels=["source", "stream"],
        )
        since = GaugeMetricFamily(
            "runsync_stream_failing_since_timestamp_seconds",
            "While the stream fails: its last success in this process, or the daemon's start "
            "(unix time); /readyz fails once this is older than unhealthy_after",
            labels=["source", "stream"],
        )
        for source, stream, failing_since in outcomes.streams():
            failing.add_metric([source, stream], 0.0 if failing_since is None else 1.0)
            if failing_since is not None:
                since.add_metric([source, stream], failing_since.timestamp())
        yield failing
        yield since
