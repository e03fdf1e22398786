"""Scale benchmark: 1,000 sources on one daemon, and replicas sharing a Postgres of few connections.

Run by hand, not by CI (it takes minutes and most of a small machine). From the repository root:

    python tests/benchmarks/bench_scale.py --scenario one-daemon   # 1,000 sources every 30 s, 1 daemon
    python tests/benchmarks/bench_scale.py --scenario replicas     # 3 replicas, 150 sources every 5 s
    python tests/benchmarks/bench_scale.py --scenario all          # both, one after the other
    python tests/benchmarks/bench_scale.py --scenario replicas --sources 30 --replicas 2 --duration 30

--sources, --replicas, --every and --duration replace the scenario's own (for `all`, both's).

Postgres: an embedded server of its own in a temporary directory, with `max_connections` set to
--max-connections (100 unless told) by ALTER SYSTEM and a restart; or, if RUNSYNC_DATABASE_URL is
set, that server as it is (its `max_connections` is read and reported). Each scenario gets a fresh
database on it.

Upstreams: `runsync simulate` serves one Apify account (3 to 5 actors, 2 to 4 tasks) and two
RakerOne projects, too few distinct scopes for a thousand sources. So this script serves the
simulator's own worlds (ApifyWorld, RakerWorld, on worker.simulator's server) from a process of its
own (`bench_scale.py serve`, seeded): two thirds of the sources are Apify, each on an account of its
own (an ApifyWorld behind its own path prefix, so each has its own rate limits) and following in
turn the whole account, one actor or one task; one third are RakerOne sources of one project each,
all projects in one RakerWorld on one token. Every source's scope holds --runs-per-source runs to
begin with (2% of Apify's and 5% of RakerOne's still open); every answer waits --latency ms.

What a scenario measures, with --replicas `runsync run` daemons on the same config (each with its
own `[http] listen` port, and an application_name in its database URL, which asyncpg passes on,
so its connections can be told apart; should runsync set its own, one naming the daemon's pid is
counted for it):
- first copy: seconds from the daemons' start (process start and migrations included) until every
  source holds exactly its upstream runs, each with its current status (compared by count and md5
  of the sorted id:status lines per source, polled every twentieth of the interval, 0.25-2 s);
- convergence: then, for --duration seconds, rounds of changes at random moments of a tick: in
  --change-share of the sources (all, by default) the open runs finish and --change-runs new runs
  start; the seconds until every changed source holds them (given up after 4 intervals, 30 s at
  least);
- whether every daemon stayed up (and when and how the ones that exited did), /readyz at the end,
  failed passes (from the daemons' logs, where every pass ends with a line, even one that failed
  before it had a row in `passes`; and from `passes`) with their commonest errors, and passes per
  stream per tick over the observed window (ticks are jittered by up to a tenth of the interval,
  so a little under 1 is on target; 0.75-1.25 passes);
- connections, sampled every half second from pg_stat_activity: the peak of each daemon, of all
  of them together, and of the whole server (this script's own two included);
- CPU seconds (/proc/<pid>/stat) and peak RSS (VmHWM) of each daemon, its share of a core while
  observed, the simulator's CPU, and how busy the machine was.
A table follows, then the figures as one JSON line.

Each daemon runs with runsync's defaults ([database] max_connections = 10, [worker] max_passes =
32); --extra-database-toml appends lines to the `[database]` table of every daemon's config (and
--extra-source-toml to every source), and --budget checks each daemon's peak against a number
(10 unless told, the default budget).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import urlopen

import asyncpg
from benchdb import fresh_database, with_database

TOKEN = "bench-token"
TOKEN_ENV = "BENCH_TOKEN"
SEED = 42
MONITOR = "bench-scale-monitor"  # this script's own connections' application_name
SCENARIOS = {
    # The targets: each later change stored within `within` intervals.
    "one-daemon": {"sources": 1000, "replicas": 1, "every": "30s", "duration": 180, "within": 1},
    "replicas": {"sources": 150, "replicas": 3, "every": "5s", "duration": 60, "within": 2},
}
APIFY_SCOPES = ("account", "actor", "task")
APIFY_TERMINAL = (("SUCCEEDED", "FAILED", "ABORTED", "TIMED-OUT"), (86, 7, 4, 3))
APIFY_OPEN_SHARE, RAKER_OPEN_SHARE = 0.02, 0.05
TICK_TOLERANCE = (0.75, 1.25)  # passes per stream per tick that count as once per tick


# The upstreams: a process of their own, driven through its stdin and stdout.


def plan_sources(count: int) -> list[dict[str, str]]:
    """Two thirds Apify sources (whole account, one actor, one task in turn), one third RakerOne
    sources of one project each."""
    apify = round(count * 2 / 3)
    plan = [
        {"name": f"apify-{i:04d}", "kind": "apify", "scope": APIFY_SCOPES[i % 3]}
        for i in range(apify)
    ]
    plan += [
        {"name": f"raker-{i:04d}", "kind": "rakerone", "scope": "project", "project": f"p{i:04d}"}
        for i in range(count - apify)
    ]
    return plan


def digest(pairs: list[tuple[str, str]]) -> list:
    """A source's runs as [count, md5 of its sorted id:status lines]: what the database query
    in `stored` computes."""
    text = "\n".join(f"{run_id}:{status}" for run_id, status in sorted(pairs))
    return [len(pairs), hashlib.md5(text.encode()).hexdigest()]


class Upstreams:
    """The simulated accounts and projects behind the sources, and what each source should hold."""

    def __init__(self, plan: list[dict[str, str]], runs: int, seed: int) -> None:
        from worker.sources.apify.simulator import ApifyWorld
        from worker.sources.rakerone.simulator import RakerWorld

        self.rng = random.Random(seed)
        self.plan = {source["name"]: source for source in plan}
        self.apify: dict[str, ApifyWorld] = {}
        for index, source in enumerate(s for s in plan if s["kind"] == "apify"):
            world = self.apify[source["name"]] = ApifyWorld(runs=0, seed=seed + index)
            if source["scope"] in ("actor", "task"):
                source[source["scope"]] = getattr(world, f"{source['scope']}s")[0]["id"]
            self._fill(world, source, runs)
        projects = {s["project"]: runs for s in plan if s["kind"] == "rakerone"}
        self.raker = RakerWorld(projects=projects, seed=seed, open_share=RAKER_OPEN_SHARE)
        self.truth = {name: self._truth(name) for name in self.plan}

    @staticmethod
    def _scope(source: dict[str, str]) -> dict[str, str]:
        """add_runs' arguments that put a run in the source's scope."""
        return {f"{k}_id": source[k] for k in ("actor", "task") if source["scope"] == k}

    def _fill(self, world: Any, source: dict[str, str], runs: int) -> None:
        """`runs` runs over the last 30 days in the source's scope, the newest 2% still open."""
        now, still_open = world.now(), round(runs * APIFY_OPEN_SHARE)
        for k in range(runs):
            started = now - timedelta(days=30) * (runs - k) / runs
            status = "RUNNING" if k >= runs - still_open else self.rng.choices(*APIFY_TERMINAL)[0]
            world.add_runs(1, status=status, started_at=started, **self._scope(source))

    def _truth(self, name: str) -> list:
        source = self.plan[name]
        if source["kind"] == "rakerone":
            items = self.raker.list_items(source["project"])
        else:
            items = self.apify[name].list_items()
            if source["scope"] == "actor":
                items = [i for i in items if i["actId"] == source["actor"]]
            elif source["scope"] == "task":
                items = [i for i in items if i.get("actorTaskId") == source["task"]]
        return digest([(item["id"], item["status"]) for item in items])

    def change(self, names: list[str], runs: int) -> None:
        """In each named source's scope: the open runs finish, then `runs` new ones start."""
        for name in names:
            source = self.plan[name]
            if source["kind"] == "rakerone":
                self.raker.finish_open(source["project"])
                self.raker.add_runs(source["project"], runs, status="processing")
            else:
                self.apify[name].finish_open("SUCCEEDED")
                self.apify[name].add_runs(runs, status="RUNNING", **self._scope(source))
            self.truth[name] = self._truth(name)


async def serve(count: int, runs: int, latency_ms: float, seed: int) -> None:
    """Serves the upstreams of `count` sources until stdin closes. Prints the sources (with their
    base URLs) as one JSON line, then answers each JSON command line with one JSON line:
    {"op": "truth"} and {"op": "change", "sources": [...], "runs": n}."""
    from aiohttp import web

    from worker.simulator import Simulator

    upstreams = await asyncio.to_thread(Upstreams, plan_sources(count), runs, seed)
    latency = latency_ms / 1000
    apify = web.Application()
    simulators = []
    for name, world in upstreams.apify.items():
        simulators.append(Simulator(world, token=TOKEN, latency=latency))
        apify.add_subapp(f"/{name}", simulators[-1].app)  # one account per path prefix
    runner = web.AppRunner(apify, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    apify_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    simulators.append(Simulator(upstreams.raker, token=TOKEN, latency=latency))
    raker_url = await simulators[-1].start("127.0.0.1", 0)
    for name, source in upstreams.plan.items():
        source["base_url"] = f"{apify_url}/{name}" if source["kind"] == "apify" else raker_url
    print(json.dumps(list(upstreams.plan.values())), flush=True)
    while line := await asyncio.to_thread(sys.stdin.readline):
        command = json.loads(line)
        if command["op"] == "change":
            upstreams.change(command["sources"], command["runs"])
        refused = sum(world.rate_limiter.refused_total for world in upstreams.apify.values())
        requests = sum(sum(s.requests.values()) for s in simulators)
        answer = {"truth": upstreams.truth, "requests": requests, "rate_limited": refused}
        print(json.dumps(answer), flush=True)
    await runner.cleanup()
    await simulators[-1].stop()


class Simulated:
    """The upstreams' process, seen from the benchmark."""

    def __init__(self, process: asyncio.subprocess.Process, sources: list[dict]) -> None:
        self.process = process
        self.sources = sources

    @classmethod
    async def start(cls, count: int, runs: int, latency_ms: float) -> Simulated:
        command = [__file__, "serve", "--sources", str(count), "--runs-per-source", str(runs),
                   "--latency", str(latency_ms)]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            sys.executable, *command,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26,
        )  # fmt: skip
        line = await process.stdout.readline()
        if not line:
            raise RuntimeError(f"the simulator exited ({await process.wait()}) before it served")
        return cls(process, json.loads(line))

    async def ask(self, op: str, **arguments: Any) -> dict:
        self.process.stdin.write(json.dumps({"op": op, **arguments}).encode() + b"\n")
        await self.process.stdin.drain()
        return json.loads(await self.process.stdout.readline())

    async def stop(self) -> None:
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


# Postgres.


@contextmanager
def postgres(work: Path, max_connections: int):
    """The server's URL: RUNSYNC_DATABASE_URL, or an embedded server with max_connections."""
    if url := os.environ.get("RUNSYNC_DATABASE_URL"):
        yield url
        return
    from worker import database

    with database.embedded(work / "db") as url:  # the first start runs initdb
        asyncio.run(alter_system(url, max_connections))
    with database.embedded(work / "db") as url:  # the restart reads postgresql.auto.conf
        yield url


async def alter_system(url: str, max_connections: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"ALTER SYSTEM SET max_connections = {int(max_connections)}")
    finally:
        await conn.close()


async def stored(conn: asyncpg.Connection, names: list[str]) -> dict[str, list]:
    """What the named sources hold, as `digest` gives it for the upstream's runs."""
    try:
        rows = await conn.fetch(
            """SELECT source, count(*) AS runs, md5(string_agg(run_id || ':' || status, E'\\n'
                                                               ORDER BY run_id COLLATE "C")) AS md5
               FROM runsync.runs WHERE source = ANY($1) GROUP BY source""",
            names,
        )
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        return {}  # not migrated yet
    return {row["source"]: [row["runs"], row["md5"]] for row in rows}


# The daemons.


@dataclass
class Replica:
    index: int
    port: int
    log: Path
    process: asyncio.subprocess.Process
    application_name: str
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    peak_connections: int = 0
    exited_at: float | None = None  # seconds after the start, if it exited by itself

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def config_text(sources: list[dict], every: str, port: int, args: argparse.Namespace) -> str:
    """One daemon's config: the sources, its endpoint, and whatever the options add."""
    lines = ["[database]", *args.extra_database_toml, "", "[http]", f'listen = "127.0.0.1:{port}"']
    for source in sources:
        lines += ["", "[[sources]]"]
        for key in ("name", "kind", "base_url", "actor", "task", "project"):
            if key in source:
                lines.append(f'{key} = "{source[key]}"')
        lines += [f'token_env = "{TOKEN_ENV}"', f'every = "{every}"', *args.extra_source_toml]
    return "\n".join(lines) + "\n"


async def check_config(path: Path, env: dict[str, str]) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "--config", str(path), "check-config", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"runsync check-config failed:\n{output.decode()[-3000:]}")


async def spawn_replicas(
    count: int, sources: list[dict], url: str, work: Path, args: argparse.Namespace
) -> list[Replica]:
    replicas = []
    for index in range(count):
        port, name = free_port(), f"bench-scale-replica-{index}"
        path = work / f"replica-{index}.toml"
        path.write_text(config_text(sources, args.every, port, args))
        env = {**os.environ, TOKEN_ENV: TOKEN,
               "RUNSYNC_DATABASE_URL": with_database(url, urlsplit(url).path[1:], name)}  # fmt: skip
        if index == 0:
            await check_config(path, env)
        log = work / f"replica-{index}.log"
        with log.open("w") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "--config", str(path), "run",
                env=env, stdin=asyncio.subprocess.DEVNULL, stdout=stderr, stderr=stderr,
            )  # fmt: skip
        replicas.append(Replica(index, port, log, process, name))
    return replicas


async def stop_replicas(replicas: list[Replica]) -> list[int | None]:
    """SIGTERM to each daemon still up; their exit codes (killed after 30 s: None)."""
    for replica in replicas:
        if replica.alive:
            replica.process.send_signal(signal.SIGTERM)
    codes = []
    for replica in replicas:
        try:
            codes.append(await asyncio.wait_for(replica.process.wait(), 30))
        except TimeoutError:
            replica.process.kill()
            await replica.process.wait()
            codes.append(None)
    return codes


def readyz(port: int) -> int | str:
    try:
        with urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return answer.status
    except HTTPError as error:
        return error.code
    except (URLError, OSError):
        return "down"


def log_errors(path: Path) -> dict[str, Any]:
    """A daemon's log: its failed passes (each pass ends with one line, also a pass that failed
    before the passes table had its row), its error lines, the commonest, "too many clients"."""
    messages: Counter[str] = Counter()
    failed = too_many = 0
    with path.open(errors="replace") as lines:
        for line in lines:
            too_many += "too many clients" in line
            if not line.startswith("{"):
                continue
            with suppress(ValueError):
                record = json.loads(line)
                failed += record.get("event") == "pass failed"
                if record.get("level") in ("error", "critical"):
                    text = f"{record.get('event')}: {record.get('error', '')}"
                    messages[text[:160]] += 1
    return {"passes_failed": failed, "errors": sum(messages.values()),
            "too_many_clients": too_many, "top": messages.most_common(3)}  # fmt: skip


# Measuring.


def process_cpu(pid: int) -> float:
    """CPU seconds a live process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine_busy() -> float:
    """CPU seconds this machine has spent not idle, all cores together (Linux /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


@dataclass
class Monitor:
    """Samples, every half second, the connections of each daemon, of all of them and of the
    whole server, and each daemon's CPU and memory."""

    conn: asyncpg.Connection
    replicas: list[Replica]
    started: float = field(default_factory=time.monotonic)
    peak_total: int = 0  # the daemons' connections together
    peak_server: int = 0  # every client connection of the server, this script's included
    unattributed: int = 0  # peak of connections to the database that name no daemon

    async def run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(0.5)

    async def sample(self) -> None:
        rows = await self.conn.fetch(
            """SELECT datname = current_database() AS ours, application_name, count(*) AS n
               FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1, 2"""
        )
        self.peak_server = max(self.peak_server, sum(row["n"] for row in rows))
        ours = {row["application_name"]: row["n"] for row in rows if row["ours"]}
        ours.pop(MONITOR, None)
        self.peak_total = max(self.peak_total, sum(ours.values()))
        claimed = 0
        for replica in self.replicas:
            pid = str(replica.process.pid)
            held = sum(n for name, n in ours.items()
                       if name == replica.application_name or pid in name)  # fmt: skip
            claimed += held
            replica.peak_connections = max(replica.peak_connections, held)
            self.read_process(replica)
        self.unattributed = max(self.unattributed, sum(ours.values()) - claimed)

    def read_process(self, replica: Replica) -> None:
        if not replica.alive:
            if replica.exited_at is None:
                replica.exited_at = time.monotonic() - self.started
            return
        with suppress(OSError, ValueError):  # it may exit between the check and the read
            replica.cpu_s = process_cpu(replica.process.pid)
            replica.peak_rss_mb = peak_rss_mb(replica.process.pid)


async def wait_until_stored(
    conn: asyncpg.Connection, truth: dict[str, list], within: float, poll: float, label: str
) -> tuple[float | None, list[str]]:
    """Seconds until every source holds what `truth` says (None: not `within` seconds), and the
    sources that did not."""
    started = time.monotonic()
    lagging, said = sorted(truth), started
    while lagging:
        held = await stored(conn, lagging)
        lagging = [name for name in lagging if held.get(name) != truth[name]]
        elapsed = time.monotonic() - started
        if not lagging:
            return elapsed, []
        if elapsed > within:
            return None, lagging
        if time.monotonic() - said >= 15:
            said = time.monotonic()
            print(f"    {label}: {len(truth) - len(lagging)}/{len(truth)} sources done after "
                  f"{elapsed:.0f} s", flush=True)  # fmt: skip
        await asyncio.sleep(poll)
    return time.monotonic() - started, []


async def change_rounds(
    conn: asyncpg.Connection, simulated: Simulated, interval: float, args: argparse.Namespace
) -> list[float | None]:
    """Rounds of changes for --duration seconds, each at a random moment of a tick; the
    seconds each took to be stored (None: not within four intervals)."""
    rng = random.Random(SEED)
    names = [source["name"] for source in simulated.sources]
    deadline = time.monotonic() + args.duration
    seconds = []
    while not seconds or time.monotonic() < deadline:
        await asyncio.sleep(rng.uniform(0, interval))
        chosen = rng.sample(names, max(1, round(len(names) * args.change_share)))
        answer = await simulated.ask("change", sources=chosen, runs=args.change_runs)
        truth = {name: answer["truth"][name] for name in chosen}
        took, lagging = await wait_until_stored(
            conn, truth, max(4 * interval, 30), poll_seconds(interval), "change"
        )
        seconds.append(took)
        shown = "not stored" if took is None else f"{took:.1f} s"
        print(f"    change {len(seconds)} ({len(chosen)} sources): {shown}"
              + (f", {len(lagging)} sources behind" if lagging else ""), flush=True)  # fmt: skip
    return seconds


def poll_seconds(interval: float) -> float:
    return min(max(interval / 20, 0.25), 2.0)


async def pass_figures(
    conn: asyncpg.Connection, sources: list[dict], window: tuple[Any, Any], interval: float
) -> dict[str, Any]:
    """Outcomes of every pass, the commonest errors, and incremental passes per stream per tick
    within the observed window (database times)."""
    outcomes = dict(await conn.fetch("SELECT outcome, count(*) FROM runsync.passes GROUP BY 1"))
    errors = await conn.fetch(
        """SELECT left(error, 160) AS error, count(*) AS n FROM runsync.passes
           WHERE outcome = 'failed' GROUP BY 1 ORDER BY 2 DESC LIMIT 3"""
    )
    rows = await conn.fetch(
        """SELECT source, stream, count(*) AS n FROM runsync.passes
           WHERE started_at >= $1 AND started_at < $2 AND stream LIKE 'incremental%'
           GROUP BY 1, 2""",
        *window,
    )
    counts = {(row["source"], row["stream"]): row["n"] for row in rows}
    ticks = (window[1] - window[0]).total_seconds() / interval
    streams = [
        (s["name"], f"incremental/{s['project']}" if "project" in s else "incremental")
        for s in sources
    ]
    per_tick = sorted(counts.get(stream, 0) / ticks for stream in streams)
    low, high = TICK_TOLERANCE
    return {
        "outcomes": outcomes,
        "failed": outcomes.get("failed", 0),
        "top_errors": [[row["error"], row["n"]] for row in errors],
        "ticks_observed": round(ticks, 1),
        "passes_per_tick": {
            "min": round(per_tick[0], 2),
            "median": round(statistics.median(per_tick), 2),
            "max": round(per_tick[-1], 2),
            "streams_outside": sum(not low <= x <= high for x in per_tick),
        },
    }


# One scenario.


@dataclass
class Scenario:
    """One scenario's processes and connections, and what was measured while they ran."""

    name: str
    args: argparse.Namespace
    interval: float
    simulated: Simulated
    conns: list[asyncpg.Connection]  # [sampling, the rest]
    replicas: list[Replica] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    async def measure(self, url: str, work: Path) -> None:
        args, conn, figures = self.args, self.conns[1], self.figures
        truth = (await self.simulated.ask("truth"))["truth"]
        figures["max_connections"] = int(await conn.fetchval("SHOW max_connections"))
        apify = sum(s["kind"] == "apify" for s in self.simulated.sources)
        print(f"  {self.name}: {args.sources} sources ({apify} Apify), {args.replicas} "
              f"replica(s), every {args.every}, {args.latency:g} ms, "
              f"{sum(t[0] for t in truth.values()):,} runs; max_connections "
              f"{figures['max_connections']}", flush=True)  # fmt: skip
        busy, started = machine_busy(), time.monotonic()
        simulator_cpu = process_cpu(self.simulated.process.pid)
        self.replicas = await spawn_replicas(args.replicas, self.simulated.sources, url, work, args)
        monitor = Monitor(self.conns[0], self.replicas)
        sampler = asyncio.create_task(monitor.run())
        try:
            await self.first_copy_then_changes(truth)
        finally:
            sampler.cancel()
            with suppress(asyncio.CancelledError):
                await sampler
        await monitor.sample()
        upstream = await self.simulated.ask("truth")
        figures.update(
            alive_at_end=sum(r.alive for r in self.replicas),
            exited=[{"replica": r.index, "after_s": round(r.exited_at or 0, 1),
                     "code": r.process.returncode}
                    for r in self.replicas if r.exited_at is not None],
            readyz=[await asyncio.to_thread(readyz, r.port) if r.alive else "exited"
                    for r in self.replicas],
            peak_connections=[r.peak_connections for r in self.replicas],
            peak_connections_total=monitor.peak_total,
            peak_connections_unattributed=monitor.unattributed,
            peak_connections_server=monitor.peak_server,
            cpu_s=[round(r.cpu_s, 1) for r in self.replicas],
            peak_rss_mb=[round(r.peak_rss_mb) for r in self.replicas],
            simulator_cpu_s=round(process_cpu(self.simulated.process.pid) - simulator_cpu, 1),
            machine_busy=round((machine_busy() - busy)
                               / ((time.monotonic() - started) * (os.cpu_count() or 1)), 2),
            upstream_requests=upstream["requests"],
            upstream_429s=upstream["rate_limited"],
        )  # fmt: skip

    async def first_copy_then_changes(self, truth: dict[str, list]) -> None:
        """The first copy's time, then the change rounds' and the passes' figures."""
        conn, figures, interval = self.conns[1], self.figures, self.interval
        first_copy, lagging = await wait_until_stored(
            conn, truth, self.args.timeout, poll_seconds(interval), "first copy"
        )
        print(f"    first copy: {'not done' if lagging else f'{first_copy:.1f} s'}", flush=True)
        window_start = await conn.fetchval("SELECT now()")
        cpu_before = [r.cpu_s for r in self.replicas]
        observed = time.monotonic()
        rounds = [] if lagging else await change_rounds(conn, self.simulated, interval, self.args)
        observed = time.monotonic() - observed
        window = (window_start, await conn.fetchval("SELECT now()"))
        done = [s for s in rounds if s is not None]
        figures.update(
            first_copy_s=None if lagging else round(first_copy, 1),
            first_copy_lagging=len(lagging),
            observed_s=round(observed, 1),
            convergence_s=[None if s is None else round(s, 1) for s in rounds],
            convergence_max_s=round(max(done), 1) if done and len(done) == len(rounds) else None,
            convergence_median_s=round(statistics.median(done), 1) if done else None,
            poll_s=poll_seconds(interval),
            observed_cpu_share=[round((r.cpu_s - before) / observed, 3) if observed else None
                                for r, before in zip(self.replicas, cpu_before, strict=True)],
            **await pass_figures(conn, self.simulated.sources, window, interval),
        )  # fmt: skip

    async def close(self) -> None:
        """Stops the daemons (recording how they exited), the connections and the simulator."""
        self.figures["exit_codes_after_sigterm"] = await stop_replicas(self.replicas)
        for conn in self.conns:
            await conn.close()
        await self.simulated.stop()
        self.figures["logs"] = logs = [log_errors(r.log) for r in self.replicas]
        self.figures["failed_logged"] = sum(log["passes_failed"] for log in logs)


async def run_scenario(name: str, args: argparse.Namespace, server: str, work: Path) -> dict:
    interval = parse_seconds(args.every)
    url = await fresh_database(server, f"bench_scale_{name.replace('-', '_')}")
    simulated = await Simulated.start(args.sources, args.runs_per_source, args.latency)
    monitor_url = with_database(url, urlsplit(url).path[1:], MONITOR)
    conns = [await asyncpg.connect(monitor_url) for _ in range(2)]
    scenario = Scenario(name, args, interval, simulated, conns)
    scenario.figures.update(
        scenario=name,
        sources=args.sources,
        apify_sources=sum(s["kind"] == "apify" for s in simulated.sources),
        replicas=args.replicas,
        every_s=interval,
        latency_ms=args.latency,
        runs_per_source=args.runs_per_source,
        convergence_within=SCENARIOS.get(name, {}).get("within", 1),
    )
    try:
        await scenario.measure(url, work)
    finally:
        await scenario.close()
    figures = scenario.figures
    figures["targets"] = targets(figures, args.budget)
    return figures


def parse_seconds(text: str) -> float:
    from worker.config import parse_duration

    return parse_duration(text).total_seconds()


def targets(row: dict, budget: int | None) -> dict[str, bool | None]:
    """The issue's targets, met or not (None: not measured)."""
    within = row["convergence_within"] * row["every_s"]
    met = {
        "first copy done": row["first_copy_s"] is not None,
        f"every change stored within {row['convergence_within']} interval(s)": (
            None if row["convergence_max_s"] is None and not row["convergence_s"]
            else row["convergence_max_s"] is not None and row["convergence_max_s"] <= within
        ),
        "all replicas up": not row["exited"] and row["alive_at_end"] == row["replicas"],
        "no pass failed": row["failed"] == 0 and row["failed_logged"] == 0,
        "every stream once per tick": row["passes_per_tick"]["streams_outside"] == 0,
    }  # fmt: skip
    if budget is not None:
        met[f"no replica above {budget} connections"] = max(row["peak_connections"]) <= budget
    return met


# The report.


def report(results: list[dict]) -> str:
    lines = [
        "| scenario | sources | replicas | every | first copy | change stored in (max / median, "
        "rounds) | replicas up | failed passes: logged (in `passes`) | passes per stream per tick (min / median / max)"
        " | peak connections (each; all; server) | CPU s (each) | CPU share observed (each) "
        "| peak RSS MB (each) |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | --- | --- | --- | --- |",
    ]
    for row in results:
        first = "not done" if row["first_copy_s"] is None else f"{row['first_copy_s']:.1f} s"
        most = "-" if row["convergence_max_s"] is None else f"{row['convergence_max_s']:.1f} s"
        median = "-" if row["convergence_median_s"] is None else f"{row['convergence_median_s']} s"
        tick = row["passes_per_tick"]
        lines.append(
            f"| {row['scenario']} | {row['sources']:,} | {row['replicas']} | {row['every_s']:g} s "
            f"| {first} | {most} / {median}, {len(row['convergence_s'])} "
            f"| {row['alive_at_end']}/{row['replicas']} | {row['failed_logged']} ({row['failed']}) "
            f"| {tick['min']} / {tick['median']} / {tick['max']} "
            f"| {'/'.join(map(str, row['peak_connections']))}; {row['peak_connections_total']}; "
            f"{row['peak_connections_server']} of {row['max_connections']} "
            f"| {'/'.join(map(str, row['cpu_s']))} "
            f"| {'/'.join(f'{x:.0%}' for x in row['observed_cpu_share'] if x is not None)} "
            f"| {'/'.join(map(str, row['peak_rss_mb']))} |"
        )
    for row in results:
        lines.append("")
        lines.append(f"{row['scenario']}:")
        for target, met in row["targets"].items():
            lines.append(f"  {'-' if met is None else 'ok' if met else 'MISSED'}  {target}")
        lines.append(f"  upstream requests {row['upstream_requests']:,}, 429s "
                     f"{row['upstream_429s']}, simulator CPU {row['simulator_cpu_s']} s, "
                     f"machine busy {row['machine_busy']:.0%}")  # fmt: skip
        lines.append(f"  pass outcomes {row['outcomes']}; readyz {row['readyz']}; exit codes "
                     f"after SIGTERM {row['exit_codes_after_sigterm']}")  # fmt: skip
        for exited in row["exited"]:
            lines.append(f"  replica {exited['replica']} exited with {exited['code']} after "
                         f"{exited['after_s']} s")  # fmt: skip
        for error, count in row["top_errors"]:
            lines.append(f"  failed x{count}: {error}")
        for index, log in enumerate(row["logs"]):
            if log["errors"] or log["too_many_clients"]:
                lines.append(f"  replica {index} log: {log['errors']} error lines, "
                             f"{log['too_many_clients']} 'too many clients'; {log['top']}")  # fmt: skip
    return "\n".join(lines)


def scenario_args(name: str, args: argparse.Namespace) -> argparse.Namespace:
    """The options of one scenario: its own, unless the command line gave them."""
    chosen = argparse.Namespace(**vars(args))
    for key in ("sources", "replicas", "every", "duration"):
        if getattr(args, key) is None:
            setattr(chosen, key, SCENARIOS[name][key])
    return chosen


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--sources", type=int, help="sources (one-daemon: 1000, replicas: 150)")
    parser.add_argument("--replicas", type=int, help="daemons (one-daemon: 1, replicas: 3)")
    parser.add_argument("--every", help="every source's interval (one-daemon: 30s, replicas: 5s)")
    parser.add_argument(
        "--duration", type=float, help="seconds of changes after the first copy (180, 60)"
    )
    parser.add_argument("--latency", type=float, default=100, help="ms before every answer")
    parser.add_argument("--runs-per-source", type=int, default=200)
    parser.add_argument("--max-connections", type=int, default=100, help="the embedded server's")
    parser.add_argument("--change-share", type=float, default=1.0, help="sources changed a round")
    parser.add_argument("--change-runs", type=int, default=2, help="new runs per changed source")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for the first copy")
    parser.add_argument(
        "--budget", type=int, default=10, help="connections a daemon may hold, to check (10)"
    )
    parser.add_argument(
        "--extra-database-toml",
        action="append",
        default=[],
        metavar="LINE",
        help="a line for [database], e.g. 'max_connections = 30'; repeatable",
    )
    parser.add_argument("--extra-source-toml", action="append", default=[], metavar="LINE",
                        help="a line for every [[sources]] table; repeatable")  # fmt: skip
    parser.add_argument("--logs", type=Path, help="keep the daemons' configs and logs here")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def main_serve() -> None:
    serving = argparse.ArgumentParser()
    serving.add_argument("serve")
    serving.add_argument("--sources", type=int, required=True)
    serving.add_argument("--runs-per-source", type=int, required=True)
    serving.add_argument("--latency", type=float, required=True)
    args = serving.parse_args()
    asyncio.run(serve(args.sources, args.runs_per_source, args.latency, SEED))


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        main_serve()
        return
    args = parse_args()
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    results = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="runsync-scale-")))
        server = stack.enter_context(postgres(work, args.max_connections))
        print(f"scale benchmark, {os.cpu_count()} cores", flush=True)
        for name in names:
            logs = args.logs / name if args.logs else work / name
            logs.mkdir(parents=True, exist_ok=True)
            try:
                row = asyncio.run(run_scenario(name, scenario_args(name, args), server, logs))
            except RuntimeError as error:  # a config runsync refuses, a simulator that died
                sys.exit(f"bench_scale: {error}")
            results.append(row)
    print()
    print(report(results))
    print(json.dumps({"benchmark": "scale", "results": results}, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
