"""A GitHub Actions source's keys: the workflow runs of one repository, or of one workflow."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator

from worker.config import Duration, SourceBase, invalid

BASE_URL = "https://api.github.com"
_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")


def _id_as_text(value: Any) -> Any:
    # A workflow's id is a number: the TOML may say it as one.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class GitHubConfig(SourceBase):
    kind: Literal["github"]
    base_url: str = BASE_URL
    repository: str = Field(description='"owner/name"')
    # Only this workflow's runs: its id, or its file name (ci.yml).
    workflow: Annotated[str | None, BeforeValidator(_id_as_text)] = None
    page_size: int = Field(100, ge=1, le=100)  # GitHub's list pages hold at most 100
    # GitHub lets a run be re-run for 30 days: the sweep looks that far back for them.
    reconcile_lookback: Duration = timedelta(days=30)

    @field_validator("repository")
    @classmethod
    def _repository(cls, repository: str) -> str:
        if not _REPOSITORY.match(repository):
            raise invalid(f'{repository!r} is not "owner/name"')
        return repository

    @field_validator("workflow")
    @classmethod
    def _workflow(cls, workflow: str | None) -> str | None:
        if workflow is not None and (not workflow or "/" in workflow):
            raise invalid("a workflow's id or file name, e.g. ci.yml")
        return workflow
