"""The daemon's /metrics and /readyz: the daemon as a subprocess, real Postgres, the simulator."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import helpers
import pytest
from aiohttp import web
from helpers import (
    TOKEN,
    begin_on_empty_history,
    config_toml,
    interrupted_pass,
    samples,
    source_toml,
    spawn,
    stored_runs,
    value,
)
from prometheus_client.parser import text_string_to_metric_families

from worker import health, http, metrics, runtime, scheduler, sync

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as client, client.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.text()


async def eventually(check, seconds: float = 20.0):
    """Polls `check` until it returns something true, and returns that; not listening yet is false."""
    return await helpers.eventually(check, seconds, ignoring=(aiohttp.ClientError,))


@pytest.mark.process
async def test_the_daemon_serves_health_readiness_and_metrics(
    world, sim, db, database_url, tmp_path
):
    for i in range(120):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(minutes=i))
    world.add_runs(4, status="RUNNING")
    port = free_port()
    path = tmp_path / "daemon.toml"
    # Once an hour: the pass at start is the only one, so its figures can be checked exactly.
    path.write_text(
        config_toml(
            source_toml("apify", sim.base_url, page_size=50, every="1h"), listen=f"127.0.0.1:{port}"
        )
    )
    pipe = asyncio.subprocess.PIPE
    spawned = time.time()
    daemon = await spawn(database_url, "--config", str(path), "run", stdout=pipe, stderr=pipe)
    try:
        assert await eventually(lambda: get(port, "/healthz")) == (200, '{"status": "ok"}')

        async def scraped():
            status, text = await get(port, "/metrics")
            found = samples(text)
            done = value(
                found,
                "runsync_passes_total",
                source="apify",
                stream="incremental",
                outcome="succeeded",
            )
            # The daemon's job records the outcome for /readyz once the stream's sweeps are done.
            recorded = value(found, "runsync_stream_failing", source="apify", stream="incremental")
            return status == 200 and done == 1 and recorded is not None and found

        scraping = time.time()
        found = await eventually(scraped)
        scraped_by = time.time()
        stream = {"source": "apify", "stream": "incremental"}
        # The pass at start is the stream's first: it copies the history first, as a pass of the
        # backfill stream counted under its own label, then goes on from the copy's end.
        copy = {"source": "apify", "stream": "backfill"}
        rows = await stored_runs(db)
        assert len(rows) == 124
        assert value(found, "runsync_passes_total", **copy, outcome="succeeded") == 1
        assert value(found, "runsync_runs_inserted_total", **copy) == 124
        assert value(found, "runsync_runs_inserted_total", **stream) == 0
        assert value(found, "runsync_runs_updated_total", **copy) == 0
        assert value(found, "runsync_runs_updated_total", **stream) == 0
        async with db.pool.acquire() as conn:
            copied, record = await conn.fetch(
                "SELECT stream, pages, items FROM runsync.passes ORDER BY id"
            )
        assert (copied["stream"], record["stream"]) == ("backfill", "incremental")
        # The copy: one window (124 runs are too few to cut), pages of 50, 50 and 24.
        assert value(found, "runsync_pages_total", **copy) == copied["pages"] == 3
        assert value(found, "runsync_items_read_total", **copy) == copied["items"] == 124
        # The incremental pass: the newest page from the copy's end less the overlap (the 4 open
        # runs, started just now), and the list of open runs.
        assert value(found, "runsync_pages_total", **stream) == record["pages"] == 1 + 1
        assert record["items"] == 4  # the list walk's; the metric counts the open list's too
        assert value(found, "runsync_items_read_total", **stream) == 4 + 4
        # Every request the simulator served, each answered 200, and nothing else.
        requests = {
            dict(labels)["code"]: count
            for (name, labels), count in found.items()
            if name == "runsync_http_requests_total"
        }
        assert requests == {"200": sum(sim.requests.values())} and requests["200"] >= 3
        assert value(found, "runsync_http_retries_total", source="apify") == 0
        # The budgets, at their defaults; nothing waits now that the passes have ended.
        assert value(found, "runsync_db_connections_limit") == 10
        assert value(found, "runsync_passes_limit") == 32
        assert value(found, "runsync_passes_queued") == 0
        assert value(found, "runsync_db_connections_waiting") == 0
        assert value(found, "runsync_pass_waits_total") == 0
        assert 0 <= value(found, "runsync_db_connections_in_use") <= 10
        assert value(found, "runsync_open_runs", **stream) == 4
        newest = max(row["started_at"] for row in rows.values()).timestamp()
        # Now minus the newest run's start, now being the scrape's moment; the pass's end. (By
        # the order of events, not by how long they took.)
        lag = value(found, "runsync_lag_seconds", **stream)
        assert scraping - newest <= lag <= scraped_by - newest
        last_success = value(found, "runsync_last_success_timestamp_seconds", **stream)
        assert spawned <= last_success <= scraped_by
        assert value(found, "runsync_pass_duration_seconds_count", **stream) == 1
        assert value(found, "runsync_pass_duration_seconds_count", **copy) == 1
        # What the alert rules (deploy/prometheus) compare against: the schedule, the threshold
        # of /readyz, the daemon's start, and the stream's success as the database records it.
        assert value(found, "runsync_stream_interval_seconds", **stream) == 3600
        assert value(found, "runsync_unhealthy_after_seconds") == 15 * 60
        assert spawned <= value(found, "runsync_daemon_start_timestamp_seconds") <= scraped_by
        assert value(found, "runsync_stream_failing", **stream) == 0
        assert value(found, "runsync_stream_failing_since_timestamp_seconds", **stream) is None
        async with db.pool.acquire() as conn:
            succeeded = await conn.fetchval(
                "SELECT finished_at FROM runsync.passes WHERE stream = 'incremental'"
            )
        stored_success = value(found, "runsync_stream_last_success_timestamp_seconds", **stream)
        assert stored_success == succeeded.timestamp()
        oldest_open = min(row["started_at"] for row in rows.values() if not row["is_terminal"])
        assert value(found, "runsync_oldest_open_run_timestamp_seconds", **stream) == (
            oldest_open.timestamp()
        )
        assert await get(port, "/readyz") == (200, '{"status": "ok"}')
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(daemon.communicate(), 30)

    assert daemon.returncode == 0, err.decode()
    events = [
        json.loads(line)["event"] for line in err.decode().splitlines() if line.startswith("{")
    ]
    assert "stop requested" in events and events[-1] == "daemon stopped"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def test_a_failing_stream_is_unready_only_after_the_threshold_since_its_last_success():
    clock = Clock(T0)
    outcomes = health.PassOutcomes(timedelta(seconds=60), clock=clock)
    outcomes.record("apify", "incremental", "succeeded")  # at T0
    clock.advance(50)
    outcomes.record("apify", "incremental", "failed", "HTTP 401")
    clock.advance(10)  # 60 s after the success: failing, but not for longer than the threshold
    assert outcomes.failing() == []
    clock.advance(0.001)
    assert outcomes.failing() == [
        {
            "source": "apify",
            "stream": "incremental",
            "since": T0.isoformat(),
            "last_success_at": T0.isoformat(),
            "error": "HTTP 401",
        }
    ]
    # A success makes it ready again at once, and the threshold counts from that success.
    outcomes.record("apify", "incremental", "succeeded")
    assert outcomes.failing() == []
    outcomes.record("apify", "incremental", "failed", "HTTP 503")
    clock.advance(60)
    assert outcomes.failing() == []
    clock.advance(1)
    assert [f["since"] for f in outcomes.failing()] == [
        (T0 + timedelta(seconds=60.001)).isoformat()
    ]


def test_a_stream_that_never_succeeded_counts_from_the_daemons_start():
    clock = Clock(T0)
    outcomes = health.PassOutcomes(timedelta(seconds=60), clock=clock)
    clock.advance(59)
    outcomes.record("raker", "incremental/proj_a", "failed", "HTTP 401")
    outcomes.record("raker", "incremental/proj_b", "succeeded")
    clock.advance(1)
    assert outcomes.failing() == []  # 60 s since the start: not longer than the threshold
    clock.advance(1)
    (failing,) = outcomes.failing()
    assert failing == {
        "source": "raker",
        "stream": "incremental/proj_a",
        "since": T0.isoformat(),
        "last_success_at": None,
        "error": "HTTP 401",
    }


def test_skipped_and_interrupted_passes_change_nothing():
    clock = Clock(T0)
    outcomes = health.PassOutcomes(timedelta(seconds=60), clock=clock)
    outcomes.record("apify", "incremental", "failed", "HTTP 500")
    outcomes.record("apify", "incremental", "skipped")
    outcomes.record("apify", "incremental", "interrupted")
    clock.advance(61)
    assert [f["error"] for f in outcomes.failing()] == ["HTTP 500"]  # still failing, as it was
    # A stream whose only passes were skipped is not failing, however long ago the start was.
    outcomes.record("good", "incremental", "skipped")
    clock.advance(3600)
    assert [f["source"] for f in outcomes.failing()] == ["apify"]


def test_the_metrics_say_which_streams_fail_since_when_as_readyz_judges():
    clock = Clock(T0)
    outcomes = health.PassOutcomes(timedelta(seconds=60), clock=clock)
    meters = metrics.Metrics()
    meters.outcomes(outcomes)
    found = samples(meters.exposition()[0].decode())
    assert value(found, "runsync_unhealthy_after_seconds") == 60
    assert value(found, "runsync_daemon_start_timestamp_seconds") == T0.timestamp()
    assert not [name for name, _ in found if name.startswith("runsync_stream_failing")]

    outcomes.record("apify", "incremental", "succeeded")  # at T0
    clock.advance(30)
    outcomes.record("apify", "incremental", "failed", "HTTP 500")
    outcomes.record("raker", "incremental/proj_a", "failed", "HTTP 401")  # never succeeded
    outcomes.record("raker", "incremental/proj_b", "skipped")
    found = samples(meters.exposition()[0].decode())
    failing = {
        dict(labels)["stream"]: count
        for (name, labels), count in found.items()
        if name == "runsync_stream_failing"
    }
    assert failing == {"incremental": 1, "incremental/proj_a": 1, "incremental/proj_b": 0}
    since = "runsync_stream_failing_since_timestamp_seconds"
    # Since the last success, or the daemon's start: what /readyz counts from.
    assert value(found, since, source="apify", stream="incremental") == T0.timestamp()
    assert value(found, since, source="raker", stream="incremental/proj_a") == T0.timestamp()
    assert value(found, since, source="raker", stream="incremental/proj_b") is None

    clock.advance(30)
    outcomes.record("apify", "incremental", "succeeded")
    found = samples(meters.exposition()[0].decode())
    assert value(found, "runsync_stream_failing", source="apify", stream="incremental") == 0
    assert value(found, since, source="apify", stream="incremental") is None


def test_a_streams_schedule_is_exported_as_its_longest_interval():
    meters = metrics.Metrics()
    meters.schedule("apify", "incremental", timedelta(minutes=5))
    meters.schedule("raker", "incremental/proj_a", timedelta(days=3))
    found = samples(meters.exposition()[0].decode())
    name = "runsync_stream_interval_seconds"
    assert value(found, name, source="apify", stream="incremental") == 300
    assert value(found, name, source="raker", stream="incremental/proj_a") == 3 * 86400


async def test_readyz_names_a_source_failing_longer_than_the_threshold(
    sim, world, db, write_config
):
    """The daemon's /readyz says which source fails and why. When, exactly, is the clocked test's
    above: here only what a loaded machine cannot change (no bound on how fast it turns)."""
    world.add_runs(3, status="SUCCEEDED", started_at=T0)
    port = free_port()
    text = config_toml(
        source_toml("good", sim.base_url),
        source_toml("revoked", sim.base_url, token_env="OLD_TOKEN"),
        listen=f"127.0.0.1:{port}",
    )
    settings = write_config(
        text.replace("[http]\n", '[http]\nunhealthy_after = "1s"\n'),
        env={"APIFY_TOKEN": TOKEN, "OLD_TOKEN": "revoked-token-0000"},
    )
    stop = asyncio.Event()
    started = datetime.now(UTC)
    daemon = asyncio.create_task(scheduler.run_daemon(settings, stop=stop, install_signals=False))
    try:

        async def unready():
            status, text = await get(port, "/readyz")
            return status == 503 and json.loads(text)

        body = await eventually(unready)
        seen_unready = datetime.now(UTC)
        assert body["reason"] == "failing for longer than 1s: revoked"
        (failing,) = body["failing"]
        assert failing["source"] == "revoked" and failing["last_success_at"] is None
        assert failing["stream"] == "incremental"  # the pass that failed in its first copy
        assert "HTTP 401" in failing["error"] and "revoked-token-0000" not in json.dumps(body)
        # A source that never succeeded counts from the daemon's start.
        assert started <= datetime.fromisoformat(failing["since"]) <= seen_unready

        async def good_succeeded():
            found = samples((await get(port, "/metrics"))[1])
            labels = {"source": "good", "stream": "incremental", "outcome": "succeeded"}
            return value(found, "runsync_passes_total", **labels)

        await eventually(good_succeeded)
        _, text = await get(port, "/metrics")
        found = samples(text)
        assert value(found, "runsync_http_requests_total", source="revoked", code="401") >= 1
    finally:
        stop.set()
        assert await asyncio.wait_for(daemon, 15) == 0


async def test_a_client_reports_every_attempt_to_its_observer():
    answers = [
        web.json_response({}, status=429, headers={"Retry-After": "0"}),
        web.json_response({}, status=503),
        web.json_response({"ok": True}),
        web.json_response({"error": "nope"}, status=404),
    ]

    async def handle(_request):
        return answers.pop(0)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    meters = metrics.Metrics()
    backoff = http.Backoff(retries=3, base=0.01, cap=0.02)
    try:
        async with http.Client(
            base, "t0ken", name="x", backoff=backoff, observer=meters.upstream("x")
        ) as client:
            await client.get_json("/a")  # 429, 503, then 200
            with pytest.raises(http.UpstreamError):
                await client.get_json("/b")  # 404: not retried
        async with http.Client(
            f"http://127.0.0.1:{free_port()}",
            "t0ken",
            name="y",
            backoff=backoff,
            observer=meters.upstream("y"),
        ) as nobody:
            with pytest.raises(http.UpstreamError):
                await nobody.get_json("/c")  # nothing listens: no status code at all
    finally:
        await runner.cleanup()

    found = samples(meters.exposition()[0].decode())
    codes = {
        (dict(labels)["source"], dict(labels)["code"]): count
        for (name, labels), count in found.items()
        if name == "runsync_http_requests_total"
    }
    assert codes == {
        ("x", "429"): 1,
        ("x", "503"): 1,
        ("x", "200"): 1,
        ("x", "404"): 1,
        ("y", "error"): 4,
    }
    assert value(found, "runsync_http_retries_total", source="x") == 2
    assert value(found, "runsync_http_retries_total", source="y") == 3
    assert value(found, "runsync_http_rate_limited_total", source="x") == 1
    assert value(found, "runsync_http_rate_limited_total", source="y") == 0


def test_each_metrics_object_has_its_own_registry():
    one, other = metrics.Metrics(), metrics.Metrics()
    one.upstream("a").answered("200")
    text = other.exposition()[0].decode()
    assert "runsync_http_requests_total{" not in text
    assert all(f.name.startswith("runsync_") for f in text_string_to_metric_families(text))


async def test_backfill_progress_and_open_runs_come_from_the_database(
    world, sim, db, apify_settings
):
    settings = apify_settings(page_size=10)
    # The incremental stream began before the backfill below: otherwise its next pass would take
    # the unfinished backfill of all of history as its first copy and finish it.
    await begin_on_empty_history(settings)
    world.add_runs(100, status="SUCCEEDED", started_at=T0)
    world.add_runs(2, status="RUNNING", started_at=T0 + timedelta(days=1))
    # All of history walked again (its first, empty, copy is done), and interrupted.
    await interrupted_pass(settings, "apify", after_pages=2, stream=sync.BACKFILL, restart=True)
    meters = metrics.Metrics()

    async def incremental_pass():
        async with runtime.open_runtime(settings, ["apify"]) as rt:
            await sync.run_pass(rt.stream("apify"), rt.store, metrics=meters)
        return samples(meters.exposition()[0].decode())

    async with db.pool.acquire() as conn:  # the interrupted backfill stored its last page 2h ago
        await conn.execute(
            "UPDATE runsync.checkpoints SET updated_at = now() - interval '2 hours'"
            " WHERE kind = 'backfill'"
        )
    found = await incremental_pass()
    async with db.pool.acquire() as conn:
        read = await conn.fetchval(
            "SELECT items FROM runsync.passes WHERE stream = 'backfill' ORDER BY id DESC LIMIT 1"
        )
        succeeded = await conn.fetchval(
            "SELECT finished_at FROM runsync.passes WHERE stream = 'incremental'"
            " AND outcome = 'succeeded' ORDER BY id DESC LIMIT 1"
        )
    assert 0 < read < 100  # interrupted midway
    backfill = {"source": "apify", "stream": "backfill"}
    assert value(found, "runsync_backfill_runs_read", **backfill) == read
    assert 7200 <= value(found, "runsync_backfill_idle_seconds", **backfill) < 7200 + 60
    stream = {"source": "apify", "stream": "incremental"}
    assert value(found, "runsync_open_runs", **stream) == 2
    oldest_open = (T0 + timedelta(days=1)).timestamp()
    assert value(found, "runsync_oldest_open_run_timestamp_seconds", **stream) == oldest_open
    assert value(found, "runsync_stream_last_success_timestamp_seconds", **stream) == (
        succeeded.timestamp()
    )

    async with runtime.open_runtime(settings, ["apify"]) as rt:
        finished = await sync.run_pass(rt.stream("apify"), rt.store, stream=sync.BACKFILL)
    assert finished.outcome == "succeeded"
    world.finish_open()  # the next pass reads the two runs again: two updates
    found = await incremental_pass()
    assert value(found, "runsync_backfill_runs_read", **backfill) is None
    assert value(found, "runsync_backfill_idle_seconds", **backfill) is None
    assert value(found, "runsync_open_runs", **stream) == 0
    assert value(found, "runsync_oldest_open_run_timestamp_seconds", **stream) is None
    assert value(found, "runsync_runs_updated_total", source="apify", stream="incremental") == 2


async def test_the_oldest_open_run_is_the_oldest_start_or_first_sight_of_one_not_started(
    raker, sim, db, raker_settings
):
    settings = raker_settings()
    (old,) = raker.add_runs("proj_a", 1, status="processing", started_at=T0)
    raker.add_runs("proj_a", 1, status="queued")  # no start yet: counted from when it is stored
    raker.add_runs("proj_a", 1, status="completed", started_at=T0 - timedelta(days=1))
    meters = metrics.Metrics()
    stream = {"source": "raker", "stream": "incremental/proj_a"}
    name = "runsync_oldest_open_run_timestamp_seconds"

    await helpers.one_pass(settings, "raker", metrics=meters)
    found = samples(meters.exposition()[0].decode())
    assert value(found, name, **stream) == T0.timestamp()
    assert value(found, "runsync_open_runs", **stream) == 2

    raker.set_status("proj_a", old["id"], "completed")
    before = datetime.now(UTC)
    await helpers.one_pass(settings, "raker", metrics=meters)
    found = samples(meters.exposition()[0].decode())
    async with db.pool.acquire() as conn:
        first_seen = await conn.fetchval(
            "SELECT first_seen_at FROM runsync.runs WHERE started_at IS NULL"
        )
    assert first_seen < before and value(found, name, **stream) == first_seen.timestamp()
    assert value(found, "runsync_open_runs", **stream) == 1
