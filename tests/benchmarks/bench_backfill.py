"""Backfill benchmark: runsync against dlt's REST API source and raw COPY, same data, same Postgres.

Run by hand, not by CI. From the repository root:

    pip install -e ".[bench]"
    python tests/benchmarks/bench_backfill.py                       # 100k and 1M runs, 0 and 20 ms
    python tests/benchmarks/bench_backfill.py --runs 100000 --latency 20 --tools runsync,dlt

For each number of runs and latency: the simulated Apify API serves a seeded account in a process
of its own (the same data for every tool); each tool loads it into a fresh database of one Postgres
(embedded, or RUNSYNC_DATABASE_URL); its process is timed, and its peak memory read, with
/usr/bin/time, with its CPU time, the simulator's and the whole machine's. Raw COPY, the physical
ceiling, copies the same runs (typed columns and raw JSON) from memory into a table with runsync's
columns and no index. "merge" is runsync's writes alone: the same runs, already parsed, stored by
8 connections through runsync's store as a backfill's windows store them. A table of runs/s and
ratios follows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
from benchdb import fresh_database

TOKEN = "bench-token"
SEED = 42

DLT_LOAD = """
import sys, dlt
from dlt.sources.rest_api import rest_api_source
base_url, token, credentials, pipelines_dir = sys.argv[1:5]
source = rest_api_source({
    "client": {
        "base_url": base_url,
        "auth": {"type": "bearer", "token": token},
        "paginator": {"type": "offset", "limit": 1000, "offset_param": "offset",
                      "limit_param": "limit", "total_path": "data.total"},
    },
    "resources": [{
        "name": "runs", "primary_key": "id", "write_disposition": "merge",
        "endpoint": {"path": "v2/actor-runs", "data_selector": "data.items"},
    }],
})
pipeline = dlt.pipeline(pipeline_name="bench", pipelines_dir=pipelines_dir,
                        destination=dlt.destinations.postgres(credentials=credentials),
                        dataset_name="dlt_bench")
pipeline.run(source)
"""

# runsync.runs' columns, for the COPY ceiling's table (no index, no trigger).
COPY_COLUMNS = (
    ("source", "text"), ("upstream", "text"), ("run_id", "text"), ("status", "text"),
    ("is_terminal", "boolean"), ("started_at", "timestamptz"), ("finished_at", "timestamptz"),
    ("actor_id", "text"), ("task_id", "text"), ("build_id", "text"), ("build_number", "text"),
    ("origin", "text"), ("usage_total_usd", "numeric"), ("default_key_value_store_id", "text"),
    ("default_dataset_id", "text"), ("default_request_queue_id", "text"), ("project", "text"),
    ("triggered_by", "text"), ("result", "jsonb"), ("raw", "jsonb"),
    ("observed_at", "timestamptz"), ("recheck_at", "timestamptz"), ("partial", "boolean"),
    ("notes", "text"), ("scope", "text"), ("succeeded", "boolean"),
)  # fmt: skip


def serve(runs: int, latency_ms: float, port: int) -> None:
    """The simulated Apify API, in this process, until killed."""
    from worker.simulator import Simulator
    from worker.sources.apify.simulator import ApifyWorld

    async def main() -> None:
        # A few open runs, as in a quiet account: the incremental pass reads each one again.
        world = ApifyWorld(runs=runs, seed=SEED, open_share=0.0002)
        simulator = Simulator(world, token=TOKEN, latency=latency_ms / 1000)
        await simulator.start("127.0.0.1", port)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def count(url: str, table: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(f"SELECT count(*) FROM {table}")
    finally:
        await conn.close()


def machine_busy() -> float:
    """CPU seconds this machine has spent not idle, all cores together (Linux /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def process_cpu(pid: int) -> float:
    """CPU seconds a live process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(command: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Seconds, peak MB and CPU seconds of a command, and the machine's busy CPU seconds while it
    ran; raises with its output if it fails."""
    busy = machine_busy()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M %U %S", *command], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    *output, last = done.stderr.strip().splitlines()
    seconds, kilobytes, user, system = last.split()
    return {
        "stderr": "\n".join(output),
        "seconds": float(seconds),
        "peak_mb": int(kilobytes) / 1024,
        "cpu_s": float(user) + float(system),
        "machine_busy_s": machine_busy() - busy,
    }


def simulator_counts(base_url: str) -> tuple[dict[str, int], int]:
    """The simulator's requests so far by endpoint, and its 429s."""
    from urllib.request import Request, urlopen

    headers = {"Authorization": f"Bearer {TOKEN}"}
    with urlopen(Request(f"{base_url}/_simulator/requests", headers=headers)) as answer:
        body = json.load(answer)
    return body["requests"], body["rate_limited"]


def slowdowns(stderr: str) -> list[float]:
    """The rates runsync's limiter settled at after each 429 it met (its warning lines)."""
    lines = (json.loads(x) for x in stderr.splitlines() if x.startswith("{"))
    return [x["settling_at"] for x in lines if x.get("event") == "rate limited; slowing down"]


def bench_runsync(server: str, base_url: str, runs: int, work: Path, first: bool) -> dict:
    """runsync with default settings: its first `sync` on an empty database (first=True), or
    `runsync backfill` followed by the `sync` a daemon would run next."""
    url = asyncio.run(fresh_database(server, "bench_first" if first else "bench_runsync"))
    config = work / "runsync.toml"
    config.write_text(
        textwrap.dedent(f"""
            [[sources]]
            name = "apify"
            kind = "apify"
            token_env = "BENCH_TOKEN"
            base_url = "{base_url}"
        """)
    )
    runsync = [sys.executable, "-m", "worker", "--config", str(config), "--database-url", url]
    env = {**os.environ, "BENCH_TOKEN": TOKEN}
    subprocess.run([*runsync, "migrate"], check=True, capture_output=True, env=env)
    _, refused = simulator_counts(base_url)
    command = ["sync"] if first else ["backfill", "apify"]
    figures = timed([*runsync, "--log-level", "WARNING", *command], env)
    requests, refused_after = simulator_counts(base_url)
    figures["rate_limited"] = refused_after - refused
    figures["settled_at"] = slowdowns(figures.pop("stderr"))
    stored = asyncio.run(count(url, "runsync.runs"))
    assert stored == runs, f"runsync stored {stored} runs of {runs}"
    if first:
        return figures
    # The daemon's next pass, right after the backfill.
    started = time.perf_counter()
    done = subprocess.run([*runsync, "sync"], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    after, _ = simulator_counts(base_url)
    line = next(
        json.loads(x) for x in done.stderr.splitlines()
        if '"pass succeeded"' in x and '"incremental"' in x
    )  # fmt: skip
    figures["next_sync"] = {
        "list_requests": after["apify.list_user_runs"] - requests["apify.list_user_runs"],
        "run_requests": after.get("apify.get_run", 0) - requests.get("apify.get_run", 0),
        "pass_ms": line["duration_ms"],
        "process_s": round(seconds, 2),
    }
    return figures


def dlt_credentials(url: str) -> str:
    """The URL in the form dlt reads: a Unix socket directory goes in the host parameter."""
    parts = urlsplit(url)
    socket = parse_qs(parts.query).get("host", [None])[0]
    user, password = parts.username or "postgres", parts.password or "x"
    if socket:
        return f"postgresql://{user}:{password}@localhost:5432{parts.path}?host={socket}"
    return f"postgresql://{user}:{password}@{parts.hostname}:{parts.port or 5432}{parts.path}"


def bench_dlt(server: str, base_url: str, runs: int, work: Path) -> dict[str, float]:
    url = asyncio.run(fresh_database(server, "bench_dlt"))
    script = work / "dlt_load.py"
    script.write_text(DLT_LOAD)
    command = [
        sys.executable,
        str(script),
        base_url + "/",
        TOKEN,
        dlt_credentials(url),
        str(work / "dlt"),
    ]
    figures = timed(command)
    figures.pop("stderr")
    stored = asyncio.run(count(url, "dlt_bench.runs"))
    assert stored == runs, f"dlt stored {stored} runs of {runs}"
    return figures


def parsed_runs(runs: int) -> list:
    """The simulator's runs, read as runsync reads them: built beforehand, untimed."""
    from worker.sources.apify import read_item
    from worker.sources.apify.simulator import ApifyWorld

    now = datetime.now(UTC)
    return [read_item(item, now) for item in ApifyWorld(runs=runs, seed=SEED).list_items()]


def bench_copy(server: str, runs: int) -> dict[str, float]:
    """A plain binary COPY of the same runs into a table with no index: the physical ceiling."""
    from worker import sources, store

    url = asyncio.run(fresh_database(server, "bench_copy"))
    table = store.run_tables(sources.columns())["apify"]
    records = [("apify", "apify", *run) for run in table.records(parsed_runs(runs))]
    return {"seconds": asyncio.run(copy_into(url, records, ("source", "upstream", *table.columns)))}


async def copy_into(url: str, records: list[tuple], names: tuple[str, ...]) -> float:
    conn = await asyncpg.connect(url)
    try:
        columns = ", ".join(f"{name} {kind}" for name, kind in COPY_COLUMNS)
        await conn.execute(f"CREATE TABLE ceiling ({columns})")
        started = time.perf_counter()
        await conn.copy_records_to_table("ceiling", records=records, columns=names)
        return time.perf_counter() - started
    finally:
        await conn.close()


def bench_merge(server: str, runs: int) -> dict[str, float]:
    """runsync's own writes of the same runs, already parsed: 8 windows' worth of connections
    storing 1000-run pages side by side, through the store as a backfill does. What a backfill
    does beyond this is fetching and reading the pages."""
    return {"seconds": asyncio.run(merge_into(server, parsed_runs(runs)))}


async def merge_into(server: str, runs: list, writers: int = 8) -> float:
    from worker import sources, store

    db = await store.Store.open(
        await fresh_database(server, "bench_merge"),
        max_connections=writers + 1,
        columns=sources.columns(),
    )
    try:
        await db.migrate()
        pages = [runs[i : i + 1000] for i in range(0, len(runs), 1000)]
        async with db.lease("apify", "backfill") as lease:
            pass_id = await lease.start_pass()

            async def write(index: int) -> None:
                async with lease.writer(f"backfill#{index}", pass_id) as writer:
                    for page in pages[index::writers]:
                        await writer.save_page(pass_id, "apify", page, [])

            started = time.perf_counter()
            await asyncio.gather(*(write(i) for i in range(writers)))
            return time.perf_counter() - started
    finally:
        await db.close()


def run_benchmark(args: argparse.Namespace, server: str, work: Path) -> list[dict]:
    results = []
    for runs in args.runs:
        for latency in args.latency:
            port = 18000 + len(results)
            simulator = subprocess.Popen(
                [sys.executable, __file__, "serve", "--runs", str(runs),
                 "--latency", str(latency), "--port", str(port)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                if simulator.stdout.readline().strip() != "ready":
                    raise RuntimeError("the simulator did not start")
                base_url = f"http://127.0.0.1:{port}"
                for tool in args.tools:
                    if tool in ("copy", "merge") and latency != args.latency[0]:
                        continue  # these do not touch the upstream: once per size is enough
                    simulator_cpu = process_cpu(simulator.pid)
                    if tool in ("first", "runsync"):
                        figures = bench_runsync(server, base_url, runs, work, tool == "first")
                    elif tool == "dlt":
                        figures = bench_dlt(server, base_url, runs, work)
                    elif tool == "merge":
                        figures = bench_merge(server, runs)
                    else:
                        figures = bench_copy(server, runs)
                    figures["simulator_cpu_s"] = process_cpu(simulator.pid) - simulator_cpu
                    row = {"runs": runs, "latency_ms": latency, "tool": tool, **figures,
                           "runs_per_s": runs / figures["seconds"]}  # fmt: skip
                    results.append(row)
                    print(f"  {tool:8s} {runs:>9,} runs {latency:>4g} ms {row['seconds']:7.1f} s "
                          f"{row['runs_per_s']:>9,.0f} runs/s", flush=True)  # fmt: skip
                    if "rate_limited" in row:
                        print(f"           429s: {row['rate_limited']}; the limiter settled at "
                              f"{row['settled_at'] or '-'} requests/s", flush=True)  # fmt: skip
                    if "next_sync" in row:
                        print(f"           the sync after it: {row['next_sync']}", flush=True)
                    if "cpu_s" in row:
                        print(cpu_account(row), flush=True)
            finally:
                simulator.kill()
                simulator.wait()
    return results


def cpu_account(row: dict) -> str:
    """Where a tool's run spent the machine's CPU, per run: its own process, the simulator serving
    it, and the rest (Postgres, mostly), against what the machine's cores had to give."""
    per_run = 1e6 / row["runs"]
    tool, simulator = row["cpu_s"], row["simulator_cpu_s"]
    rest = max(row["machine_busy_s"] - tool - simulator, 0.0)
    capacity = row["seconds"] * (os.cpu_count() or 1)
    return (
        f"           CPU per run: {row['tool']} {tool * per_run:.1f} us, simulator "
        f"{simulator * per_run:.1f} us, Postgres and the rest {rest * per_run:.1f} us; "
        f"machine busy {row['machine_busy_s'] / capacity:.0%}, peak memory {row['peak_mb']:.0f} MB"
    )


def report(results: list[dict]) -> str:
    """The figures as a Markdown table: one row per size and latency."""

    def find(runs: int, latency: float, tool: str) -> dict | None:
        for row in results:
            same_latency = tool in ("copy", "merge") or row["latency_ms"] == latency
            if row["runs"] == runs and row["tool"] == tool and same_latency:
                return row
        return None

    def rate(row: dict | None) -> str:
        return "-" if row is None else f"{row['runs_per_s']:,.0f}"

    def ratio(row: dict | None, dlt: dict | None) -> str:
        if row is None or dlt is None:
            return "-"
        return f"{row['runs_per_s'] / dlt['runs_per_s']:.1f}x"

    lines = [
        "| runs | latency | first `sync` runs/s | `backfill` runs/s | dlt runs/s "
        "| first sync / dlt | backfill / dlt | raw COPY rows/s | runsync's writes alone "
        "| 429s (first, backfill) | the `sync` after the backfill "
        "| peak memory (first, backfill) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    ours = [r for r in results if r["tool"] in ("first", "runsync")]
    for runs, latency in sorted({(r["runs"], r["latency_ms"]) for r in ours}):
        first, backfill = find(runs, latency, "first"), find(runs, latency, "runsync")
        dlt, copy, merge = (find(runs, latency, t) for t in ("dlt", "copy", "merge"))
        refused = "/".join(str(r["rate_limited"]) if r else "-" for r in (first, backfill))
        memory = "/".join(f"{r['peak_mb']:.0f}" if r else "-" for r in (first, backfill))
        after = "-"
        if backfill and "next_sync" in backfill:
            n = backfill["next_sync"]
            after = (f"{n['list_requests']} list + {n['run_requests']} run requests, "
                     f"pass {n['pass_ms']} ms")  # fmt: skip
        lines.append(
            f"| {runs:,} | {latency:g} ms | {rate(first)} | {rate(backfill)} | {rate(dlt)} "
            f"| {ratio(first, dlt)} | {ratio(backfill, dlt)} | {rate(copy)} | {rate(merge)} "
            f"| {refused} | {after} | {memory} MB |"
        )
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        serving = argparse.ArgumentParser()
        serving.add_argument("serve")
        for option, kind in (("--runs", int), ("--latency", float), ("--port", int)):
            serving.add_argument(option, type=kind, required=True)
        args = serving.parse_args()
        serve(args.runs, args.latency, args.port)
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--latency", type=float, nargs="+", default=[0, 20, 100, 200], help="milliseconds"
    )
    parser.add_argument(
        "--tools",
        type=lambda v: v.split(","),
        default=["first", "runsync", "dlt", "copy", "merge"],
        help="first (runsync's first sync), runsync (backfill, then sync), dlt, copy, merge",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from worker import database

    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="runsync-bench-")))
        server = os.environ.get("RUNSYNC_DATABASE_URL") or stack.enter_context(
            database.embedded(work / "db")
        )
        print(f"backfill benchmark, {os.cpu_count()} cores", flush=True)
        results = run_benchmark(args, server, work)
    print()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
