"""Logging: one JSON object per line for runsync and stdlib records alike, secrets scrubbed."""

from __future__ import annotations

import json
import logging

import structlog
from helpers import begin_on_empty_history, interrupted_pass, one_pass

from worker import observability, runtime, sources, store, sync


def test_json_lines_with_context_and_no_secrets(capsys):
    observability.configure(level="INFO", json=True)
    observability.redact(["apify_api_TOPSECRET", "pw-42-db"])
    log = structlog.get_logger("runsync.test")

    with structlog.contextvars.bound_contextvars(source="apify", pass_id=7):
        log.info("pass started", url="https://x/?token=apify_api_TOPSECRET")
        logging.getLogger("asyncpg.pool").warning("connection to postgresql://u:pw-42-db@h lost")

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == [
        "pass started",
        "connection to postgresql://u:***@h lost",
    ]
    assert all(line["source"] == "apify" and line["pass_id"] == 7 for line in lines)
    assert lines[0]["url"] == "https://x/?token=***"
    assert {line["logger"] for line in lines} == {"runsync.test", "asyncpg.pool"}
    assert all("timestamp" in line and "level" in line for line in lines)


# The pass-finished line's keys (README, "Logs"), on every outcome.
PASS_KEYS = {
    "event", "level", "logger", "timestamp", "source", "stream", "pass_id", "outcome",
    "pages", "runs", "written", "quarantined", "refreshed", "duration_ms", "cpu_ms",
}  # fmt: skip


def json_lines(capsys) -> list[dict]:
    """Every line written to stderr, each one JSON object (json.loads fails on any other)."""
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def finished_lines(lines: list[dict]) -> list[dict]:
    return [line for line in lines if line["event"].startswith("pass ") and "outcome" in line]


def finished(lines: list[dict]) -> dict:
    (line,) = finished_lines(lines)
    return line


def test_stdlib_records_of_aiohttp_asyncpg_and_apscheduler_are_json_lines(capsys):
    observability.configure(level="INFO", json=True)
    names = ["aiohttp.client", "aiohttp.server", "asyncpg.pool", "apscheduler.scheduler",
             "apscheduler.executors.default"]  # fmt: skip

    with structlog.contextvars.bound_contextvars(source="raker", pass_id=3):
        for name in names:
            logging.getLogger(name).warning("%s said %d", name, 42, extra={"attempt": 2})
        try:
            raise ConnectionResetError("peer went away")
        except ConnectionResetError:
            logging.getLogger("apscheduler.executors.default").exception("Job raised")
    logging.getLogger("apscheduler.scheduler").info("Added job")  # below its WARNING floor

    lines = json_lines(capsys)
    assert [line["logger"] for line in lines] == [*names, "apscheduler.executors.default"]
    for name, line in zip(names, lines, strict=False):
        assert line["event"] == f"{name} said 42" and line["level"] == "warning"
        assert (line["source"], line["pass_id"], line["attempt"]) == ("raker", 3, 2)
        assert line["timestamp"].endswith("Z")
    assert (
        lines[-1]["level"] == "error"
        and "ConnectionResetError: peer went away" in (lines[-1]["exception"])
    )


async def test_the_pass_finished_line_has_stable_keys(world, sim, apify_settings, capsys):
    world.add_runs(23, status="SUCCEEDED")
    world.add_runs(2, status="RUNNING")
    settings = apify_settings(page_size=10)
    observability.configure(level="INFO", json=True)

    result = await one_pass(settings)

    lines = json_lines(capsys)
    # The first pass copies the history first, a backfill pass of its own whose lines say
    # first_copy; then the incremental pass goes on from the copy's end.
    copy, line = finished_lines(lines)
    assert set(copy) == PASS_KEYS | {"first_copy"} and copy["first_copy"] is True
    assert copy["event"] == "pass succeeded" and copy["outcome"] == "succeeded"
    assert (copy["source"], copy["stream"]) == ("apify", "backfill")
    assert copy["pass_id"] not in (None, result.pass_id)
    assert (copy["pages"], copy["runs"], copy["written"]) == (3, 25, 25)  # one window
    assert set(line) == PASS_KEYS
    assert line["event"] == "pass succeeded" and line["outcome"] == "succeeded"
    assert (line["source"], line["stream"], line["pass_id"]) == (
        "apify",
        "incremental",
        result.pass_id,
    )
    # The runs all started just now, within the overlap before the copy's end: the list walk
    # reads the 25 again in 3 pages, and the 2 open ones in the list of open runs; nothing new.
    assert (line["pages"], line["runs"], line["written"]) == (4, 27, 0)
    assert line["duration_ms"] == result.duration_ms >= 0
    assert all(
        each["pass_id"] in (copy["pass_id"], result.pass_id)
        and each.get("first_copy", False) == (each["pass_id"] == copy["pass_id"])
        for each in lines
        if each["logger"] == "runsync.sync"
    )

    # A second pass reads the newest page again (runs), and writes nothing new (written).
    await one_pass(settings)
    line = finished(json_lines(capsys))
    assert line["runs"] > 0 and line["written"] == 0


async def test_failed_and_interrupted_passes_end_with_the_same_keys(
    world, sim, apify_settings, database_url, capsys
):
    settings = apify_settings(page_size=10)
    observability.configure(level="INFO", json=True)
    # The runs arrive after the stream began: the passes below are incremental walks of them (a
    # first pass's copy ends with the same keys and first_copy: see the test above).
    await begin_on_empty_history(settings)
    json_lines(capsys)  # that first pass's lines
    world.add_runs(60, status="SUCCEEDED")

    await interrupted_pass(settings, "apify", after_pages=2)
    line = finished(json_lines(capsys))
    assert set(line) == PASS_KEYS and line["event"] == "pass interrupted"
    assert line["pages"] >= 2 and line["runs"] >= 20

    sim.token = "another-token"  # the upstream refuses ours: HTTP 401
    await one_pass(settings)
    line = finished(json_lines(capsys))
    assert set(line) == PASS_KEYS | {"error"} and line["event"] == "pass failed"
    assert "401" in line["error"] and line["outcome"] == "failed"

    # The database is gone before the pass could start: the same line, with nothing counted.
    closed = await store.Store.open(database_url, columns=sources.columns())
    await closed.close()
    async with runtime.open_runtime(settings, ["apify"]) as rt:
        result = await sync.run_pass(rt.stream("apify"), closed)
    line = finished(json_lines(capsys))
    assert set(line) == PASS_KEYS | {"error"} and line["error"].startswith("database: ")
    assert (line["pass_id"], line["pages"], line["runs"], result.outcome) == (None, 0, 0, "failed")
