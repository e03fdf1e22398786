"""A RakerOne source's keys: the action runs of one or more projects, each a stream."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, field_validator, model_validator

from worker.config import SourceBase, invalid

BASE_URL = "https://app.raker.one"
TERMINAL_STATUSES = ("completed", "failed", "cancelled")


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise invalid("must be a list of non-empty strings")
    return tuple(value)


def _projects(value: Any) -> tuple[str, ...]:
    projects = _strings(value)
    if not projects:
        raise invalid("must list at least one project")
    if len(set(projects)) != len(projects):
        raise invalid("lists a project twice")
    return projects


def _statuses(value: Any) -> frozenset[str]:
    if isinstance(value, frozenset):
        return value
    return frozenset(status.casefold() for status in _strings(value))  # any case in the file


class RakerOneConfig(SourceBase):
    takes_webhooks: ClassVar[bool] = False  # RakerOne sends none

    kind: Literal["rakerone"]
    base_url: str = BASE_URL
    project: str | None = None  # one project: the same as projects = [project]
    projects: Annotated[tuple[str, ...], BeforeValidator(_projects)] = ()
    # A run in any other status is open, and read again until it reaches one of these.
    terminal_statuses: Annotated[frozenset[str], BeforeValidator(_statuses)] = frozenset(
        TERMINAL_STATUSES
    )

    @model_validator(mode="before")
    @classmethod
    def _one_or_many(cls, data: Any) -> Any:
        if isinstance(data, dict) and "project" in data:
            if "projects" in data:
                raise invalid("give either project or projects, not both", key="projects")
            if isinstance(data["project"], str) and data["project"]:
                return {**data, "projects": [data["project"]]}
        return data  # a project that is no name is project's own mistake

    @field_validator("project")
    @classmethod
    def _project(cls, project: str | None) -> str | None:
        if project == "":
            raise invalid("must name a project")
        return project

    @model_validator(mode="after")
    def _some_project(self) -> RakerOneConfig:
        if not self.projects:  # neither key (an empty list is projects' own mistake)
            raise invalid("required for kind 'rakerone'", key="project")
        return self
