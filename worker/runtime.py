"""Opens what a command needs: the database (URL or embedded), the store, one client per source."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import structlog

from worker import budget, database, http, ratelimit, sources, store
from worker.config import Settings, SourceConfig, redact_url
from worker.walk import SourceRuntime

log = structlog.get_logger("runsync.runtime")


class DatabaseUnavailable(Exception):
    """The database cannot be used; the message carries no password.

    `transient`: it may answer later (down, starting, out of connections, unreachable), as
    opposed to a configuration mistake (a wrong password, user or database name).
    """

    def __init__(self, message: str, *, transient: bool, cause: str = "") -> None:
        super().__init__(message)
        self.transient = transient
        self.cause = cause  # the error's kind, safe to show anywhere


@dataclass
class Runtime:
    settings: Settings
    store: store.Store
    streams: dict[str, list[SourceRuntime]]  # per configured source: one per project, or one
    passes: budget.Passes  # the places of the passes of all of them

    def stream(self, name: str) -> SourceRuntime:
        """The only stream of a source that has one (an Apify source)."""
        (only,) = self.streams[name]
        return only


def client_for(config: SourceConfig, registry: ratelimit.Registry | None = None) -> http.Client:
    """The source's client, paced by its token's limits (shared through `registry`)."""
    token = config.token.reveal()
    registry = registry or ratelimit.Registry()
    upstream = sources.upstream(config.kind)
    return http.Client(
        config.base_url,
        token,
        name=config.name,
        limits=registry.limits(config.kind, config.base_url, token, sources.limits(config)),
        rate=config.max_requests_per_second,
        # A backfill's windows each fetch their next page while they write one.
        concurrency=2 * config.concurrency,
        timeout=config.timeout.total_seconds(),
        backoff=http.Backoff(retries=config.max_retries),
        max_response_bytes=config.max_response_mb * 1024 * 1024,
        headers=upstream.headers,
        conditional=upstream.conditional,
    )


@asynccontextmanager
async def open_store(settings: Settings, *, migrate: bool = True) -> AsyncIterator[store.Store]:
    with database.database_url(settings) as url:
        try:
            db = await store.Store.open(
                url,
                max_connections=settings.max_connections,
                takeover_after=settings.takeover_after,
                columns=sources.columns(),
            )
        except (*store.DatabaseError, TimeoutError) as error:
            raise _unavailable(url, "cannot connect to the database", error) from None
        try:
            if migrate:
                try:
                    await db.migrate()
                except (*store.DatabaseError, TimeoutError) as error:
                    raise _unavailable(url, "cannot migrate the database", error) from None
            yield db
        finally:
            await db.close()


def _unavailable(url: str, what: str, error: BaseException) -> DatabaseUnavailable:
    reason = str(error) or type(error).__name__
    transient = store.may_pass(error)
    return DatabaseUnavailable(
        f"{what} at {redact_url(url)}: {reason}", transient=transient, cause=type(error).__name__
    )


@asynccontextmanager
async def open_runtime(
    settings: Settings, names: Sequence[str] | None = None
) -> AsyncIterator[Runtime]:
    """The store, migrated, and a runtime for each named source (default: all)."""
    configs = [settings.source(n) for n in names] if names else list(settings.sources)
    async with AsyncExitStack() as stack:
        db = await stack.enter_async_context(open_store(settings))
        streams = {}
        registry = ratelimit.Registry()  # the sources on one token share its limits
        passes = budget.Passes(settings.max_passes)
        for config in configs:
            client = await stack.enter_async_context(client_for(config, registry))
            streams[config.name] = [
                SourceRuntime(config, source, client, passes) for source in sources.build(config)
            ]
        db.start_renewing(passes.figures)
        yield Runtime(settings, db, streams, passes)
