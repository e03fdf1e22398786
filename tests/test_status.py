"""`runsync status`: per source and per RakerOne project, from real passes and backfills against
the simulator; the table and `--json` carry the same fields."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from helpers import interrupted_pass, one_pass, passes
from rich.console import Console

from worker import console, runtime, sources, store, sync
from worker import status as state

T0 = datetime(2026, 4, 1, tzinfo=UTC)

SOURCE_KEYS = {
    "source", "configured", "watermark", "lag_seconds", "newest_started_at", "runs", "open_runs",
    "last_success_at", "last_success_age_seconds", "last_error_at", "last_error_age_seconds",
    "last_error", "walks_in_flight", "backfills_in_flight", "streams",
    "reconcile_at", "reconcile_age_seconds", "reconcile_requests",
}  # fmt: skip
STREAM_KEYS = (SOURCE_KEYS - {"source", "configured", "walks_in_flight", "backfills_in_flight", "streams"}) | {
    "project", "walk_in_flight", "backfill",
}  # fmt: skip
BACKFILL_KEYS = {
    "state", "since", "until", "windows", "windows_done", "runs_read", "runs_planned", "finished_at"
}  # fmt: skip


def two_sources(sim, write_config):
    """The account's Apify runs (pages of 10), and three RakerOne projects; proj_x does not exist."""
    return write_config(
        f"""
        [[sources]]
        name = "apify"
        kind = "apify"
        token_env = "APIFY_TOKEN"
        base_url = "{sim.base_url}"
        page_size = 10

        [[sources]]
        name = "raker"
        kind = "rakerone"
        token_env = "RAKER_TOKEN"
        base_url = "{sim.base_url}"
        projects = ["proj_a", "proj_b", "proj_x"]
        """
    )


async def status(db, settings) -> list[dict]:
    rows = await db.status(
        [s.name for s in settings.sources],
        {s.name: sources.partitions(s) for s in settings.sources},
    )
    return state.records(rows, datetime.now(UTC))


def table(records: list[dict], capsys) -> list[str]:
    """The table's lines, drawn from the very records `--json` prints."""
    Console(width=200).print(console.status_table(records))
    return capsys.readouterr().out.splitlines()


async def test_per_source_and_per_project(world, raker, sim, db, write_config, capsys):
    now = datetime.now(UTC).replace(microsecond=0)
    world.add_runs(15, status="SUCCEEDED", started_at=now - timedelta(hours=2))
    world.add_runs(2, status="RUNNING", started_at=now - timedelta(minutes=5))
    raker.add_runs("proj_a", 6, status="completed", started_at=now - timedelta(hours=1))
    raker.add_runs("proj_a", 1, status="processing", started_at=now - timedelta(minutes=30))
    raker.add_runs("proj_b", 4, status="needs_review", started_at=now - timedelta(minutes=10))
    settings = two_sources(sim, write_config)
    assert (await one_pass(settings, "apify")).outcome == "succeeded"
    outcomes = {p.stream: p for p in await passes(settings, "raker")}
    assert outcomes["incremental/proj_x"].outcome == "failed"

    apify, raker_status = await status(db, settings)

    assert set(apify) == SOURCE_KEYS and set(raker_status) == SOURCE_KEYS
    for record in (apify, raker_status):
        assert all(set(s) == STREAM_KEYS for s in record["streams"])
    # Apify: one stream, the whole source.
    assert (apify["runs"], apify["open_runs"], apify["last_error"]) == (17, 2, None)
    (stream,) = apify["streams"]
    assert stream["project"] is None and stream["runs"] == 17
    # Its first pass copied the history first: a backfill of all of it, done, in one window.
    copy = stream["backfill"]
    assert (copy["state"], copy["since"], copy["until"], copy["windows"], copy["windows_done"]) == (
        "done", None, None, 1, 1,
    )  # fmt: skip
    assert copy["runs_read"] is None and copy["finished_at"] is not None
    assert apify["backfills_in_flight"] == 0
    assert state.backfill_summary(apify["streams"]) == "done"
    assert 5 * 60 <= apify["lag_seconds"] < 6 * 60 and 0 <= apify["last_success_age_seconds"] < 60
    # RakerOne: the source sums its projects; the missing project is listed with its error.
    by_project = {s["project"]: s for s in raker_status["streams"]}
    assert list(by_project) == ["proj_a", "proj_b", "proj_x"]
    assert [(s["runs"], s["open_runs"]) for s in by_project.values()] == [(7, 1), (4, 4), (0, 0)]
    assert (raker_status["runs"], raker_status["open_runs"]) == (11, 5)
    assert 10 * 60 <= by_project["proj_b"]["lag_seconds"] < 11 * 60
    assert 30 * 60 <= by_project["proj_a"]["lag_seconds"] < 31 * 60
    missing = by_project["proj_x"]
    assert missing["last_success_at"] is None and "404" in missing["last_error"]
    assert by_project["proj_a"]["last_error"] is None and by_project["proj_a"]["last_success_at"]
    assert raker_status["last_error"] == missing["last_error"]
    assert raker_status["watermark"] == min(
        s["watermark"] for s in by_project.values() if s["watermark"]
    )

    lines = table([apify, raker_status], capsys)
    row = {line.split("│")[1].strip(): line for line in lines if line.startswith("│")}
    assert list(row) == ["apify", "raker", "proj_a", "proj_b", "proj_x"]
    assert (
        "17" in row["apify"] and "never" in row["proj_x"] and "answered HTTP 404" in row["proj_x"]
    )
    assert "11" in row["raker"] and "answered HTTP 404" in row["raker"]
    json.dumps([apify, raker_status])  # every value is plain JSON
    # Red while any project fails, even if another succeeded after it; dim once none does.
    later = dict(raker_status, last_success_at=datetime.now(UTC).isoformat())
    assert console._last_error(later, later["streams"]).style == "red"
    recovered = [dict(s, last_success_at=later["last_success_at"]) for s in later["streams"]]
    assert console._last_error(later, recovered).style == "dim"


async def test_backfill_progress_stopped_running_done(world, sim, db, apify_settings):
    for i in range(200):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(minutes=i))
    settings = apify_settings(page_size=10)
    (record,) = await status(db, settings)
    assert record["streams"][0]["backfill"] is None

    # Interrupted: planned in windows (200 runs, pages of 10: five windows), two pages stored
    # (the progress callback hears the plan first).
    await interrupted_pass(settings, "apify", after_pages=3, stream=sync.BACKFILL)
    (record,) = await status(db, settings)
    backfill = record["streams"][0]["backfill"]
    async with db.pool.acquire() as conn:
        stored = await conn.fetchval("SELECT count(*) FROM runsync.runs")
    assert set(backfill) == BACKFILL_KEYS
    assert (backfill["state"], backfill["windows"], backfill["since"], backfill["until"]) == (
        "stopped", 5, None, None,
    )  # fmt: skip
    async with db.pool.acquire() as conn:
        windows = await conn.fetch(
            "SELECT cursor FROM runsync.checkpoints WHERE stream LIKE 'backfill#%'"
        )
    assert backfill["windows_done"] == sum(bool(w["cursor"].get("done")) for w in windows) < 5
    assert stored >= 20 and backfill["runs_read"] == stored  # windows do not overlap
    assert backfill["runs_planned"] == 200  # the upstream's total when the windows were planned
    assert record["backfills_in_flight"] == 1
    assert state.backfill_summary(record["streams"]).startswith(
        f"stopped: {backfill['windows_done']}/5 windows, {stored:,} of 200 runs read"
    )

    # While a process walks it (holds its lock), it is running.
    async with db.lease("apify", "backfill") as lease:
        assert lease is not None
        (record,) = await status(db, settings)
    assert record["streams"][0]["backfill"]["state"] == "running"

    # Resumed to the end: done, with the pass that finished it; what it read counts no more.
    result = await one_pass(settings, stream=sync.BACKFILL)
    assert result.outcome == "succeeded"
    (record,) = await status(db, settings)
    backfill = record["streams"][0]["backfill"]
    assert backfill["state"] == "done" and backfill["windows_done"] == backfill["windows"] == 5
    assert backfill["runs_read"] is None and backfill["finished_at"] is not None
    assert record["backfills_in_flight"] == 0 and record["last_success_at"] is not None

    # A second backfill of another range: its progress starts from nothing.
    await interrupted_pass(
        settings, "apify", after_pages=2, stream=sync.BACKFILL, since=T0 + timedelta(minutes=100)
    )
    (record,) = await status(db, settings)
    backfill = record["streams"][0]["backfill"]
    assert backfill["state"] == "stopped" and backfill["since"].startswith("2026-04-01T01:40")
    assert 10 <= backfill["runs_read"] <= 100


async def test_rakerone_backfill_without_windows(raker, sim, db, raker_settings):
    for i in range(250):
        raker.add_runs("proj_a", 1, status="completed", started_at=T0 + timedelta(minutes=i))
    await interrupted_pass(raker_settings(), "raker", after_pages=1, stream=sync.BACKFILL)

    (record,) = await status(db, raker_settings(projects=("proj_a", "proj_b")))

    streams = {s["project"]: s for s in record["streams"]}
    backfill = streams["proj_a"]["backfill"]
    assert backfill["state"] == "stopped" and backfill["windows"] is None
    assert backfill["runs_read"] == streams["proj_a"]["runs"] >= 100  # pages of 100
    assert streams["proj_b"]["backfill"] is None
    assert state.backfill_summary(record["streams"]) == "1 stopped"


async def test_the_table_shows_an_error_as_text_and_short(db, capsys):
    async with db.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO runsync.passes (source, stream, finished_at, outcome, error) VALUES "
            "('apify', 'incremental', now(), 'failed', $1)",
            "HTTP 400 [bad cursor] " + "x" * 100 + "\nthe upstream's whole body",
        )
    (record,) = state.records(await db.status(["apify"]), datetime.now(UTC))

    lines = table([record], capsys)

    (row,) = [line for line in lines if line.startswith("│ apify")]
    assert "ago: HTTP 400 [bad cursor] xxx" in row and "…" in row and "whole body" not in row
    assert record["last_error"].endswith("whole body")  # --json keeps it whole


async def test_status_lists_the_processes_at_work_and_their_budgets(
    db, sim, apify_settings, capsys
):
    settings = apify_settings()
    async with (
        runtime.open_runtime(settings) as rt,
        rt.store.lease("apify", "incremental") as lease,
    ):
        assert lease is not None
        await rt.store.renew()  # as every third of takeover_after
        rows = await db.processes(settings.takeover_after)
    (record,) = console.process_records(rows)
    assert record["process"] == store.process_name()
    assert record["leases"] == 1 and 0 <= record["renewed_age_seconds"] <= 1
    assert record["connections_limit"] == 10 and record["passes_limit"] == 32
    assert record["connections_peak"] >= 1 and record["passes_queued"] == 0
    Console(width=200).print(console.processes_table([record]))
    lines = capsys.readouterr().out.splitlines()
    assert any(store.process_name() in line and "/10 (peak" in line for line in lines), lines
    # A process that stops takes its row with it.
    assert await db.processes(settings.takeover_after) == []
