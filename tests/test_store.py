"""The store's guarantees: migrations, leases, the connection budget, idempotent upserts."""

from __future__ import annotations

import asyncio
import itertools
import socket
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from helpers import eventually, one_pass, stored_runs

from worker import runtime, sources, sqlfiles, store
from worker.model import Checkpoint, Outcome, Run
from worker.sources import apify

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def test_migrations_are_idempotent_and_safe_from_several_replicas(server_url):
    from conftest import _admin, with_database

    name = "runsync_test_migrate_race"
    await _admin(server_url, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
    url = with_database(server_url, name)
    stores = [await store.Store.open(url, columns=sources.columns()) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(s.migrate() for s in stores))
        # Exactly one replica applied them; the others waited for it and found nothing to do.
        assert sorted(map(len, applied)) == [0, 0, 0, len(sqlfiles.migrations())]
        assert await stores[0].migrate() == []
    finally:
        for s in stores:
            await s.close()
        await _admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_a_lease_is_held_by_one_pass_and_taken_over_once_its_process_is_gone(
    database_url, db
):
    async with db.lease("apify", "incremental") as first:
        assert first is not None
        async with db.lease("apify", "incremental") as second:
            assert second is None  # another pass, of this process or another: it skips
        async with db.lease("apify", "backfill") as other_stream:
            assert other_stream is not None  # a backfill may run beside the incremental pass
        async with db.lease("other", "incremental") as other_source:
            assert other_source is not None
    async with db.lease("apify", "incremental") as again:
        assert again is not None  # given back at the end of the block

    # Another process, whose leases live 1 s unless renewed.
    short = timedelta(seconds=1)
    dying = await store.Store.open(database_url, takeover_after=short, columns=sources.columns())
    other = await store.Store.open(database_url, takeover_after=short, columns=sources.columns())
    try:
        async with dying.lease("apify", "incremental") as held:
            pass_id = await held.start_pass()
            # Renewed every third of a second: it stays held however long the pass takes.
            await asyncio.sleep(2.5)
            async with other.lease("apify", "incremental") as taken:
                assert taken is None
            dying._renewing.cancel()  # the process stops renewing: it died, or froze

            async def taken_over() -> bool:
                async with other.lease("apify", "incremental") as lease:
                    if lease is None:
                        return False
                    await lease.start_pass()  # closes the pass of the process that is gone
                    return True

            await eventually(taken_over)
            # The process that lost the stream writes nothing more to it.
            run = observation("SUCCEEDED", T0)
            with pytest.raises(store.LeaseLost, match="another process took over"):
                await held.save_page(pass_id, "apify", [run], [], checkpoint=Checkpoint(T0))
            assert held.lost
            await held.finish_pass(pass_id, Outcome.FAILED, "lost")
    finally:
        await dying.close()
        await other.close()
    assert await stored_runs(db, "apify") == {}
    async with db.pool.acquire() as conn:
        outcome = await conn.fetchval("SELECT outcome FROM runsync.passes WHERE id = $1", pass_id)
        checkpoint = await conn.fetchval("SELECT count(*) FROM runsync.checkpoints")
    assert (outcome, checkpoint) == ("abandoned", 0)  # closed by the taker, and it stays so


async def test_a_lease_the_process_could_not_give_back_is_its_own_to_take_again(
    server_url, database_url, db
):
    """The database goes away as a pass ends, so its lease stays until it expires: another
    process waits for that, but this one takes its stream again at once when the database is
    back (else a daemon would skip its own streams for takeover_after after every outage)."""
    from conftest import _admin

    name = urlsplit(database_url).path.lstrip("/")
    owner = await store.Store.open(database_url, columns=sources.columns())
    try:
        async with owner.lease("apify", "incremental") as held:
            assert held is not None
            # No new connection now, and the owner's own are closed as they come back: its
            # release finds no connection to give the lease back on.
            await _admin(server_url, f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            await owner.pool.expire_connections()
        await _admin(server_url, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")

        async def reconnected() -> bool:
            async with db.lease("apify", "incremental") as other:
                return other is None  # another process: the lease has not expired

        assert await eventually(reconnected, ignoring=store.DatabaseError)
        async with owner.lease("apify", "incremental") as again:
            assert again is not None  # its own, taken again at once
        async with db.lease("apify", "incremental") as other:
            assert other is not None  # and given back this time
    finally:
        await owner.close()


def test_a_connection_a_restart_left_half_way_counts_as_a_database_failure():
    """Seen in CI: after the server restarted, the lease's release met asyncpg's
    InternalClientError ("cannot switch to state 12; another operation (2) is in progress") on a
    connection the restart had cut mid-operation. Not counted as the database's failure, it
    crashed the pass and the process forgot its own lease, so the daemon skipped its stream for
    takeover_after. It is a lost connection like the others: the pass fails, the lease is kept
    to be taken again at once (the test above, for a connection refused)."""
    error = asyncpg.exceptions.InternalClientError("cannot switch to state 12")
    assert isinstance(error, store.DatabaseError)


async def test_a_write_holds_its_lease_until_it_commits(database_url, db):
    """A taker waits for a write in flight: the write's transaction holds the lease row (FOR KEY
    SHARE), so the lease cannot change hands between the write's check and its commit."""
    holder = await store.Store.open(database_url, takeover_after=timedelta(seconds=1))
    try:
        async with holder.lease("apify", "incremental") as held:
            holder._renewing.cancel()
            async with held._transaction() as conn:  # a write in flight
                await asyncio.sleep(1.5)  # the lease expires meanwhile
                taking = asyncio.create_task(_take(db, "apify", "incremental"))
                await asyncio.sleep(0.5)
                assert not taking.done()  # the taker waits for the commit
                await conn.execute("SELECT 1")
            assert await taking  # then takes it
            with pytest.raises(store.LeaseLost):
                async with held._transaction():
                    pass
    finally:
        await holder.close()


async def _take(db: store.Store, source: str, stream: str) -> bool:
    async with db.lease(source, stream) as lease:
        return lease is not None


async def test_a_process_opens_no_more_connections_than_its_budget(database_url):
    """Many passes' reads and writes at once share the budget: they wait for a connection, none
    fails, and the server never sees more than the budget from the process."""
    budget = store.Store(
        await asyncpg.create_pool(database_url, min_size=1, max_size=3), max_connections=3
    )
    seen = []

    async def count() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            while True:
                seen.append(
                    await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND pid <> pg_backend_pid()"
                    )
                )
                await asyncio.sleep(0.01)
        finally:
            await conn.close()

    counting = asyncio.create_task(count())
    try:

        async def one_pass(index: int) -> None:
            async with budget.lease("s", f"stream{index}") as lease:
                pass_id = await lease.start_pass()
                await lease.save_checkpoint(Checkpoint(T0))
                await lease.finish_pass(pass_id, Outcome.SUCCEEDED)

        await asyncio.gather(*(one_pass(i) for i in range(40)))
        assert budget.connections.peak == 3 and budget.connections.waits > 0
        assert budget.connections.in_use == 0 and budget.connections.waiting == 0
    finally:
        counting.cancel()
        await budget.close()
    assert seen and max(seen) <= 3
    async with asyncpg.create_pool(database_url, min_size=1, max_size=1) as pool:
        assert (
            await pool.fetchval("SELECT count(*) FROM runsync.passes WHERE outcome = 'succeeded'")
            == 40
        )


async def test_concurrent_passes_of_one_source_run_once(world, sim, db, apify_settings):
    world.add_runs(40, status="SUCCEEDED", started_at=T0)
    settings = apify_settings(page_size=5)
    results = await asyncio.gather(*(one_pass(settings) for _ in range(3)))
    outcomes = sorted(r.outcome for r in results)
    assert outcomes.count("succeeded") >= 1
    assert set(outcomes) <= {"succeeded", "skipped"}
    assert len(await stored_runs(db)) == 40
    # Upserts would make the rows right without any lock: the pass records show the lock held,
    # one pass after the other, never two at once. The stream's first pass copies the history
    # first, under the lock of the backfill stream (whose records are its own): the copies, one
    # after the other, read the history once between them; so do the incremental passes.
    async with db.pool.acquire() as conn:
        records = await conn.fetch(
            "SELECT stream, started_at, finished_at, items FROM runsync.passes ORDER BY started_at"
        )
    incremental = [r for r in records if r["stream"] == "incremental"]
    copies = [r for r in records if r["stream"] == "backfill"]
    assert len(incremental) + len(copies) == len(records)
    assert len(incremental) == outcomes.count("succeeded")
    assert copies and sum(r["items"] for r in copies) == 40
    for stream in (incremental, copies):
        for earlier, later in itertools.pairwise(stream):
            assert later["started_at"] >= earlier["finished_at"]


def observation(status: str, at: datetime, **fields) -> Run:
    fields.setdefault("columns", (None,) * len(apify.COLUMNS))
    return Run(
        run_id="r1", status=status, is_terminal=status == "SUCCEEDED", started_at=T0,
        finished_at=None, raw=f'{{"id": "r1", "status": "{status}"}}', observed_at=at, **fields,
    )  # fmt: skip


async def test_upserts_are_idempotent_and_the_latest_observation_wins(db):
    async with db.lease("s", "test") as lease:
        pass_id = await lease.start_pass()
        first = await lease.save_refreshed(pass_id, "apify", [observation("RUNNING", T0)], [], [])
        again = await lease.save_refreshed(pass_id, "apify", [observation("RUNNING", T0)], [], [])
        later = observation("SUCCEEDED", T0 + timedelta(seconds=2))
        newer = await lease.save_refreshed(pass_id, "apify", [later], [], [])
        older = observation("RUNNING", T0 + timedelta(seconds=1))
        stale = await lease.save_refreshed(pass_id, "apify", [older], [], [])

    assert (first.inserted, again.runs, newer.updated, stale.runs) == (1, 0, 1, 0)
    rows = await stored_runs(db, "s")
    assert rows["r1"]["status"] == "SUCCEEDED"
    async with db.pool.acquire() as conn:
        history = await conn.fetch("SELECT previous_status, status FROM runsync.run_status_history")
    assert [tuple(h) for h in history] == [("RUNNING", "SUCCEEDED")]


async def test_the_daemon_syncs_on_schedule_and_stops_cleanly(world, sim, db, apify_settings):
    from worker import scheduler

    world.add_runs(12, status="RUNNING", started_at=T0)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = apify_settings(page_size=5, listen=f"127.0.0.1:{port}")  # every = "1s"
    stop = asyncio.Event()
    daemon = asyncio.create_task(scheduler.run_daemon(settings, stop=stop, install_signals=False))

    async def until(condition):
        async with asyncio.timeout(10):
            while not await condition():  # noqa: ASYNC110 - the condition lives in Postgres
                await asyncio.sleep(0.05)

    async def stored(n):
        return len(await stored_runs(db)) == n

    await until(lambda: stored(12))
    world.finish_open()
    world.add_runs(3, status="SUCCEEDED")

    async def all_terminal():
        rows = await stored_runs(db)
        return len(rows) == 15 and all(r["is_terminal"] for r in rows.values())

    await until(all_terminal)  # a later tick picked up the changes
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
        for path in ("/healthz", "/readyz"):
            async with client.get(path) as response:
                assert response.status == 200, path
                assert (await response.json())["status"] == "ok"
    stop.set()
    assert await asyncio.wait_for(daemon, 10) == 0
    async with db.pool.acquire() as conn:
        outcomes = {r["outcome"] for r in await conn.fetch("SELECT outcome FROM runsync.passes")}
    assert outcomes <= {"succeeded", "interrupted"}


async def test_status_reports_each_source(world, sim, db, apify_settings):
    world.add_runs(7, status="SUCCEEDED", started_at=T0)
    world.add_runs(2, status="RUNNING")
    settings = apify_settings()
    await one_pass(settings)
    async with runtime.open_store(settings) as opened:
        (row,) = await opened.status(["apify"])
    assert (row["runs"], row["open_runs"], row["configured"]) == (9, 2, True)
    assert row["last_success_at"] is not None and row["last_error"] is None
    assert row["watermark"] == max(r["started_at"] for r in (await stored_runs(db)).values())


def test_an_upstreams_staging_table_and_merge_come_from_its_columns():
    from worker.model import Column

    tables = store.run_tables(sources.columns())
    assert set(tables) == set(sources.UPSTREAMS)
    github = tables["github"]
    assert github.columns[-2:] == ("github_created_at", "github_updated_at")
    assert "github_attempt int4" in github.create and "incoming_github" in github.merge
    assert "usage_total_usd float8" in tables["apify"].create
    assert "i.usage_total_usd::text::numeric" in tables["apify"].merge  # staged, then cast
    assert "github" not in tables["apify"].merge  # no upstream writes another's columns
    with pytest.raises(ValueError, match="typed column status is a shared one"):
        store.RunTable("new", [Column("status", "text")], sqlfiles.queries())
    with pytest.raises(ValueError, match="not a plain name"):
        store.RunTable("new", [Column("x; DROP TABLE y", "text")], sqlfiles.queries())
    with pytest.raises(ValueError, match="does not hold its 9 typed columns"):
        tables["apify"].records([observation("RUNNING", T0, columns=())])
