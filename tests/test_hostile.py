"""A hostile or broken upstream: none of it crashes the worker, exhausts its memory, or loses data."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from helpers import assert_matches_upstream, config_toml, one_pass, source_toml, spawn, stored_runs

T0 = datetime(2026, 5, 1, tzinfo=UTC)


class Hostile:
    """Serves Apify's run list with whatever body a test sets."""

    def __init__(self) -> None:
        self.body = b'{"data": {"total": 0, "offset": 0, "limit": 1000, "count": 0, "items": []}}'
        self.runner: web.AppRunner | None = None

    async def handle(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.body, content_type="application/json")

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/v2/actor-runs", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"


@pytest.fixture
async def hostile():
    server = Hostile()
    server.base_url = await server.start()
    yield server
    await server.runner.cleanup()


@pytest.fixture
def hostile_settings(hostile, write_config):
    def settings(extra: str = ""):
        return write_config(
            f"""
            [[sources]]
            name = "apify"
            kind = "apify"
            token_env = "APIFY_TOKEN"
            base_url = "{hostile.base_url}"
            max_retries = 1
            {extra}
            """
        )

    return settings


def items_page(items_json: str, count: int) -> bytes:
    head = f'{{"data": {{"total": {count}, "offset": 0, "limit": 1000, "count": {count}, "items": ['
    return (head + items_json + "]}}").encode()


async def test_an_answer_over_the_cap_is_refused(hostile, hostile_settings, db):
    hostile.body = items_page(json.dumps({"id": "x", "pad": "y" * 2_000_000}), 1)
    result = await one_pass(hostile_settings("max_response_mb = 1"))
    assert result.outcome == "failed"
    assert "exceeds the 1048576-byte cap" in result.error


async def test_a_page_of_a_million_items_is_refused(hostile, hostile_settings, db):
    hostile.body = items_page(",".join(["{}"] * 1_000_000), 1_000_000)
    result = await one_pass(hostile_settings())
    assert result.outcome == "failed"
    assert "answered 1,000,000 items, more than the 1000 asked for" in result.error
    assert await stored_runs(db) == {}


async def test_json_nested_too_deeply_fails_the_pass_not_the_worker(hostile, hostile_settings, db):
    hostile.body = b"[" * 100_000 + b"]" * 100_000
    result = await one_pass(hostile_settings())
    assert result.outcome == "failed" and "nested too deeply" in result.error
    # The upstream recovers; the same worker goes on.
    hostile.body = items_page(
        json.dumps({"id": "r1", "status": "SUCCEEDED", "startedAt": "2026-05-01T00:00:00.000Z"}), 1
    )
    assert (await one_pass(hostile_settings())).outcome == "succeeded"
    assert list(await stored_runs(db)) == ["r1"]


async def test_bad_items_are_quarantined_with_their_reason(world, sim, db, apify_settings):
    for i in range(10):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(minutes=i))
    payload: dict = {}
    for _ in range(400):  # deep, but within what JSON readers and Postgres accept
        payload = {"n": payload}
    bad = {
        "no id": {"status": "RUNNING", "startedAt": "2026-05-01T00:01:30Z"},
        "future": {"id": "f", "status": "RUNNING", "startedAt": "2099-01-01T00:00:00Z"},
        "unparsable": {"id": "u", "status": "RUNNING", "startedAt": "the day before"},
        "wrong types": {"id": "w", "status": ["RUNNING"], "startedAt": "2026-05-01T00:03:30Z"},
        "NUL": {"id": "n", "status": "RUNNING", "startedAt": "2026-05-01T00:04:30Z", "x": "a\x00b"},
    }
    for minute, item in enumerate(bad.values()):
        world.add_raw_item(item, started_at=T0 + timedelta(minutes=minute, seconds=30))
    deep = {"id": "deep", "status": "SUCCEEDED", "startedAt": "2026-05-01T00:08:30Z", "x": payload}
    world.add_raw_item(deep, started_at=T0 + timedelta(minutes=8, seconds=30))

    result = await one_pass(apify_settings(page_size=5))

    assert result.outcome == "succeeded"
    stored = await stored_runs(db)
    assert stored.pop("deep")["raw"] == deep  # stored whole, 400 levels down
    nul = stored.pop("n")  # a NUL costs the run nothing: raw keeps it escaped, and says so
    assert (nul["status"], nul["raw"]["x"], nul["notes"]) == (
        "RUNNING",
        "a\\u0000b",
        "escaped NUL in x",
    )
    assert_matches_upstream(stored, world.list_items())
    async with db.pool.acquire() as conn:
        reasons = sorted(
            r["reason"] for r in await conn.fetch("SELECT reason FROM runsync.quarantine")
        )
    assert reasons == sorted([
        "id is missing, not a string",
        "run f: startedAt 2099-01-01T00:00:00+00:00 is in the future",
        "run u: startedAt 'the day before' is not an ISO 8601 time",
        "run w: status is list \"['RUNNING']\", not a string",
    ])  # fmt: skip


# Runs argv[1:] as its child and then writes the child's peak resident memory to stderr, as GNU time
# -f %M would (the rusage of wait4; kB on Linux). The child must be forked from a small process:
# Linux carries a process's peak over exec, so a child forked from this test's process would start
# with the test process's own peak.
MEASURED = """if True:
    import os, sys
    pid = os.fork()
    if pid == 0:
        os.execv(sys.argv[1], sys.argv[1:])
    _, status, usage = os.wait4(pid, 0)
    print(f"maxrss_kb={usage.ru_maxrss}", file=sys.stderr)
    sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.process
async def test_the_million_item_page_stays_within_bounded_memory(hostile, database_url, tmp_path):
    hostile.body = items_page(",".join(["{}"] * 1_000_000), 1_000_000)
    path = tmp_path / "hostile.toml"
    path.write_text(config_toml(source_toml("apify", hostile.base_url, max_retries=0)))
    process = await spawn(
        database_url, "--config", str(path), "sync",
        prefix=(sys.executable, "-c", MEASURED), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    assert process.returncode == 1  # the pass failed, clearly; the process did not crash
    peak_mb = int(err.decode().rsplit("maxrss_kb=", 1)[1]) / 1024
    assert "more than the 1000 asked for" in err.decode()
    assert peak_mb < 250, peak_mb
