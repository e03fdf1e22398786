"""runsync's Postgres: the connection budget, migrations, the streams' leases, and the writes of
pages and checkpoints.

A process opens at most `max_connections` connections, whatever the number of sources: a pass
takes one only for each read or write, never while it waits on the upstream. A stream is walked
by the process holding its lease (a row in runsync.leases, renewed while the pass goes on), and
every write of a pass checks, in its own transaction, that the lease is still its own.

The store knows Postgres and nothing of HTTP. Every statement comes from sql/queries.sql by name.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import Enum
from typing import Any

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from worker import sqlfiles
from worker.model import Checkpoint, Column, Outcome, Rejected, Run, Stream

log = structlog.get_logger("runsync.store")

# The staging tables' shared columns: a Run's fields but `columns`, which each upstream's typed
# columns take the place of (RunTable). A run's partition is stored in runs.project.
_SHARED_COLUMNS = tuple("project" if f == "partition" else f for f in Run._fields[:-1])

MAX_CONNECTIONS = 10  # the default budget of one process
# A server out of connections (other clients, replicas whose budgets add up past its limit) or
# starting up refuses a new one: wait for one of ours to come back, or for the server, this long.
FULL_SERVER_PATIENCE = 120.0
_FULL_SERVER = (asyncpg.TooManyConnectionsError, asyncpg.CannotConnectNowError)
TAKEOVER_AFTER = timedelta(seconds=30)  # the default life of a lease not renewed


class LeaseLost(Exception):
    """Another process took the stream over (this one had not renewed its lease in time)."""


# What a read or write that failed on the database's side raises. asyncpg's InternalClientError
# ("cannot switch to state ...; another operation is in progress") comes from a connection the
# server's restart left half-way through an operation: the connection is lost, as with the others.
DatabaseError = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    LeaseLost,
)

# What may pass by itself: the server down, starting or stopping, out of connections, or out of
# reach. Anything else (a wrong password, user or database name; a migration refused) is a
# mistake that waiting will not mend.
_TRANSIENT = (
    OSError,  # refused, reset, no route, a name that does not resolve (yet)
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08, the connection lost on the way
    asyncpg.InsufficientResourcesError,  # class 53: too many clients already, disk full
    asyncpg.OperatorInterventionError,  # class 57: starting up, shutting down
)


def may_pass(error: BaseException) -> bool:
    """Whether a database error may pass by itself (waiting is worth it), or is a mistake."""
    return isinstance(error, _TRANSIENT)


# What the database says of one bad run, not of the database: data that cannot be stored as it is
# (class 22) or past a limit (class 54: an index row too large, for an id of many kilobytes).
_REFUSED_RUN = (asyncpg.DataError, asyncpg.ProgramLimitExceededError)


class Keep(Enum):  # one member, so that `checkpoint is not KEEP` narrows the type
    KEEP = "keep"


KEEP = Keep.KEEP  # save_page: leave the stream's checkpoint as it is


@dataclass(frozen=True, slots=True)
class Written:
    """What a write changed: rows inserted, rows updated, items quarantined."""

    inserted: int = 0
    updated: int = 0
    quarantined: int = 0

    @property
    def runs(self) -> int:
        return self.inserted + self.updated


class RunTable:
    """Where one upstream's runs are staged, and the statement that merges them into runsync.runs:
    the shared columns, then the upstream's typed columns (its migration made them)."""

    def __init__(self, upstream: str, columns: Sequence[Column], queries: dict[str, str]) -> None:
        Column(upstream, "text")  # the kind names a table: a plain name, or ValueError
        names = [c.name for c in columns]
        if clash := set(names) & set(_SHARED_COLUMNS):
            raise ValueError(
                f"upstream {upstream}: typed column {sorted(clash)[0]} is a shared one"
            )
        self.upstream = upstream
        self.table = f"incoming_{upstream}"
        self.columns = (*_SHARED_COLUMNS, *names)  # the order of a Run, its `columns` spread
        kept = (
            "CASE WHEN EXCLUDED.partial AND EXCLUDED.status = r.status"
            " THEN coalesce(EXCLUDED.{0}, r.{0}) ELSE EXCLUDED.{0} END"
        )
        parts = {
            "{table}": self.table,
            "{columns}": "".join(f", {name}" for name in names),
            "{values}": "".join(", " + c.cast.replace("{}", f"i.{c.name}") for c in columns),
            "{updates}": "".join(f"\n    {name} = {kept.format(name)}," for name in names),
        }
        self.create = _fill(queries["create_incoming_runs"], {
            "{table}": self.table,
            "{columns}": "".join(f", {c.name} {c.staged}" for c in columns),
        })  # fmt: skip
        self.merge = _fill(queries["merge_incoming_runs"], parts)
        self.empty = _fill(queries["empty_incoming_runs"], parts)

    def records(self, runs: Sequence[Run]) -> list[tuple[Any, ...]]:
        """The runs as the staging table's rows."""
        rows = [run[:-1] + run[-1] for run in runs]
        width = len(self.columns)
        if any(len(row) != width for row in rows):
            raise ValueError(
                f"a run of {self.upstream} does not hold its {width - len(_SHARED_COLUMNS)} typed columns"
            )
        return rows


def _fill(template: str, parts: dict[str, str]) -> str:
    for placeholder, text in parts.items():
        template = template.replace(placeholder, text)
    return template


def run_tables(columns: Mapping[str, Sequence[Column]]) -> dict[str, RunTable]:
    queries = sqlfiles.queries()
    return {upstream: RunTable(upstream, typed, queries) for upstream, typed in columns.items()}


async def _init_connection(conn: asyncpg.Connection, tables: Sequence[RunTable] = ()) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
    )
    for table in tables:
        await conn.execute(table.create)


class Connections:
    """The connection budget's figures: in use, waited for, the oldest wait."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self.in_use = 0
        self.peak = 0  # the most in use at once
        self.waits = 0  # acquisitions that found the budget spent
        self.waited_seconds = 0.0
        self.refused = 0  # new connections the server refused (too many clients, starting up)
        self._waiting: dict[object, float] = {}  # each waiter's start

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def oldest_wait(self) -> float:
        """Seconds the longest waiting acquisition has waited so far (0: none waits)."""
        return self.clock() - min(self._waiting.values()) if self._waiting else 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "connections_limit": self.limit,
            "connections_in_use": self.in_use,
            "connections_peak": self.peak,
            "connection_waits": self.waits,
            "connections_waiting": self.waiting,
            "connection_oldest_wait_seconds": round(self.oldest_wait(), 3),
            "connections_refused": self.refused,
        }


def process_name() -> str:
    """How this process is named in leases, in runsync.processes and in pg_stat_activity."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Store:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_connections: int = MAX_CONNECTIONS,
        takeover_after: timedelta = TAKEOVER_AFTER,
        holder: str | None = None,
        tables: Mapping[str, RunTable] | None = None,
    ) -> None:
        self.pool = pool
        self.q = sqlfiles.queries()
        self.tables = dict(tables or {})  # per upstream: where its runs are staged and merged
        self.holder = holder or process_name()
        self.takeover_after = takeover_after
        self.connections = Connections(max_connections)
        self._held: dict[uuid.UUID, Lease] = {}  # the leases this process holds, by token
        # Per (source, stream): a token of this process's that it could not give back.
        self._unreleased: dict[tuple[str, str], uuid.UUID] = {}
        self._renewing: asyncio.Task[None] | None = None
        self._figures: Callable[[], dict[str, Any]] = dict

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        max_connections: int = MAX_CONNECTIONS,
        takeover_after: timedelta = TAKEOVER_AFTER,
        columns: Mapping[str, Sequence[Column]] | None = None,
    ) -> Store:
        """A store that opens at most `max_connections` connections to `url`, and writes the
        runs of the upstreams in `columns` (each with its typed columns: sources.columns())."""
        holder = process_name()
        tables = run_tables(columns or {})
        pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=max_connections,
            init=functools.partial(_init_connection, tables=list(tables.values())),
            command_timeout=300,
            # Who holds a connection, in pg_stat_activity (the server cuts it at 63 bytes).
            server_settings={"application_name": f"runsync {holder}"},
        )
        return cls(pool, max_connections=max_connections, takeover_after=takeover_after,
                   holder=holder, tables=tables)  # fmt: skip

    async def close(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            with suppress(asyncio.CancelledError):
                await self._renewing
            with suppress(*DatabaseError, TimeoutError):
                async with self.connection(wait=5) as conn:
                    await conn.execute(self.q["forget_process"], self.holder)
        await self.pool.close()

    @asynccontextmanager
    async def connection(self, *, wait: float | None = None) -> AsyncIterator[PoolConnectionProxy]:
        """A connection of the budget, for one read or one transaction; waits while all are in
        use (`wait`: at most that many seconds, then TimeoutError)."""
        figures = self.connections
        key, started = object(), figures.clock()
        if figures.in_use >= figures.limit:
            figures.waits += 1
        figures._waiting[key] = started
        try:
            conn = await self._acquire(wait)
        finally:
            del figures._waiting[key]
            figures.waited_seconds += figures.clock() - started
        figures.in_use += 1
        figures.peak = max(figures.peak, figures.in_use)
        try:
            yield conn
        finally:
            figures.in_use -= 1
            await self.pool.release(conn)

    async def _acquire(self, wait: float | None) -> PoolConnectionProxy:
        """A connection of the pool; a server that refuses to open one more is asked again, with
        backoff, while the pool's own connections come and go."""
        patience = FULL_SERVER_PATIENCE if wait is None else wait
        deadline, pause = time.monotonic() + patience, 0.05
        while True:
            left = None if wait is None else max(deadline - time.monotonic(), 0.001)
            try:
                return await self.pool.acquire(timeout=left)
            except _FULL_SERVER as error:
                self.connections.refused += 1
                if time.monotonic() + pause > deadline:
                    raise
                log.debug("the server refused a connection; asking again", error=str(error))
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    def start_renewing(self, figures: Callable[[], dict[str, Any]] | None = None) -> None:
        """Renews this process's leases every third of `takeover_after`, and its row in
        runsync.processes with `figures` (its budgets, for `runsync status`)."""
        if figures is not None:
            self._figures = figures
        if self._renewing is None:
            self._renewing = asyncio.create_task(self._renew_forever(), name="runsync leases")

    async def _renew_forever(self) -> None:
        while True:
            try:
                await self.renew()
            except Exception:  # a bug here must not let every lease of the process expire
                log.exception("renewing the leases failed")
            await asyncio.sleep(self.takeover_after.total_seconds() / 3)

    async def renew(self) -> None:
        """Renews the leases held and the process's row; a lease another process took over is
        marked lost, and its pass's next write fails."""
        tokens = list(self._held)
        figures = {**self.connections.figures(), **self._figures()}
        try:
            async with self.connection(wait=self.takeover_after.total_seconds() / 3) as conn:
                kept = set(tokens)
                if tokens:
                    rows = await conn.fetch(self.q["renew_leases"], tokens, self.takeover_after)
                    kept = {row["token"] for row in rows}
                await conn.execute(self.q["renew_process"], self.holder, figures)
        except (*DatabaseError, TimeoutError) as error:
            log.warning("could not renew the leases", leases=len(tokens), error=str(error))
            return
        for token in set(tokens) - kept:
            lease = self._held.get(token)
            if lease is not None:
                lease.lost = True
                log.warning("lease taken over", source=lease.source, stream=lease.stream)

    async def migrate(self) -> list[str]:
        """Applies the pending migrations in one transaction, one migrator at a time."""
        applied_now = []
        async with self.connection() as conn, conn.transaction():
            await conn.execute(self.q["lock_migrations"])
            await conn.execute(self.q["create_migrations_table"])
            done = {row["version"] for row in await conn.fetch(self.q["applied_migrations"])}
            for migration in sqlfiles.migrations():
                if migration.version in done:
                    continue
                await conn.execute(migration.sql)
                await conn.execute(self.q["record_migration"], migration.version, migration.name)
                applied_now.append(f"{migration.version:04d}_{migration.name}")
        if applied_now:
            log.info("migrations applied", migrations=applied_now)
        return applied_now

    @asynccontextmanager
    async def lease(self, source: str, stream: str) -> AsyncIterator[Lease | None]:
        """The lease of one stream of a source, held until the block ends; None if another
        process (or another pass of this one) holds it. A lease not renewed for `takeover_after`
        (its process died) is free to take."""
        token, kept = uuid.uuid4(), self._unreleased.get((source, stream))
        async with self.connection() as conn:
            taken = await conn.fetchval(
                self.q["take_lease"], source, stream, token, self.holder, self.takeover_after, kept
            )
        if not taken:
            yield None
            return
        self._unreleased.pop((source, stream), None)
        lease = self._held[token] = Lease(self, source, stream, token)
        self.start_renewing()
        try:
            yield lease
        finally:
            del self._held[token]
            try:
                async with self.connection(wait=10) as conn:
                    await conn.execute(self.q["release_lease"], token)
            except Exception as error:
                # Others wait for it to expire; this process takes it again at once, whatever
                # kept it from giving the lease back.
                self._unreleased[(source, stream)] = token
                log.warning("could not give back a lease; it expires by itself",
                            source=source, stream=stream, error=str(error))  # fmt: skip
                if not isinstance(error, (*DatabaseError, TimeoutError)):
                    raise

    async def needs_first_copy(self, source: str, incremental: str, backfill: str) -> bool:
        """Whether an incremental stream has never run and no finished backfill of the whole
        history stands in for it (see sync.covers)."""
        async with self.connection() as conn:
            needs: bool = await conn.fetchval(
                self.q["needs_first_copy"], source, incremental, backfill
            )
            return needs

    async def now(self) -> datetime:
        """The database's clock: what the ages of its timestamps are measured against."""
        async with self.connection() as conn:
            moment: datetime = await conn.fetchval("SELECT now()")
            return moment

    async def ping(self) -> None:
        """Raises when the database cannot answer."""
        async with self.connection(wait=5) as conn:
            await conn.fetchval("SELECT 1")

    async def processes(self, within: timedelta) -> list[dict[str, Any]]:
        """The processes that renewed their row within `within`: holder, started_at, renewed_at,
        figures (their budgets) and leases (held now)."""
        async with self.connection() as conn:
            return [dict(row) for row in await conn.fetch(self.q["processes"], within)]

    async def today(self) -> date:
        """The database's UTC day: where the status page's charts end."""
        async with self.connection() as conn:
            day: date = await conn.fetchval(self.q["chart_today"])
            return day

    async def charts(self, first_day: date, last_day: date) -> dict[str, Any]:
        """The status page's charts' rows for the UTC days first_day to last_day, from the
        analytics views: runs (day, succeeded, failed, open), cost (day, actor_id,
        usage_total_usd) and durations (day, finished_runs, seconds: the 50th, 90th and 99th
        percentiles). One connection, one query after the other."""
        found: dict[str, Any] = {"first_day": first_day, "last_day": last_day}
        async with self.connection() as conn:
            for name in ("runs", "cost", "durations"):
                rows = await conn.fetch(self.q[f"chart_{name}_per_day"], first_day, last_day)
                found[name] = [dict(row) for row in rows]
        return found

    async def status(
        self, sources: Sequence[str], projects: Mapping[str, Sequence[str]] | None = None
    ) -> list[dict[str, Any]]:
        """Per source (the configured ones, then any other the tables know): its figures over all
        its streams, and `streams`, each stream's own (one per RakerOne project, else one).

        `projects`: each source's configured projects, listed even before their first pass.
        """
        configured = [(s, p) for s in sources for p in (projects or {}).get(s) or [""]]
        async with self.connection() as conn:
            known = {row["source"] for row in await conn.fetch(self.q["known_sources"])}
            names = list(dict.fromkeys([*sources, *sorted(known)]))
            found = [
                (r["source"], r["part"]) for r in await conn.fetch(self.q["stream_parts"], names)
            ]
            parts = sorted(set(configured) | set(found))
            stream_names = [
                [Stream(kind, part or None) for _, part in parts]
                for kind in ("incremental", "backfill", "reconcile")
            ]
            rows = await conn.fetch(
                self.q["stream_status"],
                names,
                [s for s, _ in parts],
                [p for _, p in parts],
                *stream_names,
            )
        records = []
        for name in names:
            streams = [dict(row) for row in rows if row["source"] == name]
            failed = [s for s in streams if s["last_error_at"] is not None]
            failure = max(failed, key=lambda s: s["last_error_at"], default={})
            records.append(
                {
                    "source": name,
                    "configured": name in sources,
                    # The laggiest project's: every run started before it is stored, in each one.
                    "watermark": min(filter(None, (s["watermark"] for s in streams)), default=None),
                    "runs": sum(s["runs"] for s in streams),
                    "open_runs": sum(s["open_runs"] for s in streams),
                    "newest_started_at": max(
                        filter(None, (s["newest_started_at"] for s in streams)), default=None
                    ),
                    "last_success_at": max(
                        filter(None, (s["last_success_at"] for s in streams)), default=None
                    ),
                    # The stalest stream's sweep: every stream was swept at least this recently.
                    "reconcile_at": min(
                        (s["reconcile_at"] for s in streams), key=_never_first, default=None
                    ),
                    "reconcile_requests": sum(s["reconcile_requests"] or 0 for s in streams),
                    "last_error_at": failure.get("last_error_at"),
                    "last_error": failure.get("last_error"),
                    "walks_in_flight": sum(s["walk_in_flight"] for s in streams),
                    "backfills_in_flight": sum(
                        s["backfill_state"] in ("running", "stopped") for s in streams
                    ),
                    "streams": streams,
                }
            )
        return records

    async def stream_figures(
        self, source: str, project: str | None, backfill_stream: str, stream: str
    ) -> dict[str, Any]:
        """newest_started_at, open_runs, oldest_open_at, last_success_at (of `stream`),
        backfill_runs_read and backfill_idle_seconds (None: no backfill in flight)."""
        async with self.connection(wait=5) as conn:
            row = await conn.fetchrow(
                self.q["stream_figures"], source, project, backfill_stream, stream
            )
        assert row is not None  # a SELECT of subqueries alone: always one row
        return dict(row)

    async def save_runs(
        self, source: str, upstream: str, runs: Sequence[Run], rejected: Sequence[Rejected]
    ) -> Written:
        """Runs observed outside a pass (a webhook), by the same merge as a pass's pages.

        No stream lease: a pass may hold it for minutes, and the merge needs none, since an
        earlier observation never replaces a later one whoever writes it.
        """
        async with self.connection(wait=10) as conn, conn.transaction():
            return await Writes(conn, self.tables, source).write(upstream, runs, rejected)


class Lease:
    """A stream held by this process, and the writes of its pass: each read or write takes a
    connection of the budget for its length, and each write first checks the lease is still
    held (LeaseLost if another process took the stream over)."""

    def __init__(
        self,
        store: Store,
        source: str,
        stream: str,
        token: uuid.UUID,
        *,
        defer_counts: bool = False,
    ) -> None:
        self.store = store
        self.q = store.q
        self.source = source
        self.stream = Stream.parse(stream)
        self.token = token
        self.lost = False  # found taken over by a renewal: the next write fails without asking
        # pages, items, written, quarantined, refreshed: kept here until add_deferred_counts
        self._deferred = [0, 0, 0, 0, 0] if defer_counts else None

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[PoolConnectionProxy]:
        """A transaction in which the lease is held: a takeover waits for its commit."""
        if self.lost:
            raise LeaseLost(f"another process took over stream {self.stream} of {self.source}")
        async with self.store.connection() as conn, conn.transaction():
            if not await conn.fetchval(self.q["hold_lease"], self.token):
                self.lost = True
                raise LeaseLost(f"another process took over stream {self.stream} of {self.source}")
            yield conn

    async def _fetch(self, query: str, *args: Any, method: str = "fetch") -> Any:
        async with self.store.connection() as conn:
            return await getattr(conn, method)(self.q[query], *args)

    @asynccontextmanager
    async def writer(self, stream: str, pass_id: int) -> AsyncIterator[Lease]:
        """The writes of a sub-stream (a backfill window) under this lease.

        Its pages' figures are added to the pass when it ends, not page by page: the windows'
        transactions would otherwise queue for the pass record's row lock, each holding it
        until its commit.
        """
        writer = Lease(self.store, self.source, stream, self.token, defer_counts=True)
        writer.lost = self.lost
        try:
            yield writer
        finally:
            self.lost = self.lost or writer.lost
            try:
                await writer.add_deferred_counts(pass_id)
            except DatabaseError as error:  # only the figures are lost; the runs are stored
                log.warning("could not add a window's figures to its pass", error=str(error))

    async def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        async with self._transaction() as conn:
            await self._save_checkpoint(conn, checkpoint)

    async def _save_checkpoint(self, conn: PoolConnectionProxy, checkpoint: Checkpoint) -> None:
        stream = self.stream
        await conn.execute(
            self.q["save_checkpoint"], self.source, stream, checkpoint.watermark,
            checkpoint.cursor, stream.kind, stream.part or "", stream.window,
        )  # fmt: skip

    async def forget_windows(self) -> None:
        """Forgets the checkpoints of this backfill's windows."""
        stream = self.stream
        async with self._transaction() as conn:
            await conn.execute(
                self.q["delete_window_checkpoints"], self.source, stream.kind,
                stream.part or "",
            )  # fmt: skip

    async def due(self, every: timedelta, first_of: str) -> bool:
        """Whether the stream's last success (or, before any, the first pass of stream
        `first_of`) started `every` ago or more, by the database's clock."""
        due: bool = await self._fetch(
            "stream_due", self.source, self.stream, first_of, every, method="fetchval"
        )
        return due

    async def database_now(self) -> datetime:
        now: datetime = await self._fetch("database_now", method="fetchval")
        return now

    async def last_pass_age(self) -> timedelta | None:
        """How long ago the stream's newest pass started, measured by the database's clock."""
        age: timedelta | None = await self._fetch(
            "last_pass_age", self.source, self.stream, method="fetchval"
        )
        return age

    async def start_pass(self) -> int:
        """A new pass record; any left running by a process that died, or that lost the stream's
        lease, is closed as abandoned."""
        async with self._transaction() as conn:
            await conn.execute(self.q["abandon_passes"], self.source, self.stream)
            pass_id: int = await conn.fetchval(self.q["start_pass"], self.source, self.stream)
            return pass_id

    async def finish_pass(self, pass_id: int, outcome: Outcome, error: str | None = None) -> None:
        await self._fetch("finish_pass", pass_id, Outcome(outcome).value, error, method="execute")

    async def checkpoint(self, stream: str | None = None) -> Checkpoint | None:
        """Where this stream stands; or, to read only, another stream of the source."""
        row = await self._fetch(
            "load_checkpoint", self.source, stream or self.stream, method="fetchrow"
        )
        return Checkpoint(row["watermark"], row["cursor"]) if row else None

    async def save_page(
        self,
        pass_id: int,
        upstream: str,
        runs: Sequence[Run],
        rejected: Sequence[Rejected],
        *,
        checkpoint: Checkpoint | Keep = KEEP,
        items: int = 0,
        refreshed: int = 0,
    ) -> Written:
        """A page's runs and the checkpoint after them (KEEP: leave it), in one transaction."""
        async with self._transaction() as conn:
            written = await Writes(conn, self.store.tables, self.source).write(
                upstream, runs, rejected
            )
            if checkpoint is not KEEP:
                await self._save_checkpoint(conn, checkpoint)
            await self._count(conn, pass_id, 1, items, written.runs, written.quarantined, refreshed)
        return written

    async def save_refreshed(
        self,
        pass_id: int,
        upstream: str,
        runs: Sequence[Run],
        rejected: Sequence[Rejected],
        gone: Sequence[str],
        project: str | None = None,
    ) -> Written:
        """Open runs read again one by one; runs of `project` the upstream no longer has are
        marked gone."""
        async with self._transaction() as conn:
            written = await Writes(conn, self.store.tables, self.source).write(
                upstream, runs, rejected
            )
            if gone:
                await conn.execute(self.q["mark_gone"], self.source, project, list(gone))
            refreshed = len(runs) + len(rejected) + len(gone)
            await self._count(conn, pass_id, 0, 0, written.runs, written.quarantined, refreshed)
        return written

    async def _count(self, conn: PoolConnectionProxy, pass_id: int, *figures: int) -> None:
        """Adds figures to the pass record, in the caller's transaction (or later, if deferred)."""
        if self._deferred is None:
            await conn.execute(self.q["count_page"], pass_id, *figures)
        else:
            self._deferred = [kept + new for kept, new in zip(self._deferred, figures, strict=True)]

    async def add_deferred_counts(self, pass_id: int) -> None:
        if self._deferred and any(self._deferred):
            figures, self._deferred = self._deferred, [0] * len(self._deferred)
            await self._fetch("count_page", pass_id, *figures, method="execute")

    async def quarantined_runs(self, project: str | None, limit: int) -> list[str]:
        """Runs whose items are in quarantine, to read again by id: the bad read may pass."""
        rows = await self._fetch("quarantined_runs", self.source, project, limit)
        return [row["run_id"] for row in rows]

    async def due_rechecks(self, project: str | None, observed_before: datetime) -> list[str]:
        """Runs read just as they finished, due to be read once more."""
        rows = await self._fetch("due_rechecks", self.source, project, observed_before)
        return [row["run_id"] for row in rows]

    async def unlisted_runs(
        self,
        project: str | None,
        since: datetime,
        until: datetime,
        listed: Collection[str],
        salt: int,
        limit: int,
    ) -> tuple[list[str], int]:
        """Up to `limit` runs of a project started in [since, until), not marked gone, that are
        not in `listed`, in an order that `salt` shuffles; and how many such runs there are."""
        rows = await self._fetch(
            "unlisted_runs", self.source, project, since, until, list(listed), str(salt), limit
        )
        return [row["run_id"] for row in rows], (rows[0]["suspects"] if rows else 0)

    async def open_snapshot(
        self, project: str | None, observed_before: datetime
    ) -> list[tuple[str, str, datetime]]:
        """(run id, status, started at) of every open run of a project, before this pass."""
        rows = await self._fetch("open_snapshot", self.source, project, observed_before)
        return [(row["run_id"], row["status"], row["started_at"]) for row in rows]


class Writes:
    """Runs and quarantined items of one source, written on one connection in its caller's
    transaction."""

    def __init__(
        self, conn: PoolConnectionProxy, tables: Mapping[str, RunTable], source: str
    ) -> None:
        self.conn = conn
        self.tables = tables
        self.q = sqlfiles.queries()
        self.source = source

    async def write(
        self, upstream: str, runs: Sequence[Run], rejected: Sequence[Rejected]
    ) -> Written:
        """Runs and quarantined items, in the caller's transaction. A run the database refuses
        (an id too long for the index, a value out of range) is quarantined with the database's
        reason, and the others are stored: one bad item never holds up a page."""
        inserted = updated = 0
        refused_ids: set[str | None] = set()
        # One statement cannot touch a row twice: the last item of a run in the batch wins.
        unique = list({run.run_id: run for run in runs}.values())
        if unique:
            try:
                async with self.conn.transaction():  # a savepoint, should one run be refused
                    inserted, updated = await self._merge(upstream, unique)
            except _REFUSED_RUN:
                refused = []
                for run in unique:
                    try:
                        async with self.conn.transaction():
                            one = await self._merge(upstream, [run], then_empty=True)
                    except _REFUSED_RUN as error:
                        reason = f"run {run.run_id[:40]}: the database refused it: {error}"
                        refused.append(Rejected(reason, run.raw, run.run_id, run.partition))
                        continue
                    inserted, updated = inserted + one[0], updated + one[1]
                if refused:
                    log.warning(
                        "runs refused by the database", count=len(refused), reason=refused[0].reason
                    )
                rejected = [*rejected, *refused]
                refused_ids = {r.run_id for r in refused}
        stored = [run for run in unique if run.run_id not in refused_ids]
        if stored:  # a run read well now: what was quarantined of it was a bad read, not a bad run
            await self.conn.execute(
                self.q["release_quarantined"],
                self.source,
                [run.run_id for run in stored],
                [run.partition or "" for run in stored],
            )
        if rejected:
            unique_rejects = {_sha256(r.raw): r for r in rejected}
            await self.conn.execute(
                self.q["quarantine_items"],
                self.source,
                upstream,
                [r.reason for r in unique_rejects.values()],
                [r.raw for r in unique_rejects.values()],
                list(unique_rejects),
                [_run_id(r) for r in unique_rejects.values()],
                [r.partition for r in unique_rejects.values()],
            )
        return Written(inserted, updated, len(rejected))

    async def _merge(
        self, upstream: str, runs: Sequence[Run], *, then_empty: bool = False
    ) -> tuple[int, int]:
        """(inserted, updated): runs staged by binary COPY, then merged in one statement. The
        staging table empties at commit; `then_empty` when the transaction merges again."""
        table = self.tables.get(upstream)
        if table is None:
            raise ValueError(f"the store was opened without upstream {upstream!r}'s columns")
        await self.conn.copy_records_to_table(
            table.table, records=table.records(runs), columns=table.columns
        )
        rows = await self.conn.fetch(table.merge, self.source, upstream)
        if then_empty:
            await self.conn.execute(table.empty)
        inserted = sum(1 for row in rows if row["inserted"])
        return inserted, len(rows) - inserted


# An id longer than this cannot key a run (the primary key's index refuses it): not worth retrying.
MAX_RUN_ID_BYTES = 1000


def _run_id(rejected: Rejected) -> str | None:
    """The run a quarantined item is of, if it could ever be stored."""
    run_id = rejected.run_id
    if run_id is None or len(run_id.encode("utf-8", "surrogatepass")) > MAX_RUN_ID_BYTES:
        return None
    return run_id


def _never_first(moment: datetime | None) -> tuple[bool, datetime | None]:
    return (moment is not None, moment)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
