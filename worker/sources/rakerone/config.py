"""A RakerOne source's keys: the action runs of one or more projects, each a stream."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, model_validator

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
        if not isinstance(data, dict):
            return data
        if "project" in data and "projects" in data:
            raise invalid("give either project or projects, not both", key="projects")
        if "project" not in data and "projects" not in data:
            raise invalid("required for kind 'rakerone'", key="project")
        project = data.get("project")
        if "project" in data and not (isinstance(project, str) and project):
            raise invalid(f"must be a non-empty str, not {project!r}", key="project")
        return {**data, "projects": [project]} if "project" in data else data
