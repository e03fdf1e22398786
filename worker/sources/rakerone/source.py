"""RakerOne: the action runs of a project, newest first, keyset paged with an opaque cursor.

There is no time filter and no endpoint for one run. An incremental walk goes from the newest run
down to the watermark (less a small overlap); the watermark moves only once a walk reaches it, and
until then the walk's cursor, committed with each page, is the checkpoint. Open runs are found
again with the `status` filter (see worker/refresh.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from worker import jsontext
from worker.model import KEPT, Checkpoint, Column, Page, Position, Rejected, Request, Run
from worker.ratelimit import Published
from worker.sources.common import (
    DownToWatermark,
    InFlight,
    ItemError,
    PageError,
    Rewindable,
    check_count,
    check_not_future,
    dump,
    escaped_item,
    isoformat,
    newest_first_checkpoint,
    parse_time,
    start_times,
    text,
)
from worker.sources.rakerone.config import RakerOneConfig

# RakerOne's typed columns of runsync.runs (sql/migrations/0002_rakerone.sql), in the order a
# Run's `columns` holds them; its project is the runs' partition (runs.project).
COLUMNS = (Column("triggered_by", "text"), Column("result", "text", "{}::jsonb"))

MAX_RESTARTS = 3  # refused cursors in one walk before the pass gives up
REMEMBERED_CURSORS = 1000  # enough to catch a cycle, bounded whatever the history's size

# RakerOne publishes no limit: a conservative pace over all of a token's requests, which halves on
# a 429 and climbs back as for any upstream, and which max_requests_per_second replaces.
LIMITS = Published(per_token=20.0, guessed=True)


class RakerOneSource(DownToWatermark["KeysetWalk"]):
    upstream = "rakerone"
    refresh = "walks"
    windowed = False  # no time filter: a backfill is one keyset walk

    def __init__(self, config: RakerOneConfig, project: str) -> None:
        self.partition = project
        self.page_size = config.page_size
        self.overlap = config.overlap
        self.terminal = config.terminal_statuses
        self.list_path = f"/api/projects/{quote(project, safe='')}/action-runs"

    def _walk(self, checkpoint: Checkpoint, **options: Any) -> KeysetWalk:
        return KeysetWalk(
            self.list_path, checkpoint, self._reader, page_size=self.page_size, **options
        )

    def status_walk(self, status: str, floor: datetime | None) -> KeysetWalk:
        """The runs that are in `status` now, newest first, down to `floor`."""
        return self._walk(Checkpoint(), floor=floor, status=status)

    def search_walk(self, floor: datetime | None) -> KeysetWalk:
        """Every run, newest first, down to `floor`: finds runs that left their status."""
        return self._walk(Checkpoint(), floor=floor)

    def _reader(self, item: Any, observed_at: datetime) -> Run | Rejected:
        return read_item(item, observed_at, project=self.partition, terminal=self.terminal)


def read_item(
    item: Any, observed_at: datetime, *, project: str, terminal: frozenset[str]
) -> Run | Rejected:
    """One action run, or the reason it cannot be one: an object with an id and a status is a
    run (a queued one may not have started). Statuses are kept as received."""
    run_id = None
    try:
        if not isinstance(item, dict):
            raise ItemError(f"the item is a {type(item).__name__}, not an object")
        text(item, "id", required=True)
        stored, raw, note = escaped_item(item)
        run_id = stored["id"]
        try:
            status = text(stored, "status", required=True)
            started_at = parse_time(stored.get("startedAt"), "startedAt", required=False)
            check_not_future(started_at, observed_at)
            result = stored.get("result")
            is_terminal = status.casefold() in terminal
            return Run(
                run_id=run_id,
                status=status,
                is_terminal=is_terminal,
                started_at=started_at,
                finished_at=parse_time(stored.get("finishedAt"), "finishedAt", required=False),
                raw=raw,
                observed_at=observed_at,
                partition=project,
                notes=note,
                scope=project,
                # Statuses are matched without case, as is_terminal is.
                succeeded=status.casefold() == "completed" if is_terminal else None,
                columns=(
                    text(stored, "triggeredBy"),
                    None if result is None else jsontext.dumps(result),
                ),  # in the order of COLUMNS
            )
        except ItemError as error:
            raise ItemError(f"run {run_id[:40]}: {error}") from None
    except ItemError as error:
        return Rejected(str(error), dump(item), run_id, project)


@dataclass(frozen=True, kw_only=True)
class Keyset(InFlight):
    """A keyset walk's position: the upstream's cursor for the next page (None: the top)."""

    cursor: str | None = field(default=None, metadata=KEPT)


class KeysetWalk(Rewindable):
    """Newest first by cursor, down to `floor` (or the end), optionally filtered by status.

    No I/O. A refused cursor restarts the walk from the top (upserts make the repeat harmless);
    a cursor that comes back is an error, not an endless loop.
    """

    _position = ("cursor", "top", "done", "_remembered")

    def __init__(
        self,
        path: str,
        checkpoint: Checkpoint,
        reader: Callable[[Any, datetime], Run | Rejected],
        *,
        page_size: int,
        floor: datetime | None = None,
        until: datetime | None = None,
        status: str | None = None,
        walk: Position | None = None,
    ) -> None:
        self.path = path
        self.read = reader
        self.page_size = page_size
        self.floor, self.until, self.status = floor, until, status
        self.walk = walk or Position()
        self.watermark = checkpoint.watermark
        position = checkpoint.position(Keyset)
        self.cursor: str | None = position.cursor
        self.top = position.top
        self.done = False
        self.restarts = 0
        self._seen_cursors: deque[str] = deque(maxlen=REMEMBERED_CURSORS)
        self._remembered = 0  # cursors appended so far: undo() takes the last one back

    def undo(self) -> None:
        appended = self._remembered - self._saved[-1]
        super().undo()
        for _ in range(appended):
            self._seen_cursors.pop()

    def __str__(self) -> str:
        where = f"cursor {self.cursor[:16]}…" if self.cursor else "the top"
        floor = isoformat(self.floor) if self.floor else "the end"
        status = f" status={self.status}" if self.status else ""
        return f"{self.path}{status} from {where} down to {floor}"

    @property
    def checkpoint(self) -> Checkpoint:
        position = Keyset(**self.walk.scope(), cursor=self.cursor)
        return newest_first_checkpoint(self.watermark, self.top, self.done, position)

    def next_request(self) -> Request | None:
        if self.done:
            return None
        params = {"limit": str(self.page_size)}
        if self.cursor:
            params["cursor"] = self.cursor
        if self.status is not None:
            params["status"] = self.status
        return Request(self.path, params)

    def restart(self) -> bool:
        """After the server refused our cursor: from the top again, if we have not done so too often."""
        if self.cursor is None or self.restarts >= MAX_RESTARTS:
            return False
        self.restarts += 1
        self.cursor = None
        self._seen_cursors.clear()
        return True

    def advance(self, body: Any, observed_at: datetime) -> Page:
        self._save()
        if not isinstance(body, dict) or not isinstance(body.get("runs"), list):
            raise PageError("the answer has no runs array")
        following = body.get("nextCursor")
        if following is not None and (not isinstance(following, str) or not following):
            raise PageError("nextCursor is neither a string nor null")
        items = body["runs"]
        check_count(items, self.page_size, self.path)
        parsed = [self.read(item, observed_at) for item in items]
        runs = [p for p in parsed if isinstance(p, Run)]
        rejected = [p for p in parsed if isinstance(p, Rejected)]
        if self.until is not None:
            runs = [r for r in runs if r.started_at is None or r.started_at <= self.until]
        times = start_times(runs)
        if times:
            self.top = max(self.top, max(times)) if self.top else max(times)
        # Runs without a start (queued, or cancelled before they started) say nothing of where
        # the walk stands: only start times decide that it reached its floor.
        reached = self.floor is not None and any(t < self.floor for t in times)
        if following is not None:
            if following in self._seen_cursors or following == self.cursor:
                raise PageError(
                    f"{self.path} handed out the same cursor twice; stopping rather than looping"
                )
            self._seen_cursors.append(following)
            self._remembered += 1
        self.cursor = following
        self.done = following is None or reached
        return Page(
            runs, rejected, self.checkpoint, len(items), None,
            min(times, default=None), max(times, default=None),
        )  # fmt: skip
