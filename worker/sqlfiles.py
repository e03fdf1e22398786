"""The SQL that ships with runsync: numbered migrations and named queries, read from `sql/`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# Inside a wheel the files sit in worker/sql; in a checkout they sit at the top of the repository.
_CANDIDATES = (Path(__file__).parent / "sql", Path(__file__).parent.parent / "sql")
_QUERY_HEADER = re.compile(r"^-- ([a-z_][a-z0-9_]*) --$", re.MULTILINE)
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def sql_dir() -> Path:
    for candidate in _CANDIDATES:
        if (candidate / "queries.sql").is_file():
            return candidate
    raise FileNotFoundError(
        f"runsync's sql/ folder is missing (looked in {', '.join(map(str, _CANDIDATES))})"
    )


def parse_queries(text: str) -> dict[str, str]:
    """Split a file of `-- name --` blocks into {name: statement}; the line after a header describes it."""
    queries: dict[str, str] = {}
    headers = list(_QUERY_HEADER.finditer(text))
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        end = following.start() if following else len(text)
        body = text[header.end() : end].strip()
        description, _, statement = body.partition("\n")
        if not description.startswith("--") or not statement.strip():
            raise ValueError(f"query {header[1]!r} needs a description line and a statement")
        if header[1] in queries:
            raise ValueError(f"query {header[1]!r} is defined twice")
        queries[header[1]] = statement.strip()
    return queries


@cache
def queries() -> dict[str, str]:
    return parse_queries((sql_dir() / "queries.sql").read_text(encoding="utf-8"))


def migrations() -> list[Migration]:
    found = []
    for path in sorted((sql_dir() / "migrations").iterdir()):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            if path.suffix == ".sql":
                raise ValueError(f"migration file {path.name!r} is not named NNNN_name.sql")
            continue
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a number in {sql_dir() / 'migrations'}")
    return found
