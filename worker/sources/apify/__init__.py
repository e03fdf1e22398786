"""Apify v2: the runs of a user, of one actor, or of one task (see source.py)."""

from __future__ import annotations

from worker.config import SourceConfig
from worker.sources.apify.source import (
    COLUMNS,
    LIMITS,
    OPEN_STATUSES,
    SETTLE,
    TERMINAL_STATUSES,
    ApifySource,
    NewestFirst,
    OldestFirst,
    read_item,
    read_list,
    scope_request,
)
from worker.sources.apify.webhooks import ApifyHooks
from worker.sources.contract import Source, Upstream

__all__ = [
    "COLUMNS", "LIMITS", "OPEN_STATUSES", "SETTLE", "TERMINAL_STATUSES", "UPSTREAM", "ApifyHooks",
    "ApifySource",
    "NewestFirst", "OldestFirst", "read_item", "read_list", "scope_request",
]  # fmt: skip


def _streams(config: SourceConfig) -> list[Source]:
    return [ApifySource(config)]  # one stream: the user's, the actor's or the task's runs


UPSTREAM = Upstream(
    kind="apify",
    base_url="https://api.apify.com",
    streams=_streams,
    limits=LIMITS,
    columns=COLUMNS,
    webhooks=ApifyHooks,
)
