"""Where each source stands, as plain JSON values: what `runsync status --json` prints, the status
table shows and the status page renders. Built from store.Store.status's rows; no I/O here.

Ages are measured against `now`, which callers take from the database (store.Store.now) so that
they compare the database's timestamps with the database's clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def age(seconds: int | None) -> str:
    """An age in its largest whole unit: 45s, 12m, 3h, 2d; "-" for none."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(seconds) >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None


def _since(moment: datetime | None, now: datetime) -> int | None:
    return int((now - moment).total_seconds()) if moment else None


def _figures(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """What a source and each of its streams report alike. Lag: now minus the newest run's start."""
    return {
        "watermark": iso(row["watermark"]),
        "lag_seconds": _since(row["newest_started_at"], now),
        "newest_started_at": iso(row["newest_started_at"]),
        "runs": row["runs"],
        "open_runs": row["open_runs"],
        "last_success_at": iso(row["last_success_at"]),
        "last_success_age_seconds": _since(row["last_success_at"], now),
        "last_error_at": iso(row["last_error_at"]),
        "last_error_age_seconds": _since(row["last_error_at"], now),
        "last_error": row["last_error"],
        # the newest reconcile sweep: when it finished, and the list requests it cost
        "reconcile_at": iso(row["reconcile_at"]),
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
        "finished_at": iso(row["backfill_finished_at"]),
    }


def records(rows: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """The status rows as plain JSON values (times in ISO 8601, ages in seconds)."""
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


def failing(record: dict[str, Any]) -> bool:
    """Its newest error came after its last success, or it has never succeeded."""
    success, error = record["last_success_at"], record["last_error_at"]
    return error is not None and (
        success is None or datetime.fromisoformat(error) > datetime.fromisoformat(success)
    )


def first_line(message: str | None) -> str:
    """An error's first line (the whole message is in `status --json`)."""
    return (message or "").strip().splitlines()[0] if (message or "").strip() else ""


def backfill_summary(streams: list[dict[str, Any]]) -> str:
    """A source's backfill in a few words: done; running or stopped with its windows and runs
    read; for a source of several projects, how many are in each state; "-" for none."""
    backfills = [s["backfill"] for s in streams if s["backfill"]]
    if not backfills:
        return "-"
    if len(streams) > 1:  # a source's row sums up its projects'
        states: dict[str, int] = {}
        for backfill in backfills:
            states[backfill["state"]] = states.get(backfill["state"], 0) + 1
        return ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    (backfill,) = backfills
    if backfill["state"] == "done":
        return "done"
    done = (
        f"{backfill['windows_done']}/{backfill['windows']} windows, " if backfill["windows"] else ""
    )
    planned = f" of {backfill['runs_planned']:,}" if backfill["runs_planned"] is not None else ""
    return f"{backfill['state']}: {done}{backfill['runs_read']:,}{planned} runs read"


def reconcile_summary(record: dict[str, Any]) -> str:
    if record["reconcile_at"] is None:
        return "-"
    return f"{age(record['reconcile_age_seconds'])} ago, {record['reconcile_requests']:,} requests"
