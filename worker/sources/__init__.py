"""The upstreams runsync reads, one package each; the shared layers know them only through the
contract (worker/sources/contract.py). Adding one: docs/adding-an-upstream.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker import config
from worker.config import SourceBase
from worker.model import Column
from worker.ratelimit import Published
from worker.sources import apify, github, rakerone
from worker.sources.contract import Demo, Hooks, PageError, Paginator, Source, Upstream

if TYPE_CHECKING:  # named in annotations only: the simulator is imported when a demo is made
    from worker.simulator import World

__all__ = [
    "UPSTREAMS",
    "PageError",
    "Paginator",
    "Source",
    "build",
    "columns",
    "demo_worlds",
    "demos",
    "limits",
    "load_settings",
    "partitions",
    "upstream",
]

# The registration: one line per upstream. Each has its own model of its sources' keys (Any
# here): load reads a source with its kind's model, and build hands it back to that kind.
UPSTREAMS: dict[str, Upstream[Any]] = {
    u.kind: u
    for u in (
        apify.UPSTREAM,
        rakerone.UPSTREAM,
        github.UPSTREAM,
    )
}


def load_settings(path: Path | str | None = None, **options: Any) -> config.Settings:
    """The settings in the config file, its sources read by the registered upstreams' models
    (config.load's options: database_url, env)."""
    kinds = {kind: u.config for kind, u in UPSTREAMS.items()}
    return config.load(path, kinds=kinds, **options)


def upstream(kind: str) -> Upstream[Any]:
    try:
        return UPSTREAMS[kind]
    except KeyError:
        raise ValueError(f"no upstream of kind {kind!r} ({', '.join(UPSTREAMS)})") from None


def build(config: SourceBase) -> list[Source]:
    """The streams of runs a configured source reads (one, or one per partition)."""
    return upstream(config.kind).streams(config)


def partitions(config: SourceBase) -> list[str]:
    """The partitions of a configured source's streams (a RakerOne source's projects); none for
    an upstream that has one stream per source."""
    return [s.partition for s in build(config) if s.partition is not None]


def limits(config: SourceBase) -> Published:
    """The upstream's published request limits; for one that publishes none, the source's own
    max_requests_per_second in place of runsync's guess."""
    published = upstream(config.kind).limits
    if published.guessed and config.max_requests_per_second is not None:
        return dataclasses.replace(published, per_token=config.max_requests_per_second)
    return published


def webhooks(config: SourceBase, client: Any = None) -> Hooks | None:
    """The source's webhook deliveries, when its upstream takes them and it has a secret."""
    make = upstream(config.kind).webhooks
    return make(config, client) if make is not None and config.webhook_secret else None


def columns() -> dict[str, tuple[Column, ...]]:
    """Each upstream's typed columns of runsync.runs, for the store's writes."""
    return {kind: u.columns for kind, u in UPSTREAMS.items()}


def demos() -> list[Demo]:
    """What `runsync simulate` serves: the demo of every registered upstream that has one."""
    return [u.demo for u in UPSTREAMS.values() if u.demo is not None]


def demo_worlds(runs: int, seed: int) -> list[Callable[[], World]]:
    """The demos' worlds of `runs` runs from `seed`, each made (and its simulator imported)
    when called: worker.simulator.serve makes them."""
    return [partial(demo.world, runs, seed) for demo in demos()]
