"""RakerOne: the action runs of a project, one stream per configured project (see source.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.sources.contract import Demo, Source, Upstream
from worker.sources.rakerone.config import BASE_URL, RakerOneConfig
from worker.sources.rakerone.source import COLUMNS, LIMITS, KeysetWalk, RakerOneSource, read_item

if TYPE_CHECKING:  # named in annotations only
    from worker.simulator import World

__all__ = [
    "COLUMNS", "LIMITS", "UPSTREAM", "KeysetWalk", "RakerOneConfig", "RakerOneSource", "read_item",
]  # fmt: skip


def _streams(config: RakerOneConfig) -> list[Source]:
    return [RakerOneSource(config, project) for project in config.projects]


DEMO_PROJECTS = ("proj_alpha", "proj_beta")  # `runsync simulate`'s projects


def _demo_world(runs: int, seed: int) -> World:
    from worker.sources.rakerone.simulator import RakerWorld  # only when a demo is served

    return RakerWorld(projects=dict.fromkeys(DEMO_PROJECTS, runs // 2), seed=seed)


def _demo_holds(runs: int) -> str:
    return f"RakerOne projects {' and '.join(DEMO_PROJECTS)} with {runs // 2} runs each"


UPSTREAM = Upstream(
    kind="rakerone",
    base_url=BASE_URL,
    config=RakerOneConfig,
    streams=_streams,
    limits=LIMITS,
    columns=COLUMNS,
    demo=Demo("RakerOne", _demo_world, _demo_holds),
)
