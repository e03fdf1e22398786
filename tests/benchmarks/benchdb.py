"""The benchmarks' databases: a fresh one per tool or scenario, on the server they are given."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg


def with_database(url: str, name: str, application_name: str | None = None) -> str:
    """The URL of another database on the server, optionally tagged with an application_name
    (asyncpg passes unknown URL parameters on as server settings)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "application_name"]
    if application_name:
        query.append(("application_name", application_name))
    return urlunsplit(parts._replace(path=f"/{name}", query=urlencode(query)))


async def fresh_database(url: str, name: str) -> str:
    """An empty database `name` on the server of `url` (dropped first if it exists); its URL."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return with_database(url, name)
