"""GitHub Actions: the workflow runs of one repository, or of one workflow (see source.py)."""

from __future__ import annotations

from worker.sources.contract import Source, Upstream
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

__all__ = [
    "COLUMNS", "LIMITS", "OPEN_STATUSES", "UPSTREAM", "CreatedWalk", "GitHubConfig", "GitHubHooks",
    "GitHubSource", "read_item", "signature",
]  # fmt: skip


def _streams(config: GitHubConfig) -> list[Source]:
    return [GitHubSource(config)]


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
)
