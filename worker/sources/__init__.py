"""One module per upstream: how to page through its runs and how to read an item.

A source knows HTTP paths and the upstream's JSON shape, nothing of Postgres. Its paginators do no
I/O: they say which request comes next and read the parsed answer; sync.py owns the request loop.
"""

from __future__ import annotations

import dataclasses

from worker.config import SourceConfig
from worker.ratelimit import Published
from worker.sources import apify, rakerone
from worker.sources.common import PageError, Paginator, Source

__all__ = ["PageError", "Paginator", "Source", "build", "limits"]


def build(config: SourceConfig) -> list[Source]:
    """The streams of runs a configured source reads: one per RakerOne project, one for Apify."""
    if config.kind == "apify":
        return [apify.ApifySource(config)]
    if config.kind == "rakerone":
        return [rakerone.RakerOneSource(config, project) for project in config.projects]
    raise ValueError(f"no source for kind {config.kind!r}")


def limits(config: SourceConfig) -> Published:
    """The upstream's published request limits; for one that publishes none, the source's own
    max_requests_per_second in place of runsync's guess."""
    published = {"apify": apify.LIMITS, "rakerone": rakerone.LIMITS}[config.kind]
    if published.guessed and config.max_requests_per_second is not None:
        return dataclasses.replace(published, per_token=config.max_requests_per_second)
    return published
