"""GitHub Actions: the workflow runs of one repository, or of one workflow (see source.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.sources.contract import Demo, Source, Upstream
from worker.sources.github.config import BASE_URL, GitHubConfig
from worker.sources.github.source import (
    COLUMNS,
    LIMITS,
    OPEN_STATUSES,
    CreatedWalk,
    GitHubSource,
    read_item,
)
from worker.sources.github.webhooks import GitHubHooks, signature

if TYPE_CHECKING:  # named in annotations only
    from worker.simulator import World

__all__ = [
    "COLUMNS", "LIMITS", "OPEN_STATUSES", "UPSTREAM", "CreatedWalk", "GitHubConfig", "GitHubHooks",
    "GitHubSource", "read_item", "signature",
]  # fmt: skip


def _streams(config: GitHubConfig) -> list[Source]:
    return [GitHubSource(config)]


DEMO_REPOSITORY = "octo-org/octo-app"  # `runsync simulate`'s repository


def _demo_world(runs: int, seed: int) -> World:
    from worker.sources.github.simulator import GitHubWorld  # only when a demo is served

    return GitHubWorld({DEMO_REPOSITORY: runs // 2}, seed=seed)


def _demo_holds(runs: int) -> str:
    return f"GitHub repository {DEMO_REPOSITORY} with {runs // 2} workflow runs"


UPSTREAM = Upstream(
    kind="github",
    base_url=BASE_URL,
    config=GitHubConfig,
    streams=_streams,
    limits=LIMITS,
    columns=COLUMNS,
    webhooks=GitHubHooks,
    headers={"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"},
    conditional=True,
    demo=Demo("GitHub", _demo_world, _demo_holds),
)
