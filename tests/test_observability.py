"""Logging: one JSON object per line for runsync and stdlib records alike, secrets scrubbed."""

from __future__ import annotations

import json
import logging

import structlog

from worker import observability


def test_json_lines_with_context_and_no_secrets(capsys):
    observability.configure(level="INFO", json=True)
    observability.redact(["apify_api_TOPSECRET", "pw-42-db"])
    log = structlog.get_logger("runsync.test")

    with structlog.contextvars.bound_contextvars(source="apify", pass_id=7):
        log.info("pass started", url="https://x/?token=apify_api_TOPSECRET")
        logging.getLogger("asyncpg.pool").warning("connection to postgresql://u:pw-42-db@h lost")

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["event"] for line in lines] == [
        "pass started",
        "connection to postgresql://u:***@h lost",
    ]
    assert all(line["source"] == "apify" and line["pass_id"] == 7 for line in lines)
    assert lines[0]["url"] == "https://x/?token=***"
    assert {line["logger"] for line in lines} == {"runsync.test", "asyncpg.pool"}
    assert all("timestamp" in line and "level" in line for line in lines)
