"""runsync's Grafana dashboard, built with Grafana's Python SDK (grafana-foundation-sdk).

    python deploy/grafana/dashboard.py > deploy/grafana/runsync.json

prints the dashboard's JSON, which deploy/grafana/runsync.json holds (tests/test_grafana_dashboard.py
checks that it is this script's output, and runs its queries). Install the SDK with
`pip install -e .[dashboard]` (the `test` extra has it too). The daemon never imports this.

Two rows:
- Operations, from Prometheus: the daemon's metrics (worker/metrics.py).
- Analytics, from Postgres: the analytics views of schema runsync (README.md, "Analytics"), each
  query filtered on the views' `day` (the UTC day of a run's start), which an index serves.

Both data sources are template variables of type datasource, so the dashboard imports into any
Grafana whatever its data sources are called; `source` filters both rows.
"""

from __future__ import annotations

import textwrap
import typing
import warnings

with warnings.catch_warnings():
    # The SDK's classic dashboard types warn, on import, that the v2 schema is preferred (and so do
    # v2's beta ones); v2's JSON imports only into a Grafana 12 with its new layouts switched on,
    # the classic dashboard's anywhere.
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import (
        barchart,
        common,
        dashboard,
        prometheus,
        stat,
        timeseries,
    )
    from grafana_foundation_sdk.cog import builder as cogbuilder
    from grafana_foundation_sdk.cog import variants as cogvariants
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as models
    from grafana_foundation_sdk.models import dashboard as dashboard_models

UID = "runsync"
# Grafana's PostgreSQL plugin (called "postgres" before Grafana 10.2.3, an alias it still knows).
POSTGRES_PLUGIN = "grafana-postgresql-datasource"
PROMETHEUS = models.DataSourceRef(type_val="prometheus", uid="${prometheus}")
POSTGRES = models.DataSourceRef(type_val=POSTGRES_PLUGIN, uid="${postgres}")
SOURCE = 'source=~"$source"'  # the PromQL matcher of the source variable (a regex when several)
RATE = "$__rate_interval"
# A day of the views as the instant its bar stands at: midnight UTC (the dashboard is in UTC).
DAY = "day::timestamp AT TIME ZONE 'UTC' AS time"


class SqlQuery(cogvariants.Dataquery):
    """A query of Grafana's PostgreSQL data source, for which the SDK has no types of its own."""

    def __init__(self, sql: str, ref_id: str = "A", format_val: str = "time_series") -> None:
        self.sql = sql
        self.ref_id = ref_id
        self.format_val = format_val

    def to_json(self) -> dict[str, object]:
        return {
            "datasource": POSTGRES,
            "editorMode": "code",
            "format": self.format_val,
            "rawQuery": True,
            "rawSql": self.sql,
            "refId": self.ref_id,
        }


class Sql(cogbuilder.Builder[cogvariants.Dataquery]):
    """Builds a SqlQuery: the SQL as written, as a time series unless .table()."""

    def __init__(self, sql: str) -> None:
        self._internal = SqlQuery(textwrap.dedent(sql).strip())

    def build(self) -> SqlQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> typing.Self:
        self._internal.ref_id = ref_id
        return self

    def table(self) -> typing.Self:
        self._internal.format_val = "table"
        return self


def promql(expr: str, legend: str, ref_id: str = "A") -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .datasource(PROMETHEUS)
        .ref_id(ref_id)
        .expr(expr)
        .legend_format(legend)
        .range()
    )


def legend() -> common.VizLegendOptions:
    return (
        common.VizLegendOptions()
        .show_legend(True)
        .display_mode(models.LegendDisplayMode.LIST)
        .placement(models.LegendPlacement.BOTTOM)
    )


def tooltip() -> common.VizTooltipOptions:
    return (
        common.VizTooltipOptions()
        .mode(models.TooltipDisplayMode.MULTI)
        .sort(models.SortOrder.DESCENDING)
    )


def chart(
    title: str,
    description: str,
    unit: str,
    datasource: models.DataSourceRef,
    *,
    width: int = 12,
    bars: bool = False,
) -> timeseries.Panel:
    """A time series panel; bars (stacked, one a day) for the views' daily figures."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(datasource)
        .unit(unit)
        .span(width)
        .height(8)
        .legend(legend())
        .tooltip(tooltip())
        .min(0)
    )
    if bars:
        panel = (
            panel.draw_style(models.GraphDrawStyle.BARS)
            .bar_alignment(models.BarAlignment.AFTER)  # a day's bar spans that day
            .fill_opacity(80)
            .line_width(1)
            .stacking(common.StackingConfig().mode(models.StackingMode.NORMAL))
        )
    else:
        panel = panel.fill_opacity(10).show_points(models.VisibilityMode.NEVER)
    return panel


def operations() -> list[cogbuilder.Builder[dashboard_models.Panel]]:
    """The daemon's metrics (worker/metrics.py); the budgets' figures are per process."""
    per_minute = "opm"
    return [
        chart(
            "Passes by outcome",
            "Passes a minute by source and outcome: succeeded, failed, interrupted, skipped.",
            per_minute,
            PROMETHEUS,
        ).with_target(
            promql(
                f"60 * sum by (source, outcome) (rate(runsync_passes_total{{{SOURCE}}}[{RATE}]))",
                "{{source}} {{outcome}}",
            )
        ),
        chart(
            "Pass duration",
            "How long passes take, by source: p50 and p99 over the interval, from the "
            "histogram (skipped passes are not counted).",
            "s",
            PROMETHEUS,
        )
        .with_target(
            promql(
                "histogram_quantile(0.5, sum by (source, le) "
                f"(rate(runsync_pass_duration_seconds_bucket{{{SOURCE}}}[{RATE}])))",
                "{{source}} p50",
            )
        )
        .with_target(
            promql(
                "histogram_quantile(0.99, sum by (source, le) "
                f"(rate(runsync_pass_duration_seconds_bucket{{{SOURCE}}}[{RATE}])))",
                "{{source}} p99",
                "B",
            )
        )
        .with_target(
            promql(
                f"sum by (source) (rate(runsync_pass_duration_seconds_sum{{{SOURCE}}}[{RATE}]))"
                f" / sum by (source) (rate(runsync_pass_duration_seconds_count{{{SOURCE}}}"
                f"[{RATE}]))",
                "{{source}} mean",
                "C",
            )
        ),
        chart(
            "Lag per stream",
            "Now minus the start of the newest stored run, as of the stream's last pass.",
            "s",
            PROMETHEUS,
        ).with_target(
            promql(
                f"max by (source, stream) (runsync_lag_seconds{{{SOURCE}}})",
                "{{source}} {{stream}}",
            )
        ),
        stat.Panel()
        .title("Since the last successful pass")
        .description(
            "Per stream. /readyz fails once a source has failed for [http] unhealthy_after "
            "(15m by default): orange from 15 minutes, red from an hour."
        )
        .datasource(PROMETHEUS)
        .unit("s")
        .span(12)
        .height(8)
        .graph_mode(models.BigValueGraphMode.NONE)
        .color_mode(models.BigValueColorMode.BACKGROUND)
        .text_mode(models.BigValueTextMode.VALUE_AND_NAME)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(
            dashboard.ThresholdsConfig()
            .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
            .steps(
                [
                    dashboard_models.Threshold(value=None, color="green"),
                    dashboard_models.Threshold(value=900, color="orange"),
                    dashboard_models.Threshold(value=3600, color="red"),
                ]
            )
        )
        .with_target(
            promql(
                "time() - max by (source, stream) "
                f"(runsync_last_success_timestamp_seconds{{{SOURCE}}})",
                "{{source}} {{stream}}",
            )
        ),
        chart(
            "Upstream requests by code",
            "Request attempts a second by source and answer: the HTTP status code, or timeout "
            "or error when there was none.",
            "reqps",
            PROMETHEUS,
        ).with_target(
            promql(
                f"sum by (source, code) (rate(runsync_http_requests_total{{{SOURCE}}}[{RATE}]))",
                "{{source}} {{code}}",
            )
        ),
        chart(
            "Retries and 429s",
            "Requests tried again after a transient failure, and answers 429 Too Many "
            "Requests, a second by source.",
            "reqps",
            PROMETHEUS,
        )
        .with_target(
            promql(
                f"sum by (source) (rate(runsync_http_retries_total{{{SOURCE}}}[{RATE}]))",
                "{{source}} retries",
            )
        )
        .with_target(
            promql(
                f"sum by (source) (rate(runsync_http_rate_limited_total{{{SOURCE}}}[{RATE}]))",
                "{{source}} 429",
                "B",
            )
        ),
        chart(
            "Open runs",
            "Stored runs not yet terminal, followed until they are, per stream.",
            "short",
            PROMETHEUS,
            width=8,
        ).with_target(
            promql(
                f"max by (source, stream) (runsync_open_runs{{{SOURCE}}})",
                "{{source}} {{stream}}",
            )
        ),
        chart(
            "Backfill progress (runs read)",
            "Runs read so far by the newest pass of each backfill that has not finished; a "
            "finished backfill's series ends.",
            "short",
            PROMETHEUS,
            width=8,
        ).with_target(
            promql(
                f"max by (source, stream) (runsync_backfill_runs_read{{{SOURCE}}})",
                "{{source}} {{stream}}",
            )
        ),
        chart(
            "Runs written",
            "Runs stored for the first time, stored runs changed, and items quarantined, a "
            "minute by source (passes and webhooks).",
            per_minute,
            PROMETHEUS,
            width=8,
        )
        .with_target(
            promql(
                f"60 * sum by (source) (rate(runsync_runs_inserted_total{{{SOURCE}}}[{RATE}]))",
                "{{source}} inserted",
            )
        )
        .with_target(
            promql(
                f"60 * sum by (source) (rate(runsync_runs_updated_total{{{SOURCE}}}[{RATE}]))",
                "{{source}} updated",
                "B",
            )
        )
        .with_target(
            promql(
                f"60 * sum by (source) (rate(runsync_items_quarantined_total{{{SOURCE}}}[{RATE}]))",
                "{{source}} quarantined",
                "C",
            )
        ),
        chart(
            "Webhook deliveries by outcome",
            "Deliveries a minute by source and outcome (stored, unchanged, unauthorized, ...).",
            per_minute,
            PROMETHEUS,
            width=8,
        ).with_target(
            promql(
                "60 * sum by (source, outcome) "
                f"(rate(runsync_webhook_deliveries_total{{{SOURCE}}}[{RATE}]))",
                "{{source}} {{outcome}}",
            )
        ),
        chart(
            "Database connections",
            "Connections in use and reads or writes waiting for one, against the limit "
            "([database] max_connections), per process.",
            "short",
            PROMETHEUS,
            width=8,
        )
        .with_target(promql("runsync_db_connections_in_use", "{{instance}} in use"))
        .with_target(promql("runsync_db_connections_waiting", "{{instance}} waiting", "B"))
        .with_target(promql("runsync_db_connections_limit", "{{instance}} limit", "C")),
        chart(
            "Pass budget",
            "Passes running and waiting for their turn, against the limit ([worker] "
            "max_passes), per process.",
            "short",
            PROMETHEUS,
            width=8,
        )
        .with_target(promql("runsync_passes_in_flight", "{{instance}} in flight"))
        .with_target(promql("runsync_passes_queued", "{{instance}} queued", "B"))
        .with_target(promql("runsync_passes_limit", "{{instance}} limit", "C")),
    ]


def analytics() -> list[cogbuilder.Builder[dashboard_models.Panel]]:
    """The analytics views, a day per bar. Every query filters on the views' day
    ($__timeFilter(day): the days the time range touches), which runs_started_day_idx serves."""
    return [
        chart(
            "Runs per day by outcome",
            "Runs started each day: succeeded, ended otherwise (failed, aborted, timed out, "
            "cancelled, ...), still open (success_rate_per_day).",
            "short",
            POSTGRES,
            bars=True,
        ).with_target(
            Sql(
                f"""
                SELECT {DAY},
                       sum(succeeded_runs) AS succeeded,
                       sum(terminal_runs - succeeded_runs) AS "ended otherwise",
                       sum(open_runs) AS open
                FROM runsync.success_rate_per_day
                WHERE $__timeFilter(day) AND source IN ($source)
                GROUP BY day
                ORDER BY day
                """
            )
        ),
        chart(
            "Runs per day by status",
            "Runs started each day by status, as each upstream spells it (runs_per_day).",
            "short",
            POSTGRES,
            bars=True,
        ).with_target(
            Sql(
                f"""
                SELECT {DAY}, status AS metric, sum(runs) AS runs
                FROM runsync.runs_per_day
                WHERE $__timeFilter(day) AND source IN ($source)
                GROUP BY day, status
                ORDER BY day, status
                """
            )
        ),
        chart(
            "Success rate per day",
            "Succeeded among the runs that ended, by day of their start and source; the "
            "counts are added up before dividing (success_rate_per_day).",
            "percentunit",
            POSTGRES,
        )
        .max(1)
        .with_target(
            Sql(
                f"""
                SELECT {DAY}, source AS metric,
                       sum(succeeded_runs) / nullif(sum(terminal_runs), 0) AS success_rate
                FROM runsync.success_rate_per_day
                WHERE $__timeFilter(day) AND source IN ($source)
                GROUP BY day, source
                ORDER BY day, source
                """
            )
        ),
        chart(
            "Run duration per day (p50, p90, p99)",
            "Durations of the finished runs started each day, over the selected sources "
            "(percentile_cont over run_facts: percentiles of scopes cannot be combined).",
            "s",
            POSTGRES,
        ).with_target(
            Sql(
                f"""
                SELECT {DAY},
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_seconds) AS p50,
                       percentile_cont(0.9) WITHIN GROUP (ORDER BY duration_seconds) AS p90,
                       percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_seconds) AS p99
                FROM runsync.run_facts
                WHERE $__timeFilter(day) AND source IN ($source) AND finished_at IS NOT NULL
                GROUP BY day
                ORDER BY day
                """
            )
        ),
        chart(
            "p90 run duration per day by scope",
            "Each actor's, project's or workflow's p90 duration of its finished runs, by "
            "source (duration_per_day).",
            "s",
            POSTGRES,
        ).with_target(
            Sql(
                f"""
                SELECT {DAY}, source || ' ' || coalesce(scope, '-') AS metric, p90_seconds
                FROM runsync.duration_per_day
                WHERE $__timeFilter(day) AND source IN ($source)
                ORDER BY day, metric
                """
            )
        ),
        chart(
            "GitHub workflow runs per day by conclusion",
            "GitHub runs by the UTC day of their start and conclusion (status while not "
            "completed), from github_workflow_runs.",
            "short",
            POSTGRES,
            bars=True,
        ).with_target(
            Sql(
                """
                SELECT date_trunc('day', started_at, 'UTC') AS time,
                       coalesce(conclusion, status) AS metric, count(*) AS runs
                FROM runsync.github_workflow_runs
                WHERE $__timeFilter(started_at) AND source IN ($source)
                GROUP BY 1, 2
                ORDER BY 1, 2
                """
            )
        ),
        chart(
            "Apify cost per actor per day",
            "What Apify charged (usageTotalUsd) for the runs each actor started each day; a run "
            "stored by several sources counts once, so the source filter does not apply "
            "(cost_per_actor_per_day).",
            "currencyUSD",
            POSTGRES,
            bars=True,
        ).with_target(
            Sql(
                f"""
                SELECT {DAY}, coalesce(actor_id, '-') AS metric, usage_total_usd
                FROM runsync.cost_per_actor_per_day
                WHERE $__timeFilter(day)
                ORDER BY day, metric
                """
            )
        ),
        barchart.Panel()
        .title("Apify cost per actor over the range")
        .description("The 15 actors that cost most over the time range (cost_per_actor_per_day).")
        .datasource(POSTGRES)
        .unit("currencyUSD")
        .span(12)
        .height(8)
        .orientation(models.VizOrientation.HORIZONTAL)
        .x_field("actor")
        .show_value(models.VisibilityMode.AUTO)
        .legend(legend().show_legend(False))
        .with_target(
            Sql(
                """
                SELECT coalesce(actor_id, '-') AS actor, sum(usage_total_usd) AS usd
                FROM runsync.cost_per_actor_per_day
                WHERE $__timeFilter(day)
                GROUP BY 1
                ORDER BY usd DESC, actor
                LIMIT 15
                """
            ).table()
        ),
    ]


def variables() -> list[cogbuilder.Builder[dashboard_models.VariableModel]]:
    return [
        dashboard.DatasourceVariable("prometheus")
        .label("Prometheus")
        .description("The Prometheus that scrapes runsync's /metrics")
        .type("prometheus"),
        dashboard.DatasourceVariable("postgres")
        .label("Postgres")
        .description("The database runsync writes (schema runsync)")
        .type(POSTGRES_PLUGIN),
        dashboard.QueryVariable("source")
        .label("Source")
        .description("runsync's configured sources ([[sources]] name), as its metrics name them")
        .datasource(PROMETHEUS)
        .query("label_values(runsync_passes_total, source)")
        .definition("label_values(runsync_passes_total, source)")
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True),
    ]


def build() -> dashboard_models.Dashboard:
    builder = (
        dashboard.Dashboard("runsync")
        .uid(UID)
        .description(
            "runsync's passes and requests (Prometheus), and the runs it stored (Postgres)"
        )
        .tags(["runsync"])
        .timezone("utc")  # the analytics views' days are UTC days
        .time("now-7d", "now")
        .refresh("1m")
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .variables(variables())
        .with_row(dashboard.Row("Operations"))
    )
    for panel in operations():
        builder = builder.with_panel(panel)
    builder = builder.with_row(dashboard.Row("Analytics"))
    for panel in analytics():
        builder = builder.with_panel(panel)
    built = builder.build()
    for number, placed in enumerate(built.panels or [], start=1):
        placed.id_val = number  # stable ids, in the order of the grid (links to a panel keep)
    return built


def export() -> str:
    """The dashboard's JSON, as deploy/grafana/runsync.json holds it."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build()) + "\n"


if __name__ == "__main__":
    print(export(), end="")
