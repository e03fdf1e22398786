"""Apify v2: the runs of a user, of one actor, or of one task (see source.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.sources.apify.config import BASE_URL, ApifyConfig
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
from worker.sources.contract import Demo, Source, Upstream

if TYPE_CHECKING:  # named in annotations only
    from worker.simulator import World

__all__ = [
    "COLUMNS", "LIMITS", "OPEN_STATUSES", "SETTLE", "TERMINAL_STATUSES", "UPSTREAM", "ApifyConfig",
    "ApifyHooks", "ApifySource",
    "NewestFirst", "OldestFirst", "read_item", "read_list", "scope_request",
]  # fmt: skip


def _streams(config: ApifyConfig) -> list[Source]:
    return [ApifySource(config)]  # one stream: the user's, the actor's or the task's runs


def _demo_world(runs: int, seed: int) -> World:
    from worker.sources.apify.simulator import ApifyWorld  # only when a demo is served

    return ApifyWorld(runs=runs, seed=seed)


UPSTREAM = Upstream(
    kind="apify",
    base_url=BASE_URL,
    config=ApifyConfig,
    streams=_streams,
    limits=LIMITS,
    columns=COLUMNS,
    webhooks=ApifyHooks,
    demo=Demo("Apify", _demo_world, lambda runs: f"{runs} Apify runs"),
)
