"""GitHub Actions: the workflow runs of one repository, or of one of its workflows.

The listing is newest first (observed; GitHub does not document an order) with page numbers, and
a filtered listing returns at most 1,000 results per search. So a walk never pages deep: it reads
`created` ranges whose upper bound moves down to the oldest creation time of each full page it
read (inclusive, to the second: the runs of that second are read twice, never skipped). Runs
created during the walk fall above the range and new pages cannot push runs past it; a deleted
run only shortens it. Where a page is not in creation order, or holds more runs than fit one page
all in one second, the range is cut in two instead, or read page by page within that second. A
second read page by page is the one place offsets count: a run of it deleted meanwhile would pull
the next page's first run onto the page already read. So the walk keeps the second's total_count
from its first page, and reads the second again from that page whenever the total has changed.

A re-run keeps the run's id and raises run_attempt; it goes back to an open status, and is found
by the walks of the open statuses, the reconcile sweep, or a webhook. A run deleted upstream
answers 404 when read again, and is marked gone.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, overload
from urllib.parse import quote

from worker.model import KEPT, Checkpoint, Column, Page, Position, Rejected, Request, Run
from worker.ratelimit import Budget, Published
from worker.sources.common import (
    MAX_CLOCK_SKEW,
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
    text,
)
from worker.sources.contract import Paginator
from worker.sources.github.config import GitHubConfig

MAX_PAGE = 100  # per_page's documented maximum
RESULT_CAP = 1000  # documented: a filtered listing returns at most this many results per search
# The webhook schemas' statuses; the REST schema has no enum, so any other value is kept as it is
# and counts as open until it is "completed".
OPEN_STATUSES = ("requested", "queued", "pending", "waiting", "in_progress")
TERMINAL_STATUS = "completed"
MISSING_STATUS = "unknown"  # a run object whose status is null (the schema allows it)
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # below any run: the lower end of a range cut in two
_SECOND = timedelta(seconds=1)
_INT32 = 2**31 - 1
# Asked of every endpoint: pull_requests lists open pull requests that match the run's head now,
# not what triggered it; and the single run and the listings then agree on the object.
_EXCLUDE_PULL_REQUESTS = {"exclude_pull_requests": "true"}

# GitHub's typed columns of runsync.runs (sql/migrations/0010_github.sql), in the order a Run's
# `columns` holds them; the view runsync.github_workflow_runs names them as analysts do.
COLUMNS = (
    Column("github_workflow", "text"),
    Column("github_workflow_id", "int8"),
    Column("github_event", "text"),
    Column("github_branch", "text"),
    Column("github_head_sha", "text"),
    Column("github_actor", "text"),
    Column("github_conclusion", "text"),
    Column("github_attempt", "int4"),
    Column("github_run_number", "int8"),
    Column("github_created_at", "timestamptz"),
    Column("github_updated_at", "timestamptz"),
)
_CREATED = 9  # the index of github_created_at in a Run's columns

# GitHub's published limits: an hourly budget per token (5,000 for a personal token, up to
# 15,000), stated in every answer's headers, which runsync paces to last until its reset; and a
# secondary limit of about 900 requests a minute per endpoint, which 15 a second stays under.
LIMITS = Published(per_token=15.0, budget=Budget())


class GitHubSource(DownToWatermark["CreatedWalk"]):
    upstream = "github"
    partition = None
    refresh = "open_list"
    windowed = False  # GitHub asks for one request at a time: a backfill is one walk

    def __init__(self, config: GitHubConfig) -> None:
        self.page_size = min(config.page_size, MAX_PAGE)
        self.overlap = config.overlap
        repository = quote(config.repository or "", safe="/")
        self.repository = config.repository or ""
        self.run_path = f"/repos/{repository}/actions/runs"
        if config.workflow:
            self.list_path = (
                f"/repos/{repository}/actions/workflows/{quote(config.workflow, safe='')}/runs"
            )
        else:
            self.list_path = self.run_path

    def _walk(self, checkpoint: Checkpoint, **options: Any) -> CreatedWalk:
        return CreatedWalk(self.list_path, checkpoint, page_size=self.page_size, **options)

    def open_walk(self) -> Paginator:
        """Every run open now, whatever its age: a walk per open status (the filter takes one).
        A re-run turns a finished run open again, so this is how one is found between sweeps."""
        return Chain([self._walk(Checkpoint(), status=status) for status in OPEN_STATUSES])

    def run_request(self, run_id: str) -> Request:
        # As the listings ask: raw is then the same whichever endpoint read the run last.
        return Request(f"{self.run_path}/{quote(run_id, safe='')}", dict(_EXCLUDE_PULL_REQUESTS))

    def read_run(self, body: Any, observed_at: datetime) -> Run | Rejected:
        if not isinstance(body, dict):
            raise PageError("the single-run answer is not an object")
        return read_item(body, observed_at)


def read_item(item: Any, observed_at: datetime) -> Run | Rejected:
    """One workflow run, or the reason it cannot be one. Only the id is required: every other
    field may be missing or null (a null status is stored as "unknown", an open one)."""
    run_id = None
    try:
        if not isinstance(item, dict):
            raise ItemError(f"the item is a {type(item).__name__}, not an object")
        run_id = _id(item.get("id"))
        stored, raw, note = escaped_item(item)
        try:
            return _read_fields(run_id, stored, raw, note, observed_at)
        except ItemError as error:
            raise ItemError(f"run {run_id}: {error}") from None
    except ItemError as error:
        return Rejected(str(error), dump(item), run_id)


def _read_fields(
    run_id: str, item: dict[str, Any], raw: str, note: str | None, observed_at: datetime
) -> Run:
    status = text(item, "status") or MISSING_STATUS
    conclusion = text(item, "conclusion")
    created_at = parse_time(item.get("created_at"), "created_at", required=False)
    updated_at = parse_time(item.get("updated_at"), "updated_at", required=False)
    # The start of the latest attempt (a re-run resets it); its creation, before the first.
    started_at = parse_time(item.get("run_started_at"), "run_started_at", required=False)
    started_at = started_at or created_at
    check_not_future(started_at, observed_at)
    check_not_future(created_at, observed_at)
    is_terminal = status == TERMINAL_STATUS
    workflow = text(item, "name")
    path = text(item, "path")
    return Run(
        run_id=run_id,
        status=status,
        is_terminal=is_terminal,
        started_at=started_at,
        # GitHub gives no end: a completed run was last updated when it ended.
        finished_at=updated_at if is_terminal else None,
        raw=raw,
        observed_at=observed_at,
        notes=note,
        scope=workflow or path,
        succeeded=(conclusion == "success") if is_terminal else None,
        columns=(
            workflow,
            _integer(item, "workflow_id", 2**63 - 1),
            text(item, "event"),
            text(item, "head_branch"),
            text(item, "head_sha"),
            _login(item, "actor"),
            conclusion,
            _integer(item, "run_attempt", _INT32),
            _integer(item, "run_number", 2**63 - 1),
            created_at,
            updated_at,
        ),  # in the order of COLUMNS
    )


def _id(value: Any) -> str:
    """GitHub's run id, an int64; a non-empty string is taken as it is."""
    if type(value) is int and value > 0:
        return str(value)
    if isinstance(value, str) and value:
        return value
    raise ItemError(f"id is {_describe(value)}, not a run id")


def _integer(item: dict[str, Any], field: str, most: int) -> int | None:
    value = item.get(field)
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= most:
        raise ItemError(f"{field} is {_describe(value)}, not a whole number up to {most}")
    return value


def _login(item: dict[str, Any], field: str) -> str | None:
    user = item.get(field)
    if user is None:
        return None
    if not isinstance(user, dict):
        raise ItemError(f"{field} is {_describe(user)}, not a user object")
    return text(user, "login")


def _describe(value: Any) -> str:
    if value is None:
        return "missing"
    return f"{type(value).__name__} {str(value)[:40]!r}"


def read_list(body: Any) -> tuple[list[Any], int | None]:
    """The items of a listing, with total_count when it is a number."""
    items = body.get("workflow_runs") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise PageError("the listing has no workflow_runs array")
    total = body.get("total_count")
    return items, total if type(total) is int and total >= 0 else None


def _created(run: Run) -> datetime | None:
    created: datetime | None = run.columns[_CREATED]
    return created


Range = tuple[datetime | None, datetime | None]  # (lowest, highest) creation, inclusive; None: open


@dataclass(frozen=True, kw_only=True)
class Ranges(InFlight):
    """A created-range walk's position: the ranges still to read (the newest last, as ISO text
    to the second; None: open), the page of the newest one, and that second's total."""

    ranges: tuple[tuple[str | None, str | None], ...] = field(default=(), metadata=KEPT)
    page: int = field(default=1, metadata=KEPT)
    # The total_count of the second read page by page (a range of one second past its first
    # page), as its first page said; None before that page.
    second_total: int | None = None


class CreatedWalk(Rewindable):
    """Newest first through `created` ranges, down to `floor` (or the oldest run), optionally up to
    `until` and filtered by one status. No I/O.

    The ranges still to read are a stack, the newest on top; the walk is done when it is empty.
    Each request asks for page 1 of the top range, or a later page of a range of one second.
    """

    _position = ("ranges", "page", "top", "done", "second_total")

    def __init__(
        self,
        path: str,
        checkpoint: Checkpoint,
        *,
        page_size: int,
        floor: datetime | None = None,
        until: datetime | None = None,
        status: str | None = None,
        walk: Position | None = None,
    ) -> None:
        self.path = path
        self.page_size = page_size
        self.status = status
        self.walk = walk or Position()
        self.watermark = checkpoint.watermark
        position = checkpoint.position(Ranges)
        self.top = position.top
        # The total_count of the second read page by page, as its first page said.
        self.second_total = position.second_total
        if position.ranges:
            self.ranges: tuple[Range, ...] = tuple(
                (_time(low, "range"), _time(high, "range")) for low, high in position.ranges
            )
            # A later page of a second whose total is not known (a checkpoint written before
            # the total was kept): that second from its first page.
            self.page = position.page if self.second_total is not None else 1
        else:
            self.ranges = ((_whole(floor), _whole(until, up=True)),)
            self.page = 1
        self.done = False

    def __str__(self) -> str:
        low, high = self.ranges[-1] if self.ranges else (None, None)
        status = f" status={self.status}" if self.status else ""
        page = f" page {self.page}" if self.page > 1 else ""
        return f"{self.path}{status} created {_span(low, high)}{page}, {len(self.ranges)} range(s)"

    @property
    def checkpoint(self) -> Checkpoint:
        ranges = tuple((_iso(low), _iso(high)) for low, high in self.ranges)
        position = Ranges(
            **self.walk.scope(), ranges=ranges, page=self.page, second_total=self.second_total
        )
        return newest_first_checkpoint(self.watermark, self.top, self.done, position)

    def next_request(self) -> Request | None:
        if self.done or not self.ranges:
            return None
        low, high = self.ranges[-1]
        params = {"per_page": str(self.page_size), "page": str(self.page), **_EXCLUDE_PULL_REQUESTS}
        if low is not None or high is not None:
            params["created"] = _span(low, high)
        if self.status is not None:
            params["status"] = self.status
        return Request(self.path, params)

    def restart(self) -> bool:
        return False  # a 422 here is a real error: no range is ever read past its first pages

    def shrink(self) -> bool:
        shrunk = super().shrink()
        if shrunk:
            self.page = 1  # pages of another size do not line up: the range from its start
            self.second_total = None
        return shrunk

    def advance(self, body: Any, observed_at: datetime) -> Page:
        self._save()
        items, total = read_list(body)
        check_count(items, self.page_size, self.path)
        parsed = [read_item(item, observed_at) for item in items]
        runs = [p for p in parsed if isinstance(p, Run)]
        rejected = [p for p in parsed if isinstance(p, Rejected)]
        created = [c for c in map(_created, runs) if c is not None]
        if created:
            self.top = max(self.top, max(created)) if self.top else max(created)
        read = (self.page - 1) * self.page_size + len(items)
        complete = len(items) < self.page_size or (total is not None and total <= read)
        if self.page > 1 and total is not None and total != self.second_total:
            # The second read page by page has changed since its first page (a run deleted, or
            # one seen late): the pages no longer line up. Again from its first page; this
            # page's runs are stored all the same.
            self.page, self.second_total = 1, None
        else:
            self._move(complete, created, total, observed_at)
        self.done = not self.ranges
        starts = [run.started_at for run in runs if run.started_at is not None]
        return Page(
            runs, rejected, self.checkpoint, len(items), total,
            min(starts, default=None), max(starts, default=None),
        )  # fmt: skip

    def _move(
        self,
        complete: bool,
        created: Sequence[datetime],
        total: int | None,
        observed_at: datetime,
    ) -> None:
        """The next position after a page of the top range; `created`: the page's creation
        times in the order served; `total`: the page's total_count."""
        low, high = self.ranges[-1]
        rest = self.ranges[:-1]
        if complete:
            self.ranges, self.page, self.second_total = rest, 1, None
            return
        in_order = bool(created) and all(a >= b for a, b in itertools.pairwise(created))
        if in_order and self.page == 1:
            # The range's newest runs, in order: nothing in it is newer than the page's newest.
            oldest, newest = created[-1], created[0]
            if oldest < newest or (high is not None and oldest < high):
                # Every run of (oldest, high] was on this page: on from `oldest`, inclusive.
                self.ranges, self.page = (*rest, (low, oldest)), 1
                return
            if low != oldest:
                # A full page within one second: that second page by page (from its first
                # page, whose total_count the later ones are checked against), then below it.
                self.ranges, self.page = (*rest, (low, oldest - _SECOND), (oldest, oldest)), 1
                return
        if low is not None and low == high:
            if self.page * self.page_size >= RESULT_CAP:
                raise PageError(
                    f"{self.path}: more than {RESULT_CAP} runs created in the second "
                    f"{isoformat(low)}; GitHub lists no more of them"
                )
            if self.page == 1:
                self.second_total = total
            self.page += 1
            return
        # Not in creation order: cut the range in two, the newer half first.
        top = high or _whole(observed_at + MAX_CLOCK_SKEW, up=True)
        bottom = low or _EPOCH
        middle = _whole(bottom + (top - bottom) / 2)
        self.ranges, self.page = (*rest, (low, middle), (middle + _SECOND, top)), 1


class Chain:
    """Walks one paginator after the other (each open status's), as one walk."""

    def __init__(self, walks: Sequence[Paginator]) -> None:
        self._walks = list(walks)
        self._index = 0

    def __str__(self) -> str:
        return str(self._walks[min(self._index, len(self._walks) - 1)])

    @property
    def page_size(self) -> int:
        return self._current().page_size

    def _current(self) -> Paginator:
        return self._walks[min(self._index, len(self._walks) - 1)]

    def next_request(self) -> Request | None:
        while self._index < len(self._walks):
            request = self._walks[self._index].next_request()
            if request is not None:
                return request
            self._index += 1
        return None

    def advance(self, body: Any, observed_at: datetime) -> Page:
        return self._current().advance(body, observed_at)

    def restart(self) -> bool:
        return self._current().restart()

    def undo(self) -> None:
        self._current().undo()

    def shrink(self) -> bool:
        return self._current().shrink()

    @property
    def checkpoint(self) -> Checkpoint:
        return self._current().checkpoint


@overload
def _whole(moment: datetime, *, up: bool = False) -> datetime: ...
@overload
def _whole(moment: datetime | None, *, up: bool = False) -> datetime | None: ...
def _whole(moment: datetime | None, *, up: bool = False) -> datetime | None:
    """A time to the whole second (the filter's resolution): down, or up for an upper bound."""
    if moment is None:
        return None
    floored = moment.replace(microsecond=0)
    return floored + _SECOND if up and floored != moment else floored


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(value: Any, field: str) -> datetime | None:
    return None if value is None else parse_time(value, field)


def _span(low: datetime | None, high: datetime | None) -> str:
    """The `created` filter of a range, in GitHub's search syntax."""
    return f"{_iso(low) or '*'}..{_iso(high) or '*'}"
