"""What people read on a terminal: the status table and the backfill progress bar (rich)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from worker.model import Page


def _age(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = int((now - moment).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(seconds) >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None


def status_records(rows: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """The status rows as plain JSON values, with lag in seconds."""
    records = []
    for row in rows:
        newest = row["newest_started_at"]
        records.append(
            {
                "source": row["source"],
                "configured": row["configured"],
                "watermark": _iso(row["watermark"]),
                "lag_seconds": int((now - newest).total_seconds()) if newest else None,
                "newest_started_at": _iso(newest),
                "runs": row["runs"],
                "open_runs": row["open_runs"],
                "last_success_at": _iso(row["last_success_at"]),
                "last_error_at": _iso(row["last_error_at"]),
                "last_error": row["last_error"],
                "walks_in_flight": row["walks_in_flight"] or 0,
                "backfills_in_flight": row["backfills_in_flight"] or 0,
            }
        )
    return records


def print_status(rows: list[dict[str, Any]], *, as_json: bool) -> None:
    now = datetime.now(UTC)
    if as_json:
        print(json.dumps(status_records(rows, now), indent=2))
        return
    table = Table(title="runsync sources", title_justify="left")
    for column in ("source", "watermark", "lag", "runs", "open", "last success", "last error"):
        table.add_column(column, justify="right" if column in ("runs", "open", "lag") else "left")
    for row in rows:
        error = row["last_error"]
        failing = error and (
            row["last_success_at"] is None or row["last_error_at"] > row["last_success_at"]
        )
        table.add_row(
            row["source"] + ("" if row["configured"] else " (not configured)"),
            row["watermark"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
            if row["watermark"]
            else "-",
            _age(row["newest_started_at"], now),
            f"{row['runs']:,}",
            f"{row['open_runs']:,}",
            f"{_age(row['last_success_at'], now)} ago" if row["last_success_at"] else "never",
            f"[red]{error[:80]}[/red]" if failing else "-",
        )
    Console().print(table)


class BackfillProgress:
    """A progress bar fed by the pass's page callback; the first page's total sets its length."""

    def __init__(self, source: str) -> None:
        self._console = Console(stderr=True)
        self._bar = Progress(
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
        self._task = self._bar.add_task(f"backfill {source}", total=None, reached="-")
        self._reached: datetime | None = None

    @property
    def live(self) -> bool:
        return self._console.is_terminal

    def __enter__(self) -> BackfillProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bar.stop()

    def __call__(self, page: Page, _written: object) -> None:
        task = self._bar.tasks[0]
        if task.total is None and page.total is not None:
            self._bar.update(self._task, total=page.total)
        # An oldest-first walk reaches ever newer runs, a newest-first walk ever older ones.
        if page.newest and (self._reached is None or page.newest > self._reached):
            self._reached = page.newest
        elif page.oldest:
            self._reached = page.oldest
        reached = self._reached.strftime("%Y-%m-%d %H:%M") if self._reached else "-"
        self._bar.update(self._task, advance=page.items, reached=reached)


def error(message: str) -> None:
    print(f"runsync: error: {message}", file=sys.stderr)
