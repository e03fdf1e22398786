"""An Apify source's keys: every run of the token's user, or of one actor, or of one task."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from worker.config import SourceBase, invalid

BASE_URL = "https://api.apify.com"


class ApifyConfig(SourceBase):
    kind: Literal["apify"]
    base_url: str = BASE_URL
    actor: str | None = None  # only this actor's runs: an id or username~name
    task: str | None = None  # only this task's runs
    page_size: int = Field(1000, ge=1, le=1000)  # Apify's list pages hold at most 1,000

    @model_validator(mode="after")
    def _one_scope(self) -> ApifyConfig:
        if self.actor and self.task:
            raise invalid("give either actor or task, not both", key="task")
        return self
