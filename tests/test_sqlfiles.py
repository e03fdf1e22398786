"""The named-query parser and the migration files."""

from __future__ import annotations

import pytest

from worker import sqlfiles


def test_each_block_is_its_own_statement():
    text = "-- first --\n-- Does one thing.\nSELECT 1;\n\n-- second --\n-- Two.\nSELECT\n  2;\n"
    assert sqlfiles.parse_queries(text) == {"first": "SELECT 1;", "second": "SELECT\n  2;"}


@pytest.mark.parametrize(
    "text",
    [
        "-- q --\nSELECT 1;\n",
        "-- q --\n-- only a description\n",
        "-- q --\n-- a\nSELECT 1;\n-- q --\n-- b\nSELECT 2;",
    ],
)
def test_rejects_blocks_without_description_or_twice(text):
    with pytest.raises(ValueError):
        sqlfiles.parse_queries(text)


def test_shipped_queries_and_migrations_load():
    queries = sqlfiles.queries()
    assert {
        "merge_incoming_runs",
        "save_checkpoint",
        "take_lease",
        "open_snapshot",
    } <= queries.keys()
    versions = [m.version for m in sqlfiles.migrations()]
    assert versions == sorted(versions) and versions[0] == 1
