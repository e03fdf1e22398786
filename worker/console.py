"""What people read on a terminal: the status table and the progress bars of passes (rich)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypedDict

from rich.console import Console, JustifyMethod, OverflowMethod
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from worker.model import Page


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(seconds) >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None


def _since(moment: datetime | None, now: datetime) -> int | None:
    return int((now - moment).total_seconds()) if moment else None


def _figures(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """What a source and each of its streams report alike. Lag: now minus the newest run's start."""
    return {
        "watermark": _iso(row["watermark"]),
        "lag_seconds": _since(row["newest_started_at"], now),
        "newest_started_at": _iso(row["newest_started_at"]),
        "runs": row["runs"],
        "open_runs": row["open_runs"],
        "last_success_at": _iso(row["last_success_at"]),
        "last_success_age_seconds": _since(row["last_success_at"], now),
        "last_error_at": _iso(row["last_error_at"]),
        "last_error_age_seconds": _since(row["last_error_at"], now),
        "last_error": row["last_error"],
        # the newest reconcile sweep: when it finished, and the list requests it cost
        "reconcile_at": _iso(row["reconcile_at"]),
        "reconcile_age_seconds": _since(row["reconcile_at"], now),
        "reconcile_requests": row["reconcile_requests"],
    }


def _backfill(row: dict[str, Any]) -> dict[str, Any] | None:
    """done, running (a process walks it now) or stopped (unfinished: `runsync backfill` resumes
    it); the windows of a windowed one, and the runs an unfinished one has read so far."""
    if row["backfill_state"] is None:
        return None
    since, until = row["backfill_range"] or (None, None)
    return {
        "state": row["backfill_state"],
        "since": since,
        "until": until,
        "windows": row["backfill_windows"],
        "windows_done": row["backfill_windows_done"],
        "runs_read": row["backfill_runs_read"],
        "runs_planned": row["backfill_runs_planned"],
        "finished_at": _iso(row["backfill_finished_at"]),
    }


def status_records(rows: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """The status rows as plain JSON values (times in ISO 8601, ages in seconds): what
    `status --json` prints and the table shows."""
    return [
        {
            "source": row["source"],
            "configured": row["configured"],
            **_figures(row, now),
            "walks_in_flight": row["walks_in_flight"],
            "backfills_in_flight": row["backfills_in_flight"],
            "streams": [
                {
                    "project": stream["project"],
                    **_figures(stream, now),
                    "walk_in_flight": stream["walk_in_flight"],
                    "backfill": _backfill(stream),
                }
                for stream in row["streams"]
            ],
        }
        for row in rows
    ]


def _watermark(value: str | None) -> str:
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _when(moment: str | None, age: int | None) -> str:
    """An age, and the UTC time (its day, once a day old)."""
    if moment is None or age is None:
        return "never"
    shape = "%H:%M:%S" if age < 86400 else "%Y-%m-%d"
    return f"{_age(age)} ago ({datetime.fromisoformat(moment).strftime(shape)})"


def _failing(record: dict[str, Any]) -> bool:
    """Its newest error came after its last success, or it has never succeeded."""
    success, error = record["last_success_at"], record["last_error_at"]
    return error is not None and (
        success is None or datetime.fromisoformat(error) > datetime.fromisoformat(success)
    )


def _last_error(record: dict[str, Any], streams: list[dict[str, Any]]) -> Text | str:
    """The newest error, its first line: red while a stream fails, dim once all succeed again."""
    if not record["last_error"]:
        return "-"
    first_line = (record["last_error"].strip().splitlines() or [""])[0]
    failing = any(_failing(stream) for stream in streams)
    # Text, not markup: an upstream's message may hold [brackets].
    return Text(
        f"{_age(record['last_error_age_seconds'])} ago: {first_line}", "red" if failing else "dim"
    )


def _backfill_cell(streams: list[dict[str, Any]]) -> str:
    backfills = [s["backfill"] for s in streams if s["backfill"]]
    if not backfills:
        return "-"
    if len(streams) > 1:  # a source's row sums up its projects'
        states = Counter(b["state"] for b in backfills)
        return ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    (backfill,) = backfills
    if backfill["state"] == "done":
        return "done"
    done = (
        f"{backfill['windows_done']}/{backfill['windows']} windows, " if backfill["windows"] else ""
    )
    planned = f" of {backfill['runs_planned']:,}" if backfill["runs_planned"] is not None else ""
    return f"{backfill['state']}: {done}{backfill['runs_read']:,}{planned} runs read"


def _reconcile_cell(record: dict[str, Any]) -> str:
    if record["reconcile_at"] is None:
        return "-"
    return f"{_age(record['reconcile_age_seconds'])} ago, {record['reconcile_requests']:,} requests"


class _Column(TypedDict, total=False):
    """The options of a table's column (rich's Table.add_column)."""

    justify: JustifyMethod
    max_width: int
    no_wrap: bool
    overflow: OverflowMethod


def status_table(records: list[dict[str, Any]]) -> Table:
    table = Table(title="runsync sources", title_justify="left")
    right: _Column = {"justify": "right"}
    columns: dict[str, _Column] = {
        "source": {}, "watermark": {}, "lag": right, "runs": right, "open": right,
        "last success": {},
        # one line, cut short: `status --json` has the whole message
        "last error": {"max_width": 80, "no_wrap": True, "overflow": "ellipsis"},
        "backfill": {}, "reconcile": {},
    }  # fmt: skip
    for column, options in columns.items():
        table.add_column(column, **options)

    def add(name: str, record: dict[str, Any], streams: list[dict[str, Any]]) -> None:
        success = record["last_success_age_seconds"]
        table.add_row(
            Text(name),
            _watermark(record["watermark"]),
            _age(record["lag_seconds"]),
            f"{record['runs']:,}",
            f"{record['open_runs']:,}",
            _when(record["last_success_at"], success),
            _last_error(record, streams),
            _backfill_cell(streams),
            _reconcile_cell(record),
        )

    for record in records:
        streams = record["streams"]
        add(
            record["source"] + ("" if record["configured"] else " (not configured)"),
            record,
            streams,
        )
        for stream in streams if any(s["project"] for s in streams) else ():
            add(f"  {stream['project']}", stream, [stream])
    return table


def process_records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The processes at work on the database, with their budgets (store.Store.processes): what
    `status --processes --json` prints and the processes table shows."""
    return [
        {
            "process": row["holder"],
            "started_at": _iso(row["started_at"]),
            "renewed_at": _iso(row["renewed_at"]),
            "renewed_age_seconds": row["renewed_age_seconds"],
            "leases": row["leases"],
            **row["figures"],
        }
        for row in rows
    ]


def processes_table(records: list[dict[str, Any]]) -> Table:
    table = Table(title="runsync processes", title_justify="left")
    right: _Column = {"justify": "right"}
    columns: dict[str, _Column] = {
        "process": {}, "seen": right, "streams held": right, "connections": right,
        "waits": right, "passes": right, "queued": right, "oldest wait": right,
    }  # fmt: skip
    for column, options in columns.items():
        table.add_column(column, **options)
    for record in records:
        wait = max(record.get("pass_oldest_wait_seconds", 0),
                   record.get("connection_oldest_wait_seconds", 0))  # fmt: skip
        table.add_row(
            record["process"],
            f"{_age(record['renewed_age_seconds'])} ago",
            f"{record['leases']}",
            f"{record.get('connections_in_use', '-')}/{record.get('connections_limit', '-')}"
            f" (peak {record.get('connections_peak', '-')})",
            f"{record.get('connection_waits', 0):,}",
            f"{record.get('passes_in_flight', '-')}/{record.get('passes_limit', '-')}",
            f"{record.get('passes_queued', 0)}",
            f"{wait:.1f}s",
        )
    return table


def print_status(
    rows: list[dict[str, Any]], processes: list[dict[str, Any]], *, as_json: bool, only: str = ""
) -> None:
    """The sources, then the processes at work; `only`: "sources" or "processes"."""
    records = status_records(rows, datetime.now(UTC))
    workers = process_records(processes)
    if as_json:
        print(json.dumps(workers if only == "processes" else records, indent=2))
        return
    console = Console()
    if only != "processes":
        console.print(status_table(records))
    if only != "sources" and workers:
        console.print(processes_table(workers))


class PassProgress:
    """Progress bars fed by passes' page callbacks, one per stream that reads pages; the first
    page's total sets a bar's length. Shown only on a terminal."""

    def __init__(self) -> None:
        self._console = Console(stderr=True)
        self._bars = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("runs · reached {task.fields[reached]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            transient=False,
        )

    @property
    def live(self) -> bool:
        return self._console.is_terminal

    def __enter__(self) -> PassProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bars.stop()

    def bar(self, description: str) -> Callable[[Page, object], None]:
        """The page callback of one bar, which appears with its first page."""
        task: TaskID | None = None
        reached: datetime | None = None

        def advance(page: Page, _written: object) -> None:
            nonlocal task, reached
            if task is None:
                task = self._bars.add_task(description, total=None, reached="-")
            if self._bars.tasks[task].total is None and page.total is not None:
                self._bars.update(task, total=page.total)
            # An oldest-first walk reaches ever newer runs, a newest-first walk ever older ones.
            if page.newest and (reached is None or page.newest > reached):
                reached = page.newest
            elif page.oldest:
                reached = page.oldest
            when = reached.strftime("%Y-%m-%d %H:%M") if reached else "-"
            self._bars.update(task, advance=page.items, reached=when)

        return advance


def error(message: str) -> None:
    print(f"runsync: error: {message}", file=sys.stderr)
