"""The domain types that sources produce and the store keeps; no I/O here."""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar


class Outcome(StrEnum):
    """How a pass ended, as `runsync.passes.outcome`, the `outcome` of the log line that ends
    every pass, and the label of `runsync_passes_total` say it."""

    RUNNING = "running"  # not ended yet (in the table: or its process died before it could say)
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # a stop came; the page in flight was committed
    SKIPPED = "skipped"  # another pass holds the stream, or ran it this tick; never recorded
    ABANDONED = "abandoned"  # its process died or lost the lease; closed by the next pass


class Run(NamedTuple):
    """One observation of one upstream run.

    A tuple whose fields, with `columns` spread in its place, are the store's staging columns in
    order: a page of runs goes to COPY as it is (a backfill builds one per run read, so this is on
    the hot path).
    """

    run_id: str
    status: str
    is_terminal: bool
    started_at: datetime | None  # a run may not have started yet, or never start
    finished_at: datetime | None
    raw: str  # the upstream's JSON object, as text
    observed_at: datetime  # when the request that returned it was sent
    recheck_at: datetime | None = None  # read again after this: the figures may be preliminary
    # The stream's partition, where an upstream has several per source (a RakerOne project); it
    # keys the run with its source and id. Stored in runs.project.
    partition: str | None = None
    # A list item that may omit fields (Apify's list views): what it omits, or gives as null,
    # keeps its stored value. False for a whole object (a single run, a webhook's, RakerOne's).
    partial: bool = False
    notes: str | None = None  # what had to be escaped to store raw (sources.common.storable)
    scope: str | None = None  # what the run belongs to upstream, for the analytics views
    succeeded: bool | None = None  # None while the run is open (or its outcome is unknown)
    # The upstream's typed columns, in the order its `Upstream.columns` declares them.
    columns: tuple[Any, ...] = ()


COLUMN_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class Column:
    """A typed column of runsync.runs that one upstream fills; its migration creates it.

    `staged`: its type in the staging table, which COPY writes; `cast`: how the staged value
    becomes the stored one, `{}` standing for it (e.g. "{}::jsonb").
    """

    name: str
    staged: str
    cast: str = "{}"

    def __post_init__(self) -> None:
        if not COLUMN_NAME.match(self.name) or not COLUMN_NAME.match(self.staged):
            raise ValueError(f"column {self.name!r} {self.staged!r}: not a plain name and type")


class Stream(str):
    """The name of one stream of a source, made from its parts: its kind (incremental, backfill,
    reconcile), its partition where the source has several (a RakerOne project), and a backfill
    window's index. Its text ("backfill/proj_a#2") keys checkpoints, leases and passes; SQL
    compares it whole and never takes it apart: checkpoints also keep the parts as columns, and
    the names a query needs are made here.

    A str, so logs, metrics labels and query parameters take it as its text.
    """

    kind: str
    part: str | None  # the partition (not `partition`, which would hide str.partition)
    window: int | None

    def __new__(cls, kind: str, partition: str | None = None, window: int | None = None) -> Stream:
        if not kind or not kind.isidentifier() or (window is not None and window < 0):
            raise ValueError(f"not a stream: kind {kind!r}, window {window!r}")
        text = (
            kind
            + (f"/{partition}" if partition else "")
            + (f"#{window}" if window is not None else "")
        )
        made = super().__new__(cls, text)
        made.kind, made.part, made.window = kind, partition or None, window
        return made

    @classmethod
    def parse(cls, text: str) -> Stream:
        """A stream from its text, as Stream wrote it."""
        if isinstance(text, Stream):
            return text
        rest, _, window = text.partition("#") if "#" in text else (text, "", "")
        kind, _, partition = rest.partition("/")
        return cls(kind, partition or None, int(window) if window else None)

    def of_kind(self, kind: str) -> Stream:
        """The stream of another kind of the same partition."""
        return Stream(kind, self.part)

    def window_of(self, index: int) -> Stream:
        """One window of this backfill."""
        return Stream(self.kind, self.part, index)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Stream, (self.kind, self.part, self.window))


def typed(run: Run, columns: tuple[Column, ...]) -> dict[str, Any]:
    """A run's typed columns by name, as its upstream declares them."""
    return dict(zip((column.name for column in columns), run.columns, strict=True))


@dataclass(frozen=True, slots=True)
class Rejected:
    """An item that could not be read as a run, kept in quarantine with the reason."""

    reason: str
    raw: str
    run_id: str | None = None  # when the item's id could be read: the run is looked for again
    partition: str | None = None


P = TypeVar("P", bound="Position")

# Field metadata: the field is in the cursor's JSON even at its default (a walk in flight's `top`,
# null until it has seen a run, says the walk is in flight).
KEPT: Mapping[str, Any] = MappingProxyType({"kept": True})


@dataclass(frozen=True, kw_only=True)
class Position:
    """Where a walk stands: a checkpoint's cursor, typed. Each kind of walk has its own subclass
    (an upstream's walks in its package, a backfill's plan in worker/backfill.py), and
    `Checkpoint.at` and `Checkpoint.position` are the one place their fields become the cursor's
    JSON keys (a field's name is its key) and back. Queries read some of those keys (`top`,
    `done`, `range`, `windows`, `total`, `pass_id`: sql/queries.sql); tests/test_paginators.py
    holds them to these fields.

    Every walk of a backfill says which one it is: the range it copies ([since, until] as ISO
    text; None: unbounded) and, in windows, which window; a finished one says so, and which pass
    finished it.
    """

    range: tuple[str | None, str | None] | None = None
    window: int | None = None
    done: bool = False
    pass_id: int | None = None

    def scope(self) -> dict[str, Any]:
        """The fields that say which walk this is, to carry into another kind's position."""
        return {"range": self.range, "window": self.window}


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a stream of a source stands: runs before `watermark` are stored; `cursor` says where
    to go on: a Position as JSON (what the store keeps in jsonb), written by `at` and read by
    `position`."""

    watermark: datetime | None = None
    cursor: Mapping[str, Any] | None = None

    @classmethod
    def at(cls, watermark: datetime | None, position: Position | None = None) -> Checkpoint:
        return cls(watermark, None if position is None else _cursor(position))

    def position(self, kind: type[P]) -> P:
        """The cursor read as a position of `kind` (its defaults where there is none); keys that
        kind does not have are left out, so a walk reads what it shares with another's."""
        return _position(kind, self.cursor or {})


def _cursor(position: Position) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for spec in dataclasses.fields(position):
        value = getattr(position, spec.name)
        if value == spec.default and not spec.metadata.get("kept"):
            continue
        found[spec.name] = _json(value)
    return found


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return (
            value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.")
            + f"{value.microsecond // 1000:03d}Z"
        )
    if isinstance(value, tuple | list):
        return [_json(item) for item in value]
    return value


@functools.cache
def _hints(kind: type[Position]) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def _position(kind: type[P], cursor: Mapping[str, Any]) -> P:
    hints = _hints(kind)  # type: ignore[arg-type]  # a class is hashable: mypy issue 11470
    given: dict[str, Any] = {}
    for spec in dataclasses.fields(kind):
        if spec.name in cursor:
            given[spec.name] = _typed(cursor[spec.name], hints[spec.name], spec.name)
    return kind(**given)


def _typed(value: Any, hint: Any, name: str) -> Any:
    """A JSON value as the field's type: times from their ISO text, arrays as tuples."""
    if value is None:
        return None
    if datetime in typing.get_args(hint) or hint is datetime:
        try:
            moment = datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise ValueError(f"{name} {str(value)[:60]!r} is not an ISO 8601 time with a zone")
        return moment
    if isinstance(value, list):
        return _tuples(value)
    return value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


@dataclass(frozen=True, slots=True)
class Request:
    """A GET against the upstream, relative to its base URL."""

    path: str
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class Page:
    """What one list page brought, and where the walk stands after it."""

    runs: list[Run]
    rejected: list[Rejected]
    checkpoint: Checkpoint
    items: int  # items on the page, parsed or not
    total: int | None = None  # items matching the walk's filters, when the upstream says
    oldest: datetime | None = None
    newest: datetime | None = None
