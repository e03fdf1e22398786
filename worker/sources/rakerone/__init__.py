"""RakerOne: the action runs of a project, one stream per configured project (see source.py)."""

from __future__ import annotations

from worker.sources.contract import Source, Upstream
from worker.sources.rakerone.config import BASE_URL, RakerOneConfig
from worker.sources.rakerone.source import COLUMNS, LIMITS, KeysetWalk, RakerOneSource, read_item

__all__ = [
    "COLUMNS", "LIMITS", "UPSTREAM", "KeysetWalk", "RakerOneConfig", "RakerOneSource", "read_item",
]  # fmt: skip


def _streams(config: RakerOneConfig) -> list[Source]:
    return [RakerOneSource(config, project) for project in config.projects]


UPSTREAM = Upstream(
    kind="rakerone",
    base_url=BASE_URL,
    config=RakerOneConfig,
    streams=_streams,
    limits=LIMITS,
    columns=COLUMNS,
)
