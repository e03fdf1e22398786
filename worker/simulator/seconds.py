"""Whole-second times, for the worlds of upstreams that keep and write times to the second."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def seconds(moment: datetime) -> int:
    """Whole seconds since the epoch, rounded down; naive datetimes count as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(seconds=1)


def iso(at: int) -> str:
    """ISO 8601 UTC with Z, to the second (2024-06-10T15:22:30Z)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
