"""The `runsync` command line: parses arguments and calls into the rest. No logic of its own."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from worker import config, console, database, health, observability, runtime, scheduler, sources
from worker.model import Outcome

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _date(value: str, *, end_of_day: bool = False) -> datetime:
    try:
        if len(value) == 10:  # a bare date covers the whole day
            day = datetime.combine(datetime.fromisoformat(value).date(), time(), UTC)
            return day + timedelta(days=1, milliseconds=-1) if end_of_day else day
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a date (YYYY-MM-DD or ISO 8601)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="config file (default: $RUNSYNC_CONFIG, else config/runsync.toml)",
    )
    common.add_argument(
        "--database-url",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="Postgres URL (default: $RUNSYNC_DATABASE_URL, else [database] url, "
        "else an embedded Postgres)",
    )
    common.add_argument("--log-level", default=argparse.SUPPRESS, metavar="LEVEL",
                        help="DEBUG, INFO (default), WARNING or ERROR")  # fmt: skip

    top = argparse.ArgumentParser(
        prog="runsync", parents=[common],
        description="Keeps a Postgres copy of the job runs of Apify and RakerOne.",
    )  # fmt: skip
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", parents=[common], help="the daemon: every source on its schedule")
    sync = commands.add_parser("sync", parents=[common], help="one incremental pass, then exit")
    sync.add_argument("sources", nargs="*", metavar="SOURCE", help="default: all sources")
    backfill = commands.add_parser("backfill", parents=[common], help="walk a source's history")
    backfill.add_argument("source", metavar="SOURCE")
    backfill.add_argument("--since", type=_date, metavar="DATE", help="runs started at or after")
    backfill.add_argument(
        "--until",
        type=lambda v: _date(v, end_of_day=True),
        metavar="DATE",
        help="runs started at or before (a bare date: through its end)",
    )
    backfill.add_argument("--restart", action="store_true",
                          help="walk the range again even if a backfill of it finished")  # fmt: skip
    status = commands.add_parser("status", parents=[common], help="where each source stands")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--processes", action="store_true",
                        help="the processes at work on the database and their budgets, "
                             "instead of the sources")  # fmt: skip
    commands.add_parser("migrate", parents=[common], help="apply the sql/ migrations")
    commands.add_parser("check-config", parents=[common], help="validate config and secrets")
    simulate = commands.add_parser("simulate", parents=[common], help="serve simulated upstreams")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8765)
    simulate.add_argument(
        "--runs",
        type=int,
        default=1000,
        help="Apify runs; each RakerOne project and the GitHub repository get half as many",
    )
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument("--token", default="sim-token", help="the bearer token it accepts")
    simulate.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="added before every upstream answer",
    )
    simulate.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of upstream answers that go wrong, e.g. 0.1",
    )
    simulate.add_argument(
        "--fault-kinds",
        default=None,
        metavar="KIND,...",
        help="which faults (default: all): 429, 429-retry-after, 500, 502, "
        "503, stall, truncate, reset, bad-json, wrong-types",
    )
    simulate.add_argument("--fault-seed", type=int, default=0, help="replays the same faults")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet = args.command in ("status", "check-config", "migrate")
    observability.configure(level=getattr(args, "log_level", "WARNING" if quiet else "INFO"))
    try:
        if args.command == "simulate":
            return _simulate(args)
        settings = sources.load_settings(
            getattr(args, "config", None), database_url=getattr(args, "database_url", None)
        )
        observability.redact(settings.secrets())
        return _COMMANDS[args.command](settings, args)
    except (config.ConfigError, health.ListenError) as error:
        console.error(str(error))
        return EXIT_USAGE
    except runtime.DatabaseUnavailable as error:
        # Down, full or out of reach may pass (exit 1: try again later; the daemon waits for
        # it); a wrong password, user or database name will not.
        console.error(str(error))
        return EXIT_FAILED if error.transient else EXIT_USAGE
    except database.EmbeddedDatabaseError as error:
        console.error(str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _run(settings: config.Settings, _args: argparse.Namespace) -> int:
    return asyncio.run(scheduler.run_daemon(settings))


def _sync(settings: config.Settings, args: argparse.Namespace) -> int:
    for name in args.sources:
        settings.source(name)  # an unknown name is a usage error before any work
    with console.PassProgress() as bars:
        if bars.live:  # the bars and a line per pass below them, rather than every log line
            observability.configure(level=getattr(args, "log_level", "WARNING"))
        results = asyncio.run(
            scheduler.run_once(settings, args.sources, progress_for=bars.bar if bars.live else None)
        )
    if bars.live:
        for result in results:
            line = (f"{result.stream} pass of {result.label} {result.outcome}: {result.items:,} "
                    f"runs read, {result.written:,} written")  # fmt: skip
            if result.outcome == Outcome.FAILED:
                console.error(f"{line}; {result.error}")
            else:
                print(line)
    return EXIT_OK if all(result.ok for result in results) else EXIT_FAILED


def _backfill(settings: config.Settings, args: argparse.Namespace) -> int:
    settings.source(args.source)
    if args.since and args.until and args.since > args.until:
        raise config.ConfigError("--since is after --until")
    with console.PassProgress() as bars:
        if bars.live:
            observability.configure(level=getattr(args, "log_level", "WARNING"))
        results = asyncio.run(
            scheduler.run_backfill(
                settings, args.source, args.since, args.until, bars.bar(f"backfill {args.source}"),
                restart=args.restart,
            )
        )  # fmt: skip
    for result in results:
        if result.note:
            print(f"backfill of {result.label}: {result.note}")
        elif result.outcome == Outcome.SUCCEEDED:
            print(f"backfill of {result.label} succeeded: {result.items:,} runs "
                  f"read, {result.written:,} written, {result.quarantined:,} quarantined")  # fmt: skip
        elif result.outcome == Outcome.SKIPPED:
            console.error(f"backfill of {result.label} is already running elsewhere")
        else:
            console.error(f"backfill of {result.label} {result.outcome}: "
                          f"{result.error or 'stopped'}")  # fmt: skip
    return EXIT_OK if all(r.outcome == Outcome.SUCCEEDED for r in results) else EXIT_FAILED


def _status(settings: config.Settings, args: argparse.Namespace) -> int:
    async def read() -> tuple[list[dict[str, Any]], list[dict[str, Any]], datetime]:
        async with runtime.open_store(settings, migrate=True) as db:
            partitions = {s.name: sources.partitions(s) for s in settings.sources}
            found = await db.status([s.name for s in settings.sources], partitions)
            # A process renews its row every third of takeover_after: one not seen for a whole
            # takeover_after is gone.
            return found, await db.processes(settings.takeover_after), await db.now()

    found, processes, now = asyncio.run(read())
    only = "processes" if args.processes else ("sources" if args.json else "")
    console.print_status(found, processes, now=now, as_json=args.json, only=only)
    return EXIT_OK


def _migrate(settings: config.Settings, _args: argparse.Namespace) -> int:
    async def apply() -> list[str]:
        async with runtime.open_store(settings, migrate=False) as db:
            return await db.migrate()

    applied = asyncio.run(apply())
    print(f"applied {', '.join(applied)}" if applied else "the schema is up to date")
    return EXIT_OK


def _check_config(settings: config.Settings, _args: argparse.Namespace) -> int:
    print(f"config {settings.path}: ok")
    if settings.database_url is None:
        print(f"database: embedded Postgres in {settings.data_dir.resolve() / 'postgres'}")
    else:
        asyncio.run(_reach_database(settings))  # else DatabaseUnavailable: exit 1, or 2
        url = config.redact_url(settings.database_url.reveal())
        print(f"database: {url} (from {settings.database_url_origin}), reachable")
    print(f"http: {settings.listen}")
    if not settings.status_page:
        print("status page: off")
    else:
        print(f"status page: http://{settings.status_page_listen or settings.listen}/")
    now = datetime.now(UTC)
    for source in settings.sources:
        paths = ", ".join(source.base_url + stream.list_path for stream in sources.build(source))
        print(f"source {source.name}: {source.kind} {paths}, {source.schedule}, "
              f"token from ${source.token_env} (set)")  # fmt: skip
        ticks = ", ".join(f"{t:%Y-%m-%d %H:%M:%S}" for t in scheduler.next_fire_times(source, now))
        print(f"  next ticks (UTC): {ticks}" + ("" if source.cron else " (before jitter)"))
    return EXIT_OK


async def _reach_database(settings: config.Settings) -> None:
    async with runtime.open_store(settings, migrate=False):
        pass


def _simulate(args: argparse.Namespace) -> int:
    from worker import simulator

    kinds = tuple(args.fault_kinds.split(",")) if args.fault_kinds else simulator.FAULT_KINDS
    faults = f", {args.fault_rate:.0%} faults (seed {args.fault_seed})" if args.fault_rate else ""
    latency = f", {args.latency * 1000:g} ms latency" if args.latency else ""
    demos = sources.demos()
    names = [demo.name for demo in demos]
    named = " and ".join(filter(None, (", ".join(names[:-1]), *names[-1:])))  # A, B and C
    holds = ", ".join(demo.holds(args.runs) for demo in demos)
    print(f"simulated {named} on http://{args.host}:{args.port} (token {args.token!r}, seed "
          f"{args.seed}): {holds}{faults}{latency}; Ctrl-C stops it", flush=True)  # fmt: skip
    try:
        asyncio.run(simulator.serve(
            sources.demo_worlds(args.runs, args.seed), host=args.host, port=args.port,
            token=args.token, fault_rate=args.fault_rate, fault_kinds=kinds,
            fault_seed=args.fault_seed, latency=args.latency,
        ))  # fmt: skip
    except KeyboardInterrupt:
        pass
    except ValueError as error:  # a bad fault kind or rate
        console.error(str(error))
        return EXIT_USAGE
    return EXIT_OK


_COMMANDS: dict[str, Callable[[config.Settings, argparse.Namespace], int]] = {
    "run": _run,
    "sync": _sync,
    "backfill": _backfill,
    "status": _status,
    "migrate": _migrate,
    "check-config": _check_config,
}

if __name__ == "__main__":
    sys.exit(main())
