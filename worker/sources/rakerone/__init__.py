"""RakerOne: the action runs of a project, one stream per configured project (see source.py)."""

from __future__ import annotations

from worker.config import SourceConfig
from worker.sources.contract import Source, Upstream
from worker.sources.rakerone.source import COLUMNS, LIMITS, KeysetWalk, RakerOneSource, read_item

__all__ = ["COLUMNS", "LIMITS", "UPSTREAM", "KeysetWalk", "RakerOneSource", "read_item"]


def _streams(config: SourceConfig) -> list[Source]:
    return [RakerOneSource(config, project) for project in config.projects]


UPSTREAM = Upstream(
    kind="rakerone",
    base_url="https://app.raker.one",
    streams=_streams,
    limits=LIMITS,
    columns=COLUMNS,
)
