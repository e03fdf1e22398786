"""Small helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys

from worker import runtime, sync

TOKEN = "test-token-4f1c9a"


def config_toml(*sources: str, listen: str = "127.0.0.1:0") -> str:
    """A config file's text: the [http] table, then the [[sources]] tables."""
    return f'[http]\nlisten = "{listen}"\n' + "".join(sources)


def source_toml(name: str, base_url: str, *, kind: str = "apify", **keys) -> str:
    """One [[sources]] table; values are strings, numbers or lists of strings."""
    values = {"name": name, "kind": kind, "token_env": "APIFY_TOKEN", "base_url": base_url}
    values.update({"every": "1s"} | keys)
    return "\n[[sources]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


async def spawn(database_url: str, *args: str, env=None, prefix=(), stdout=None, stderr=None):
    """`python -m worker ARGS` with the test token and database; output dropped unless asked."""
    return await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-m", "worker", *args,
        env={**os.environ, "APIFY_TOKEN": TOKEN, "RUNSYNC_DATABASE_URL": database_url, **(env or {})},
        stdout=stdout or asyncio.subprocess.DEVNULL, stderr=stderr or asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def one_pass(settings, name: str = "apify", **options) -> sync.PassResult:
    async with runtime.open_runtime(settings, [name]) as rt:
        return await sync.run_pass(rt.stream(name), rt.store, **options)


async def passes(settings, name: str = "raker", **options) -> list[sync.PassResult]:
    """One pass of every stream (project) of a source, side by side."""
    async with runtime.open_runtime(settings, [name]) as rt:
        return [await sync.run_pass(stream, rt.store, **options) for stream in rt.streams[name]]


async def stored_runs(db, source: str = "apify") -> dict[str, dict]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM runsync.runs WHERE source = $1", source)
    return {row["run_id"]: dict(row) for row in rows}


def assert_matches_upstream(stored: dict[str, dict], items: list[dict]) -> None:
    """Exactly the upstream's runs, each with the upstream's current list fields."""
    truth = {item["id"]: item for item in items}
    missing, extra = truth.keys() - stored.keys(), stored.keys() - truth.keys()
    assert not missing and not extra, f"missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}"
    for run_id, item in truth.items():
        row = stored[run_id]
        raw = row["raw"] if isinstance(row["raw"], dict) else json.loads(row["raw"])
        differing = {k: (raw.get(k), v) for k, v in item.items() if raw.get(k) != v}
        assert not differing, f"run {run_id} differs from upstream: {differing}"
        assert row["status"] == item["status"]


async def interrupted_pass(settings, name: str, *, after_pages: int, **options) -> None:
    """A pass cancelled while it fetches or writes the page after `after_pages` committed ones."""
    committed = asyncio.Event()
    pages = []

    def count(page, _written):
        pages.append(page)
        if len(pages) == after_pages:
            committed.set()

    async with runtime.open_runtime(settings, [name]) as rt:
        task = asyncio.create_task(
            sync.run_pass(rt.stream(name), rt.store, progress=count, **options)
        )
        await committed.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
