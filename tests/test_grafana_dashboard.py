"""The Grafana dashboard (deploy/grafana): the committed JSON is the builder's fresh export, its
PromQL names only metrics the daemon exposes, and its SQL runs on the migrated schema's views.

The queries are read from the committed JSON, what a user imports. Grafana's macros are replaced
as Grafana's PostgreSQL data source replaces them, so a wrong column or view fails here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import asyncpg
import pytest
import tools
from prometheus_client.metrics import MetricWrapperBase

from worker.budget import Passes
from worker.metrics import Metrics
from worker.store import Connections

ROOT = Path(__file__).resolve().parent.parent
BUILDER = ROOT / "deploy" / "grafana" / "dashboard.py"
EXPORTED = ROOT / "deploy" / "grafana" / "runsync.json"
REGENERATE = "python deploy/grafana/dashboard.py > deploy/grafana/runsync.json"

PROMETHEUS = {"type": "prometheus", "uid": "${prometheus}"}
POSTGRES = {"type": "grafana-postgresql-datasource", "uid": "${postgres}"}

# What a series of each kind of metric is called in the exposition (and so in PromQL).
SERIES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
METRIC = re.compile(r"\brunsync_[A-Za-z0-9_:]+")


def load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("runsync_grafana_dashboard", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def committed() -> dict:
    return json.loads(EXPORTED.read_text())


def targets(board: dict, datasource: dict | None = None) -> list[tuple[dict, dict]]:
    """(panel, target) for every query of the dashboard, or of one data source."""
    return [
        (panel, target)
        for panel in board["panels"]
        for target in panel.get("targets", [])
        if datasource is None or target["datasource"] == datasource
    ]


def promql(board: dict) -> list[str]:
    """Every PromQL expression: the panels' and the query variables' on Prometheus."""
    found = [target["expr"] for _, target in targets(board, PROMETHEUS)]
    found += [v["query"] for v in board["templating"]["list"] if v.get("datasource") == PROMETHEUS]
    return found


def sql(board: dict) -> list[tuple[str, dict]]:
    return [(panel["title"], target) for panel, target in targets(board, POSTGRES)]


# --- the export ---------------------------------------------------------------------------------


def test_the_committed_json_is_a_fresh_export():
    # The export command itself, as the README gives it: the SDK's import warnings stay off stdout.
    exported = subprocess.run(
        [sys.executable, str(BUILDER)], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert exported.stderr == ""
    assert exported.stdout == EXPORTED.read_text(), f"stale: regenerate with `{REGENERATE}`"
    assert load_builder().export() == exported.stdout


# --- the panels, the rows, the variables --------------------------------------------------------


def test_two_rows_whose_panels_use_the_datasource_variables(committed):
    panels = committed["panels"]
    rows = [i for i, panel in enumerate(panels) if panel["type"] == "row"]
    assert [panels[i]["title"] for i in rows] == ["Operations", "Analytics"]
    assert rows[0] == 0
    operations, analytics = panels[1 : rows[1]], panels[rows[1] + 1 :]
    assert len(operations) >= 10 and len(analytics) >= 6
    for section, datasource in ((operations, PROMETHEUS), (analytics, POSTGRES)):
        for panel in section:
            assert panel["datasource"] == datasource, panel["title"]
            assert panel["targets"], panel["title"]
            assert all(t["datasource"] == datasource for t in panel["targets"]), panel["title"]
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(set(ref_ids)) == len(ref_ids), panel["title"]
    # Expanded rows: each row's panels lie below it on the grid and above the next row.
    first, second = (panels[i]["gridPos"]["y"] for i in rows)
    assert all(p["gridPos"]["y"] > first for p in operations)
    assert max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in operations) <= second
    assert all(p["gridPos"]["y"] > second for p in analytics)
    assert not any(panel.get("collapsed") for panel in panels if panel["type"] == "row")
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids) and 0 not in ids
    assert {panel["type"] for panel in panels} >= {"row", "timeseries", "stat", "barchart"}


def test_the_variables(committed):
    variables = {v["name"]: v for v in committed["templating"]["list"]}
    assert variables.keys() == {"prometheus", "postgres", "source"}
    # Data source variables: the dashboard imports wherever, whatever the data sources are called.
    assert variables["prometheus"]["type"] == "datasource"
    assert variables["prometheus"]["query"] == "prometheus"
    assert variables["postgres"]["type"] == "datasource"
    assert variables["postgres"]["query"] == POSTGRES["type"]
    source = variables["source"]
    assert source["type"] == "query" and source["datasource"] == PROMETHEUS
    assert source["multi"] and source["includeAll"]
    # Every query is filtered by source, but the cost panels (their view has no source) and the
    # budgets' figures (a process's, not a source's).
    for _, target in targets(committed, PROMETHEUS):
        if "runsync_db_" not in target["expr"] and "runsync_passes_" not in target["expr"]:
            assert 'source=~"$source"' in target["expr"], target["expr"]
    for title, target in sql(committed):
        if "cost_per_actor_per_day" not in target["rawSql"]:
            assert "source IN ($source)" in target["rawSql"], title
    assert committed["timezone"] == "utc"  # the views' days are UTC days


# --- PromQL against the daemon's metrics --------------------------------------------------------


def exposed() -> dict[str, tuple[str, ...]]:
    """Each series name a Metrics object exposes (its budgets' too), with its labels."""
    metrics = Metrics()
    metrics.budgets(Connections(10), Passes(4))
    labels = {
        collector._name: tuple(collector._labelnames)
        for collector in vars(metrics).values()
        if isinstance(collector, MetricWrapperBase)
    }
    names = {}
    for family in metrics.registry.collect():
        for suffix in SERIES[family.type]:  # a new kind of metric: say what it is called here
            extra = ("le",) if suffix == "_bucket" else ()
            names[family.name + suffix] = labels.get(family.name, ()) + extra
    return names


def unknown_metrics(expressions: list[str], names: dict[str, tuple[str, ...]]) -> set[str]:
    return {name for expr in expressions for name in METRIC.findall(expr)} - names.keys()


def test_every_metric_the_dashboard_names_is_exposed(committed):
    names = exposed()
    assert {"runsync_passes_total", "runsync_pass_duration_seconds_bucket"} <= names.keys()
    assert "runsync_db_connections_in_use" in names  # the budgets' collector
    expressions = promql(committed)
    used = {name for expr in expressions for name in METRIC.findall(expr)}
    assert len(used) >= 15, used  # the pattern finds the names at all
    assert unknown_metrics(expressions, names) == set()


def test_a_misspelled_or_wrongly_suffixed_metric_is_caught():
    names = exposed()
    wrong = [
        'rate(runsync_pases_total{source=~"$source"}[5m])',  # misspelled
        "rate(runsync_passes[5m])",  # a counter's family name is no series
        "runsync_lag_seconds_total",  # a gauge has no _total
        "runsync_pass_duration_seconds",  # nor a histogram a bare series
        "runsync_open_runs_bucket",
        "runsync_http_requests_total_total",
    ]
    for expr in wrong:
        assert unknown_metrics([expr], names) == set(METRIC.findall(expr)), expr
    assert unknown_metrics(["runsync_pass_duration_seconds_count"], names) == set()


def grouped_by(expr: str) -> set[str]:
    return {
        label.strip()
        for labels in re.findall(r"\bby \(([^)]*)\)", expr)
        for label in labels.split(",")
    }


def test_the_labels_the_dashboard_groups_and_names_series_by_exist(committed):
    names = exposed()
    for _, target in targets(committed, PROMETHEUS):
        expr = target["expr"]
        labels = set().union(*(names[m] for m in METRIC.findall(expr)))
        # Grouped by labels the metrics have, named by labels the grouping keeps (the labels
        # of the scrape, instance and job, where nothing is aggregated).
        assert grouped_by(expr) <= labels, expr
        kept = grouped_by(expr) or labels | {"instance", "job"}
        assert set(re.findall(r"{{\s*(\w+)\s*}}", target["legendFormat"])) <= kept, expr


def test_every_expression_is_valid_promql(committed, tmp_path):
    promtool = tools.require("promtool")
    rules = [
        {
            "record": f"dashboard:panel_{panel['id']}:{target['refId']}",
            # The values Grafana puts in: the interval, and a regex of the selected sources.
            "expr": target["expr"].replace("$__rate_interval", "5m").replace("$source", ".+"),
        }
        for panel, target in targets(committed, PROMETHEUS)
    ]
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(rules)} rules found" in checked.stdout


# --- SQL against the migrated schema ------------------------------------------------------------

# The time range of the test's dashboard: three UTC days, from mid-morning to the evening.
FROM = datetime(2026, 3, 2, 10, 15, 30, 500000, tzinfo=UTC)
TO = datetime(2026, 3, 4, 18, 0, 0, 250000, tzinfo=UTC)
SELECTED = ("apify", "raker", "hub")  # the source variable's selection; "apify-actor" is not in it


def rfc3339(moment: datetime) -> str:
    """As Grafana writes a time in a macro: RFC 3339 in UTC, fractions without trailing zeros."""
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def substituted(raw: str, sources: tuple[str, ...] = SELECTED) -> str:
    """The SQL Grafana's PostgreSQL data source sends for the time range FROM..TO."""
    start, end = rfc3339(FROM), rfc3339(TO)
    text = re.sub(r"\$__timeFilter\((\w+)\)", rf"\1 BETWEEN '{start}' AND '{end}'", raw)
    text = text.replace("$__timeFrom()", f"'{start}'").replace("$__timeTo()", f"'{end}'")
    # A multi-value variable in SQL: its values quoted and joined by commas.
    text = re.sub(r"\$\{?source\}?", ", ".join(f"'{s}'" for s in sources), text)
    assert "$" not in text, f"a macro or variable this test does not replace: {text}"
    return text


def run(source: str, run_id: str, started_at: datetime, **fields) -> dict:
    upstream = {"raker": "rakerone", "hub": "github"}.get(source, "apify")
    status = fields.pop("status", "SUCCEEDED")
    terminal = status not in ("RUNNING", "in_progress")
    seconds = fields.pop("seconds", 60)
    row = {
        "source": source,
        "run_id": run_id,
        "upstream": upstream,
        "status": status,
        "is_terminal": terminal,
        "started_at": started_at,
        "finished_at": started_at + timedelta(seconds=seconds) if terminal else None,
        "actor_id": "act_1" if upstream == "apify" else None,
        "project": "proj_a" if upstream == "rakerone" else None,
        "usage_total_usd": Decimal("0.25") if upstream == "apify" else None,
        "succeeded": status.lower() in ("succeeded", "completed") if terminal else None,
        "observed_at": started_at + timedelta(hours=1),
        **fields,
    }
    row.setdefault("scope", row["actor_id"] or row["project"] or "CI")
    return row


def history() -> list[dict]:
    day = datetime(2026, 3, 2, 12, tzinfo=UTC)
    return [
        # Before the range's first day, and after its last: left out.
        run("apify", "early", datetime(2026, 3, 1, 23, 59, tzinfo=UTC)),
        run("apify", "late", datetime(2026, 3, 5, 0, 0, 1, tzinfo=UTC)),
        # The range's first day, before its first instant: in (a day is taken whole).
        run("apify", "a0", datetime(2026, 3, 2, 0, 30, tzinfo=UTC), seconds=10),
        run("apify", "a1", day, status="FAILED", seconds=30),
        run("apify", "a2", day + timedelta(days=1), actor_id="act_2", scope="act_2"),
        run("apify", "a3", day + timedelta(days=2), status="RUNNING"),
        run("raker", "r1", day, status="completed", seconds=90),
        run("raker", "r2", day + timedelta(days=1), status="failed"),
        run(
            "hub",
            "g1",
            day + timedelta(days=1),
            status="completed",
            github_conclusion="success",
            github_workflow="CI",
        ),
        run("hub", "g2", day + timedelta(days=2), status="in_progress", github_workflow="CI"),
        # Another source, not selected (its cost counts: cost_per_actor_per_day has no source).
        run("apify-actor", "x1", day, actor_id="act_3", scope="act_3"),
    ]


IN_RANGE = [r for r in history() if date(2026, 3, 2) <= r["started_at"].date() <= date(2026, 3, 4)]


async def insert(conn, runs: list[dict]) -> None:
    for row in runs:
        columns = list(row)
        await conn.execute(
            f"INSERT INTO runsync.runs ({', '.join(columns)}, raw) "
            f"VALUES ({', '.join(f'${i + 1}' for i in range(len(columns)))}, '{{}}'::jsonb)",
            *row.values(),
        )


async def test_every_query_reads_only_views_that_exist(committed, db):
    async with db.pool.acquire() as conn:
        views = {
            row["table_name"]
            for row in await conn.fetch(
                "SELECT table_name FROM information_schema.views WHERE table_schema = 'runsync'"
            )
        }
    read = {
        name
        for _, target in sql(committed)
        for name in re.findall(r"\brunsync\.(\w+)", target["rawSql"])
    }
    assert read and read <= views, read - views
    assert "runs" not in read


def readme_grants(role: str) -> list[str]:
    """The GRANT statements deploy/README.md gives Grafana's database user, for `role`."""
    text = " ".join((ROOT / "deploy" / "README.md").read_text().split())
    grants = re.findall(r"GRANT [^`;]+;", text.split("## Grafana dashboard", 1)[1])
    assert len(grants) == 2, grants
    return [grant.replace(" TO grafana;", f" TO {role};") for grant in grants]


async def test_every_query_runs_on_the_schema_over_the_time_range(committed, db):
    async with db.pool.acquire() as conn:
        await insert(conn, history())
        # As Grafana's user, with only the rights the README grants it (all undone at the end).
        reader = conn.transaction()
        await reader.start()
        role = f"grafana_{uuid.uuid4().hex[:12]}"
        await conn.execute(f"CREATE ROLE {role} NOLOGIN")
        for grant in readme_grants(role):
            await conn.execute(grant)
        await conn.execute(f"SET LOCAL ROLE {role}")
        await conn.execute("SET LOCAL TIME ZONE 'Asia/Tokyo'")  # a day is a UTC day all the same
        answers = {}
        for title, target in sql(committed):
            rows = await conn.fetch(substituted(target["rawSql"]))
            answers[title] = rows
            assert rows, title
            if target["format"] == "table":
                continue
            # A time series: a column "time" at a UTC midnight in the range, in order, then
            # numbers, or one string column "metric" that names the series (Grafana's long form).
            columns = list(rows[0].keys())
            assert columns[0] == "time", title
            times = [row["time"] for row in rows]
            assert times == sorted(times), title
            assert all(t.astimezone(UTC).time() == datetime.min.time() for t in times), title
            assert {t.astimezone(UTC).date() for t in times} <= {
                date(2026, 3, 2) + timedelta(days=i) for i in range(3)
            }, title
            if "metric" in columns:
                assert columns[1] == "metric" and len(columns) == 3, title
                assert all(isinstance(row["metric"], str) for row in rows), title
            values = [row[c] for row in rows for c in columns if c not in ("time", "metric")]
            assert all(v is None or isinstance(v, int | float | Decimal) for v in values), title
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the grants are all it has
            await conn.fetch("SELECT count(*) FROM runsync.runs")
        await reader.rollback()

    selected = [r for r in IN_RANGE if r["source"] in SELECTED]
    outcome = answers["Runs per day by outcome"]
    assert sum(r["succeeded"] + r["ended otherwise"] + r["open"] for r in outcome) == len(selected)
    assert sum(r["open"] for r in outcome) == sum(not r["is_terminal"] for r in selected)
    assert sum(r["runs"] for r in answers["Runs per day by status"]) == len(selected)
    assert {r["metric"] for r in answers["GitHub workflow runs per day by conclusion"]} == {
        "success",
        "in_progress",
    }
    # Cost counts every Apify source's runs in the range: the unselected one's too.
    apify = [r for r in IN_RANGE if r["upstream"] == "apify"]
    costs = answers["Apify cost per actor over the range"]
    assert sum(r["usd"] for r in costs) == sum(r["usage_total_usd"] for r in apify)
    assert [r["actor"] for r in costs] == ["act_1", "act_2", "act_3"]
    durations = answers["Run duration per day (p50, p90, p99)"]
    first = next(r for r in durations if r["time"].astimezone(UTC).date() == date(2026, 3, 2))
    # The selected sources' runs that finished, of the first day: 10, 30 and 90 seconds.
    assert (first["p50"], first["p90"]) == (30, pytest.approx(78))


async def test_every_query_filters_on_an_indexed_start(committed, db):
    # Without sequential scans the planner still reads the runs through an index on their start
    # wherever one serves the time filter: the day's (runs_started_day_idx) for the views' day, the
    # start's (runs_started_idx, after the source) for github_workflow_runs' started_at.
    async with db.pool.acquire() as conn:
        await conn.execute("SET enable_seqscan = off")
        for title, target in sql(committed):
            by_day = "$__timeFilter(day)" in target["rawSql"]
            index = "runs_started_day_idx" if by_day else "runs_started_idx"
            start = "(started_at AT TIME ZONE 'UTC'::text))::date >=" if by_day else "started_at >="
            plan = [row[0] for row in await conn.fetch("EXPLAIN " + substituted(target["rawSql"]))]
            scans = [i for i, line in enumerate(plan) if f"using {index} on runs" in line]
            assert scans, f"{title}: not through {index}\n" + "\n".join(plan)
            assert all(start in plan[i + 1] for i in scans), "\n".join(plan)
