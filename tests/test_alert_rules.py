"""The Prometheus alert rules in deploy/prometheus: valid, unit-tested by promtool, reading only
metrics the daemon exports, each with its runbook in deploy/README.md, and firing on what a real
Metrics object serves."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import tools
import yaml
from helpers import samples

from worker import budget, health, metrics, store
from worker.model import Outcome
from worker.walk import PassResult

RULES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
RULES = RULES_DIR / "runsync-alerts.yml"
RULES_TESTS = RULES_DIR / "runsync-alerts.test.yml"
DEPLOY_README = RULES_DIR.parent / "README.md"
# Series the rules read that Prometheus makes, not the daemon.
PROMETHEUS_SERIES = {"up"}


def rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def promtool(*args: str, cwd: Path = RULES_DIR) -> str:
    """promtool's output; the test fails with all of it when promtool does."""
    done = subprocess.run(
        [tools.require("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_the_rules_are_valid():
    output = promtool("check", "rules", RULES.name)
    assert f"SUCCESS: {len(rules())} rules found" in output


def test_the_rules_pass_their_unit_tests():
    assert "SUCCESS" in promtool("test", "rules", RULES_TESTS.name)


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not():
    fires, silent = set(), set()
    for case in yaml.safe_load(RULES_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in rules()}
    assert alerts - fires == set() and alerts - silent == set()


def exported_names() -> set[str]:
    """Every series name a daemon's Metrics can serve, whether recorded yet or not."""
    meters = metrics.Metrics()
    meters.budgets(store.Connections(10), budget.Passes())
    meters.outcomes(health.PassOutcomes(timedelta(minutes=15)))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in meters.registry.collect()
        for suffix in suffixes[family.type]
    }


def test_every_metric_the_rules_read_is_one_the_daemon_exports():
    exported = exported_names()
    assert "runsync_passes_total" in exported and "runsync_pass_duration_seconds_count" in exported
    for rule in rules():
        names = set(re.findall(r"\b(runsync_\w+|up)\b", rule["expr"]))
        assert names, rule["alert"]
        unknown = names - exported - PROMETHEUS_SERIES
        assert not unknown, (
            f"{rule['alert']} reads {unknown}, which worker/metrics.py never exports"
        )


def test_every_alert_has_labels_annotations_and_a_runbook_section():
    readme = DEPLOY_README.read_text()
    alerts_section = readme[readme.index("\n## Alerts\n") :]
    headings = re.findall(r"^### (\w+)$", alerts_section, flags=re.MULTILINE)
    for rule in rules():
        name, annotations = rule["alert"], rule["annotations"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description", "runbook_url"} <= annotations.keys(), name
        # GitHub's anchor of the heading "### RunsyncSourceFailing" is "#runsyncsourcefailing".
        assert annotations["runbook_url"] == f"deploy/README.md#{name.lower()}"
        assert name in headings, f"deploy/README.md has no runbook section '### {name}'"
        # An alert about a source (and stream) says which, and the figure it fired on.
        kept = re.search(r"\bby \(([^)]*)\)", rule["expr"])
        for label in {"source", "stream"} & set(kept.group(1).split(", ") if kept else ()):
            for text in (annotations["summary"], annotations["description"]):
                assert f"{{{{ $labels.{label} }}}}" in text, (name, label)
        if kept:
            assert "$value" in annotations["description"], name
    assert set(headings) == {rule["alert"] for rule in rules()}


# What the daemon serves, minute by minute, fed to promtool as its input: the rules read the
# series a real Metrics object makes, with the labels it gives them.

T0 = datetime(1970, 1, 3, tzinfo=UTC)  # promtool's time starts at the Unix epoch
T0_MINUTES = int(T0.timestamp() // 60)
TARGET = {"job": "runsync", "instance": "runsync-0:9464"}


class Daemon:
    """A daemon's Metrics and PassOutcomes on a clock the test moves, told of each pass as
    `runsync run` tells them: sync.run_pass counts it, the daemon's job records its outcome."""

    def __init__(self) -> None:
        self.now = T0
        self.meters = metrics.Metrics()
        self.outcomes = health.PassOutcomes(timedelta(minutes=15), clock=lambda: self.now)
        self.meters.outcomes(self.outcomes)  # as scheduler._serve does, with the schedules
        self.meters.schedule("apify", "incremental", timedelta(minutes=5))
        self.meters.schedule("raker", "incremental/proj_a", timedelta(minutes=1))

    def passed(self, result: PassResult) -> None:
        self.meters.pass_finished(result)
        self.outcomes.record(result.source, result.stream, result.outcome, result.error)


def as_input_series(expositions: list[bytes]) -> list[dict[str, str]]:
    """promtool's input_series (interval 1m) from one exposition a minute from T0: each
    sample's values ('_' where it was not served), with the scrape target's labels."""
    values: dict[tuple[str, frozenset], list[str]] = {}
    for minute, text in enumerate(expositions):
        for (name, labelled), number in samples(text.decode()).items():
            if name.endswith("_created"):
                continue
            series = values.setdefault((name, labelled), ["_"] * len(expositions))
            series[minute] = repr(number)
    found = []
    for (name, labelled), series in sorted(values.items(), key=str):
        text = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted({*labelled, *TARGET.items()}))
        # Nothing from the epoch to T0 ('_xN' is N missing values), then a value a minute.
        found.append(
            {"series": f"{name}{{{text}}}", "values": f"_x{T0_MINUTES} {' '.join(series)}"}
        )
    return found


def test_the_rules_fire_on_what_the_daemon_serves(tmp_path):
    daemon = Daemon()
    upstream = daemon.meters.upstream("apify")
    served = []
    minutes = 40
    for minute in range(minutes + 1):
        daemon.now = T0 + timedelta(minutes=minute)
        # raker's project fails every pass, from the start; apify's passes succeed.
        daemon.passed(PassResult("raker", "incremental/proj_a", Outcome.FAILED, error="HTTP 401"))
        quarantined = 3 if minute == 5 else 0
        daemon.passed(
            PassResult("apify", "incremental", Outcome.SUCCEEDED, quarantined=quarantined)
        )
        daemon.meters.stream_figures(
            "apify",
            "incremental",
            newest_started_at=None,
            open_runs=2,
            oldest_open_at=T0 - timedelta(hours=25),  # open since a day before the start
            last_success_at=daemon.now,
            backfill="backfill",
            backfill_runs_read=500,  # a backfill that stored its last page 50 minutes before
            backfill_idle_seconds=3000 + 60 * minute,
        )
        for code in ["429"] * 50 + ["200"] * 50:  # half: a share a float holds exactly
            upstream.answered(code)
        served.append(daemon.meters.exposition()[0])

    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": as_input_series(served),
                "promql_expr_test": [
                    {
                        "expr": rule["expr"],
                        "eval_time": f"{T0_MINUTES + minutes}m",
                        "exp_samples": EXPECTED.get(rule["alert"], []),
                    }
                    for rule in rules()
                    if not rule["expr"].startswith(("up", "absent"))  # Prometheus's own series
                ],
            }
        ],
    }
    path = tmp_path / "served.test.yml"
    path.write_text(json.dumps(tests, indent=1))  # JSON is YAML
    promtool("test", "rules", path.name, cwd=tmp_path)


def labels(**found: str) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in {"job": "runsync", **found}.items()) + "}"


# At minute 40 of test_the_rules_fire_on_what_the_daemon_serves: what each alert's expression
# gives, series by series; an empty list for those that give nothing (apify's passes succeed:
# RunsyncSourceFailing and RunsyncNoRecentSuccess name raker's stream alone; no lag is recorded).
EXPECTED = {
    "RunsyncSourceFailing": [
        {"labels": labels(source="raker", stream="incremental/proj_a"), "value": 40 * 60}
    ],
    "RunsyncNoRecentSuccess": [
        {"labels": labels(source="raker", stream="incremental/proj_a"), "value": 40 * 60}
    ],
    "RunsyncRunsStuckOpen": [
        {"labels": labels(source="apify", stream="incremental"), "value": 25 * 3600 + 40 * 60}
    ],
    "RunsyncBackfillStalled": [
        {"labels": labels(source="apify", stream="backfill"), "value": 3000 + 60 * 40}
    ],
    "RunsyncRateLimited": [{"labels": labels(source="apify"), "value": 0.5}],
    "RunsyncQuarantineGrowing": [
        {"labels": labels(source="apify", stream="incremental"), "value": 3}
    ],
}
