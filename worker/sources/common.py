"""The helpers every upstream's package uses to read its JSON and walk its lists."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar, overload

from worker import jsontext
from worker.model import KEPT, Checkpoint, Position, Run

# A start time this far ahead of our clock is an upstream error; taken as is, it would move the
# watermark past runs that have not happened yet.
MAX_CLOCK_SKEW = timedelta(minutes=5)


class PageError(Exception):
    """A list answer does not have the documented shape; the pass fails and its checkpoint stays."""


W = TypeVar("W")


class DownToWatermark(Generic[W]):
    """The walks of a source whose lists go newest first down to a floor (RakerOne's keyset,
    GitHub's created ranges): each from a little below where the last one ended (`overlap`, for
    runs listed late), a head for a walk in flight, and a backfill of one range. A subclass says
    how to make one of its walks (`_walk`)."""

    overlap: timedelta

    def _walk(self, checkpoint: Checkpoint, **options: Any) -> W:
        raise NotImplementedError

    def incremental(self, checkpoint: Checkpoint) -> W:
        floor = checkpoint.watermark - self.overlap if checkpoint.watermark else None
        return self._walk(checkpoint, floor=floor)

    def recent(self, floor: datetime) -> W:
        return self._walk(Checkpoint(), floor=floor)

    def head(self, checkpoint: Checkpoint) -> W | None:
        top = walk_top(checkpoint)
        return None if top is None else self._walk(Checkpoint(), floor=top - self.overlap)

    def backfill(
        self,
        checkpoint: Checkpoint | None,
        since: datetime | None,
        until: datetime | None,
        walk: Position,
    ) -> W:
        return self._walk(checkpoint or Checkpoint(), floor=since, until=until, walk=walk)


class Rewindable:
    """A paginator whose position is a few attributes, saved before each advance for undo(), and
    whose pages can be made smaller (an answer over the size cap is refused unread)."""

    _position: tuple[str, ...] = ()
    page_size: int

    def shrink(self) -> bool:
        if self.page_size <= 1:
            return False
        self.page_size //= 2
        return True

    def _save(self) -> None:
        self._saved = tuple(getattr(self, name) for name in self._position)

    def undo(self) -> None:
        for name, value in zip(self._position, self._saved, strict=True):
            setattr(self, name, value)


def check_count(items: list[Any], asked: int, path: str) -> None:
    if len(items) > asked:
        raise PageError(f"{path} answered {len(items):,} items, more than the {asked} asked for")


class ItemError(ValueError):
    """Why one item cannot be read as a run."""


@overload
def parse_time(value: Any, field: str, *, required: Literal[True] = True) -> datetime: ...
@overload
def parse_time(value: Any, field: str, *, required: bool) -> datetime | None: ...
def parse_time(value: Any, field: str, *, required: bool = True) -> datetime | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ItemError(f"{field} is {_describe(value)}, not an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ItemError(f"{field} {value[:60]!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ItemError(f"{field} {value[:60]!r} has no time zone")
    return moment if moment.tzinfo is UTC else moment.astimezone(UTC)


@overload
def text(item: dict[str, Any], field: str, *, required: Literal[True]) -> str: ...
@overload
def text(item: dict[str, Any], field: str, *, required: bool = False) -> str | None: ...
def text(item: dict[str, Any], field: str, *, required: bool = False) -> str | None:
    value = item.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise ItemError(f"{field} is {_describe(value)}, not a string")
    return value


def number(item: dict[str, Any], field: str) -> float | None:
    """A number field; None when missing, or when not finite (raw keeps it: see storable)."""
    value = item.get(field)
    if value is None or isinstance(value, jsontext.NonFinite):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ItemError(f"{field} is {_describe(value)}, not a number")
    return value


def start_times(runs: list[Run]) -> list[datetime]:
    """The start times of the runs that have one: a queued run may have none yet."""
    return [run.started_at for run in runs if run.started_at is not None]


def check_not_future(started_at: datetime | None, observed_at: datetime) -> None:
    if started_at is not None and started_at > observed_at + MAX_CLOCK_SKEW:
        raise ItemError(f"startedAt {started_at.isoformat()} is in the future")


@dataclass(frozen=True, kw_only=True)
class InFlight(Position):
    """A newest-first walk's position: `top`, the newest run it has seen, kept in the cursor while
    the walk is in flight (null until it has seen one), becomes the watermark once it is done."""

    top: datetime | None = field(default=None, metadata=KEPT)


def walk_top(checkpoint: Checkpoint) -> datetime | None:
    """The newest run a newest-first walk in flight had seen when it began; None if none is."""
    return checkpoint.position(InFlight).top


def newest_first_checkpoint(
    watermark: datetime | None, top: datetime | None, done: bool, position: InFlight
) -> Checkpoint:
    """Where a newest-first walk stands. The watermark moves to the newest run the walk saw only
    once the walk is done; until then the walk's position (and that newest run) is the cursor."""
    if done:
        return Checkpoint(max(filter(None, (watermark, top)), default=None), None)
    return Checkpoint.at(watermark, dataclasses.replace(position, top=top))


def dump(item: Any) -> str:
    """An item as JSON text for the quarantine: pure ASCII, so any input can be kept."""
    return json.dumps(item, separators=(",", ":"), default=str)


# An escaped NUL, not an escaped backslash followed by "u0000".
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # in a Python str every surrogate is a lone one
_MAX_NOTES = 10


def storable(item: dict[str, Any]) -> tuple[str, str | None]:
    """An item as JSON text for the raw jsonb column, and a note of what had to be escaped.

    jsonb holds no NUL and no lone surrogate, and JSON no NaN or infinity. Rather than lose the
    run, each is stored escaped: a NUL as the six characters \\u0000, a lone surrogate as \\udXXX,
    a non-finite number as the string of its token ("NaN", "Infinity", "1e999"). The note names
    what was escaped where, and is stored beside raw (runs.notes); None when nothing was.
    """
    try:
        raw = jsontext.dumps(item)
    except (TypeError, ValueError):  # NonFinite, lone surrogates
        pass
    else:  # the cheap tests first: this runs for every run
        if not ("\\u0000" in raw and _NUL.search(raw)) and (raw.isascii() or _is_unicode(raw)):
            return raw, None
    notes: list[str] = []
    clean = _escaped(item, "", notes)
    more = f" and {len(notes) - _MAX_NOTES} more" if len(notes) > _MAX_NOTES else ""
    return jsontext.dumps(clean), "escaped " + "; ".join(notes[:_MAX_NOTES]) + more


def escaped_item(item: dict[str, Any]) -> tuple[dict[str, Any], str, str | None]:
    """(the item as stored, its raw text, the note): the fields of a run come from what is stored."""
    raw, note = storable(item)
    return (item if note is None else jsontext.loads(raw)), raw, note


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(value: Any, path: str, notes: list[str]) -> Any:
    if type(value) is str:
        if _UNSTORABLE.search(value) is None:
            return value
        notes.append(f"{_kinds(value)} in {path or 'a value'}")
        return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    if type(value) is dict:
        escaped = {}
        for key, item in value.items():
            key = _escaped(key, f"a key of {path or 'the item'}", notes)
            escaped[key] = _escaped(item, f"{path}.{key}" if path else key, notes)
        return escaped
    if type(value) is list:
        return [_escaped(v, f"{path}[{i}]", notes) for i, v in enumerate(value)]
    if isinstance(value, jsontext.NonFinite):
        notes.append(f"{value.token} in {path}")
        return value.token
    if type(value) is float and not math.isfinite(value):
        notes.append(f"{value} in {path}")
        return str(value)
    return value


def _kinds(text: str) -> str:
    kinds = []
    if "\x00" in text:
        kinds.append("NUL")
    if any("\ud800" <= c <= "\udfff" for c in text):
        kinds.append("lone surrogate")
    return " and ".join(kinds)


def isoformat(moment: datetime) -> str:
    """UTC with milliseconds and Z, the form the upstream documents."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


def _describe(value: Any) -> str:
    if value is None:
        return "missing"
    return f"{type(value).__name__} {str(value)[:40]!r}"
