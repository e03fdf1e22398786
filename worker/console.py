"""What people read on a terminal: the status table and the progress bars of passes (rich)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
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

from worker import status
from worker.model import Page


def _watermark(value: str | None) -> str:
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _when(moment: str | None, age: int | None) -> str:
    """An age, and the UTC time (its day, once a day old)."""
    if moment is None or age is None:
        return "never"
    shape = "%H:%M:%S" if age < 86400 else "%Y-%m-%d"
    return f"{status.age(age)} ago ({datetime.fromisoformat(moment).strftime(shape)})"


def _last_error(record: dict[str, Any], streams: list[dict[str, Any]]) -> Text | str:
    """The newest error, its first line: red while a stream fails, dim once all succeed again."""
    if not record["last_error"]:
        return "-"
    line = status.first_line(record["last_error"])
    failing = any(status.failing(stream) for stream in streams)
    # Text, not markup: an upstream's message may hold [brackets].
    return Text(
        f"{status.age(record['last_error_age_seconds'])} ago: {line}", "red" if failing else "dim"
    )


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
            status.age(record["lag_seconds"]),
            f"{record['runs']:,}",
            f"{record['open_runs']:,}",
            _when(record["last_success_at"], success),
            _last_error(record, streams),
            status.backfill_summary(streams),
            status.reconcile_summary(record),
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
            "started_at": status.iso(row["started_at"]),
            "renewed_at": status.iso(row["renewed_at"]),
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
            f"{status.age(record['renewed_age_seconds'])} ago",
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
    rows: list[dict[str, Any]],
    processes: list[dict[str, Any]],
    *,
    now: datetime,
    as_json: bool,
    only: str = "",
) -> None:
    """The sources, then the processes at work; `only`: "sources" or "processes". `now`: the
    database's clock, which the rows' times come from."""
    records = status.records(rows, now)
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
