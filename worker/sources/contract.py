"""The contract between runsync's shared layers and one upstream's package.

An upstream is a package under worker/sources/ that exports an `Upstream` (its registration, in
worker/sources/__init__.py): how a configured source becomes streams of runs (`Source`), the
walks of its lists (`Paginator`: no I/O, they say the next request and read the answer), how its
open runs are read again, whether its backfill can be cut into time windows, its published
request limits, the typed columns its runs fill, and the demo world `runsync simulate` serves of
it (`Demo`). docs/adding-an-upstream.md walks through it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from worker.config import SourceBase
from worker.model import Checkpoint, Column, Page, Position, Rejected, Request, Run
from worker.ratelimit import Published
from worker.sources.common import PageError

if TYPE_CHECKING:  # named in annotations only
    from worker.http import Client
    from worker.simulator import World

__all__ = [
    "Answer", "ByWalks", "Delivery", "Demo", "Hooks", "OpenList", "PageError", "Paginator",
    "Refused", "Source", "Upstream", "Windowed", "ignored",
]  # fmt: skip


class Paginator(Protocol):
    """Walks one list endpoint. No I/O: says the next request, reads the answer, keeps the position."""

    def next_request(self) -> Request | None: ...

    def advance(self, body: Any, observed_at: datetime) -> Page: ...

    def restart(self) -> bool:
        """The upstream refused the position (400); True if the walk can start over from the top."""
        ...

    def undo(self) -> None:
        """Forgets the last advance, so the same page can be read again."""
        ...

    def shrink(self) -> bool:
        """Asks for half as many items a page from now on; False at one already."""
        ...

    @property
    def page_size(self) -> int:
        """The items it asks for a page (shrink halves it)."""
        ...

    @property
    def checkpoint(self) -> Checkpoint: ...


class Source(Protocol):
    """One stream of runs: a whole upstream account or scope, or one RakerOne project."""

    upstream: str  # the kind of upstream, as runs.upstream says
    list_path: str  # its list of runs, relative to the base URL (check-config shows it)
    # How runs stored as open are read again (worker/refresh.py): "open_list" (one list of every
    # open status, then a single-run endpoint) or "walks" (one status per filter, no such endpoint).
    # "open_list" also lets the reconcile sweep read by id the runs it did not list (a 404 marks
    # them gone: refresh.unlisted).
    refresh: str

    @property
    def partition(self) -> str | None:
        """Where a source has several streams (a RakerOne project): which one."""
        ...

    @property
    def windowed(self) -> bool:
        """A backfill can be cut into time windows walked side by side (worker/backfill.py)."""
        ...

    def incremental(self, checkpoint: Checkpoint) -> Paginator: ...

    def recent(self, floor: datetime) -> Paginator:
        """Every run started since `floor`, for the reconcile sweep."""
        ...

    def head(self, checkpoint: Checkpoint) -> Paginator | None:
        """For a newest-first walk in flight: a walk from the top down to where it began, so
        runs newer than it are read before it resumes (and even while one of its pages is
        stuck). None when there is no such walk."""
        ...

    def backfill(
        self,
        checkpoint: Checkpoint | None,
        since: datetime | None,
        until: datetime | None,
        walk: Position,
    ) -> Paginator:
        """A walk of [since, until]: resumed from `checkpoint`, or from the start when None.
        `walk` (its range) goes into every checkpoint of it, so a resume can tell the range it
        was for."""
        ...


class Windowed(Source, Protocol):
    """What a backfill in windows needs (worker/backfill.py), from a source whose `windowed` is
    true: probes that place the windows' boundaries, and a walk of one window."""

    page_size: int

    def probe(self, since: datetime | None, until: datetime | None, offset: int) -> Request:
        """One run of [since, until], at `offset` in start order; the answer says the total."""
        ...

    def read_probe(self, body: Any, observed_at: datetime) -> tuple[int, datetime | None]:
        """(total, the start of the probed run, None when it has no readable start)."""
        ...

    def window(
        self,
        checkpoint: Checkpoint | None,
        start: datetime | None,
        end: datetime | None,
        walk: Position,
    ) -> Paginator:
        """A walk of one window, from `start` up to and including `end`; resumed from
        `checkpoint` when there is one."""
        ...


class OpenList(Source, Protocol):
    """What refresh = "open_list" needs: a list of every open status, and one run by id."""

    def open_walk(self) -> Paginator: ...

    def run_request(self, run_id: str) -> Request: ...

    def read_run(self, body: Any, observed_at: datetime) -> Run | Rejected: ...


class ByWalks(Source, Protocol):
    """What refresh = "walks" needs: a list filtered by one status, and the unfiltered one."""

    def status_walk(self, status: str, floor: datetime | None) -> Paginator: ...

    def search_walk(self, floor: datetime | None) -> Paginator: ...


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


class Refused(Exception):
    """A delivery turned down, with the answer that says why."""

    def __init__(self, status: int, outcome: str, message: str) -> None:
        super().__init__(message)
        self.answer = Answer(status, {"outcome": outcome, "error": message})


@dataclass
class Delivery:
    """What one delivery brought: runs to store, or an answer that stores nothing."""

    observations: list[Run | Rejected] = field(default_factory=list)
    answer: Answer | None = None  # e.g. not a run event, or a run out of the source's scope


def ignored(outcome: str, message: str) -> Answer:
    """A 200 that stores nothing: sending the delivery again would not help."""
    return Answer(200, {"outcome": outcome, "message": message})


class Hooks(Protocol):
    """One source's deliveries, as its upstream sends them (made by `Upstream.webhooks`)."""

    upstream: str  # the kind in the path, /webhooks/{kind}/{source}

    def authenticate(self, headers: Mapping[str, str], body: bytes | None) -> None:
        """Raises Refused (401) unless the delivery proves it knows the source's secret; `body`
        is None when it was larger than the endpoint takes."""
        ...

    async def read(
        self, headers: Mapping[str, str], body: bytes, facts: dict[str, Any]
    ) -> Delivery:
        """The delivery's runs; raises Refused for one that cannot be taken. `facts`: what the
        delivery's log line says of it (its id, event, run), filled in as they are read; never
        a secret or the payload."""
        ...


@dataclass(frozen=True)
class Demo:
    """What `runsync simulate` serves of an upstream (worker.simulator.serve)."""

    name: str  # the upstream, as the banner names it: "GitHub"
    # (runs, seed) -> the world to serve, its simulator (aiohttp's server and all) imported only
    # when it is called, so the daemon never loads it.
    world: Callable[[int, int], World]
    holds: Callable[[int], str]  # (runs) -> what that world holds, for the banner


ConfigT = TypeVar("ConfigT", bound=SourceBase)  # an upstream's model of its sources' keys


@dataclass(frozen=True)
class Upstream(Generic[ConfigT]):
    """One upstream, as the shared layers know it: everything else stays inside its package."""

    kind: str  # what `kind` says in the config, and runs.upstream
    base_url: str  # the default of the sources' base_url
    config: type[ConfigT]  # its sources' keys (its package's config.py): what load reads
    streams: Callable[[ConfigT], list[Source]]  # a configured source's streams of runs
    limits: Published  # its published request limits
    columns: tuple[Column, ...] = ()  # its typed columns of runsync.runs (its migration's)
    # A configured source's webhook deliveries (given the source's HTTP client); None: it takes
    # none. Only sources with a webhook secret take them.
    webhooks: Callable[[ConfigT, Client | None], Hooks] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # sent with every request
    conditional: bool = False  # it answers If-None-Match with a 304 (which costs no budget)
    demo: Demo | None = None  # its simulated world for `runsync simulate`; None: it has none
