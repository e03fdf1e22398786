"""Status page benchmark: how fast the page and its charts answer over a large history.

Run by hand, not by CI (filling a million runs takes a minute). From the repository root:

    python tests/benchmarks/bench_statuspage.py                      # 1,000,000 runs over 365 days
    python tests/benchmarks/bench_statuspage.py --days 90            # all of them in the widest range
    python tests/benchmarks/bench_statuspage.py --runs 100000 --samples 5

Postgres: an embedded server in a temporary directory, or RUNSYNC_DATABASE_URL's server (a fresh
database `runsync_bench_page` on it). The database is migrated, then filled with --runs runs by one
INSERT ... SELECT: --sources Apify sources, their runs spread evenly over the last --days days,
40 actors, costs, durations up to 10 minutes, two in seven failed or aborted, and one in seven of
the last day's still running;
each source has a succeeded pass and a checkpoint, as `runsync status` reads them. VACUUM ANALYZE
follows, as autovacuum would after a backfill.

The page is served as the daemon serves it (health.HealthServer with a statuspage.StatusPage on
the real store, over loopback), and timed from a client's side, request to last byte:
- cold: a new StatusPage for each sample, so nothing is cached in the process (the database's own
  buffers are warm: a running server's are);
- warm: the same page asked again within its cache's time to live (what every other browser and
  every refresh gets).
For each of `/` (the page: the sources' table), `/status/sources` (what an open page fetches every
15 s) and `/status/charts?days=7|30|90`, the median and the worst of --samples samples, in ms.
Then the reads the page makes in the background while someone looks, timed on their own: the last
two days' charts (every minute), the older days of the 90-day range (every 10 minutes) and the
sources' status (every 5 seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchdb import fresh_database

from worker import health, sources, statuspage
from worker.store import Store

FILL = """
INSERT INTO runsync.runs (source, run_id, upstream, status, is_terminal, started_at, finished_at,
                          actor_id, usage_total_usd, raw, observed_at, scope, succeeded)
SELECT 'source-' || (i % $2), 'run-' || i, 'apify',
       CASE WHEN open THEN 'RUNNING'
            ELSE (ARRAY['SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED', 'FAILED', 'ABORTED',
                        'SUCCEEDED'])[1 + i % 7] END,
       NOT open, started, CASE WHEN NOT open THEN started + (i % 600) * interval '1 second' END,
       'actor-' || (i % 40), (i % 100) / 1000.0, '{}'::jsonb, now(), 'actor-' || (i % 40),
       CASE WHEN open THEN NULL ELSE i % 7 NOT IN (4, 5) END
FROM generate_series(1, $1) AS i,
     LATERAL (SELECT now() - (i::float / $1 * $3) * interval '1 day' AS started) AS s,
     -- one run in seven of the last day is still running; older runs have all ended
     LATERAL (SELECT i % 7 = 6 AND i::float / $1 * $3 < 1 AS open) AS o
"""

PASSES = """
INSERT INTO runsync.passes (source, stream, outcome, started_at, finished_at, pages, items)
SELECT 'source-' || s, 'incremental', 'succeeded', now() - interval '1 minute', now(), 1, 10
FROM generate_series(0, $1 - 1) AS s
"""


@contextmanager
def postgres(work: Path):
    if url := os.environ.get("RUNSYNC_DATABASE_URL"):
        yield url
        return
    from worker import database

    with database.embedded(work / "db") as url:
        yield url


async def fill(url: str, runs: int, source_count: int, days: int) -> float:
    store = await Store.open(url, columns=sources.columns())
    try:
        await store.migrate()
    finally:
        await store.close()
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        await conn.execute(FILL, runs, source_count, days)
        await conn.execute(PASSES, source_count)
        await conn.execute("VACUUM ANALYZE runsync.runs")
        await conn.execute("VACUUM ANALYZE runsync.passes")
        return time.perf_counter() - started
    finally:
        await conn.close()


async def timed(client: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with client.get(url) as answer:
        await answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{url} answered {answer.status}")
    return (time.perf_counter() - started) * 1000


async def measure(url: str, source_count: int, samples: int) -> dict[str, dict[str, list[float]]]:
    names = [f"source-{i}" for i in range(source_count)]
    store = await Store.open(url, columns=sources.columns())
    paths = ["/", "/status/sources", *(f"/status/charts?days={d}" for d in statuspage.RANGES)]
    found: dict[str, dict[str, list[float]]] = {path: {"cold": [], "warm": []} for path in paths}

    async def ready() -> dict[str, Any] | None:
        return None

    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(samples):
                for path in paths:
                    page = statuspage.StatusPage(names)
                    page.store = store
                    server = health.HealthServer("127.0.0.1:0", ready, page=page)
                    await server.start()
                    try:
                        base = f"http://127.0.0.1:{server.port}"
                        found[path]["cold"].append(await timed(client, base + path))
                        found[path]["warm"].append(await timed(client, base + path))
                    finally:
                        await server.stop()
        # What the page reads in the background while someone looks: the last two days (every
        # minute), a range's older days (every 10 minutes), the sources (every 5 s).
        today = await store.today()
        reads = {
            "the last 2 days' charts": lambda: store.charts(today - timedelta(days=1), today),
            "the older 88 days' charts (90-day range)": lambda: store.charts(
                today - timedelta(days=89), today - timedelta(days=2)
            ),
            "the sources' status": lambda: store.status(names),
        }
        for label, read in reads.items():
            found[label] = {"cold": [], "warm": []}
            for _ in range(samples):
                started = time.perf_counter()
                await read()
                found[label]["cold"].append((time.perf_counter() - started) * 1000)
    finally:
        await store.close()
    return found


def report(
    found: dict[str, dict[str, list[float]]], args: argparse.Namespace, filled: float
) -> str:
    load = os.getloadavg()[0]
    lines = [
        f"{args.runs:,} runs over {args.days} days, {args.sources} sources "
        f"(filled in {filled:.1f} s); {args.samples} samples each, ms (median / worst); "
        f"load average {load:.1f} on {os.cpu_count()} cores",
        "",
        "| request | cold | warm |",
        "| --- | ---: | ---: |",
    ]
    for path, times in found.items():
        cells = [
            f"{statistics.median(times[kind]):.0f} / {max(times[kind]):.0f}" if times[kind] else "-"
            for kind in ("cold", "warm")
        ]
        shown = f"`{path}`" if path.startswith("/") else f"read: {path}"
        lines.append(f"| {shown} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace, server_url: str) -> None:
    url = await fresh_database(server_url, "runsync_bench_page")
    filled = await fill(url, args.runs, args.sources, args.days)
    found = await measure(url, args.sources, args.samples)
    print(report(found, args, filled))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365, help="spread the runs over this many days")
    parser.add_argument("--sources", type=int, default=5)
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-page-") as work, postgres(Path(work)) as url:
        asyncio.run(main_async(args, url))


if __name__ == "__main__":
    main()
