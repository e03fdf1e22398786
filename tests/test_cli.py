"""The real command line as a subprocess, against the simulator and a test database."""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import pytest
from conftest import TOKEN
from helpers import assert_matches_upstream, config_toml, source_toml, spawn, stored_runs

T0 = datetime(2026, 4, 1, tzinfo=UTC)


def config_file(tmp_path, sim, extra: str = "") -> str:
    path = tmp_path / "cli.toml"
    path.write_text(config_toml(source_toml("apify", sim.base_url, page_size=50)) + extra)
    return str(path)


async def runsync(database_url, *args, env=None, signal_after=None):
    pipe = asyncio.subprocess.PIPE
    process = await spawn(database_url, *args, env=env, stdout=pipe, stderr=pipe)
    if signal_after is not None:
        await signal_after(process)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


def log_lines(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


@pytest.mark.process
async def test_sync_then_status(world, sim, db, database_url, tmp_path):
    for i in range(120):
        world.add_runs(1, status="SUCCEEDED", started_at=T0 + timedelta(minutes=i))
    world.add_runs(4, status="RUNNING")
    path = config_file(tmp_path, sim)

    code, _, err = await runsync(database_url, "--config", path, "sync")

    assert code == 0, err
    assert_matches_upstream(await stored_runs(db), world.list_items())
    lines = log_lines(err)
    finished = {line["stream"]: line for line in lines if line["event"] == "pass succeeded"}
    # The first sync copies the history (a backfill of it all), then goes on incrementally from
    # the copy's end: the newest runs, and the 4 open ones again in the list of open runs.
    assert list(finished) == ["backfill", "incremental"]
    assert finished["backfill"]["source"] == "apify" and finished["backfill"]["runs"] == 124
    assert finished["incremental"]["written"] == 0
    assert all("pass_id" in line for line in lines if line["logger"] == "runsync.sync")
    assert TOKEN not in err

    code, out, err = await runsync(database_url, "--config", path, "status", "--json")
    assert code == 0, err
    (status,) = json.loads(out)
    assert (status["source"], status["runs"], status["open_runs"]) == ("apify", 124, 4)
    assert status["last_success_at"] and status["last_error"] is None

    code, out, _ = await runsync(database_url, "--config", path, "status")
    assert code == 0 and "apify" in out and "124" in out


@pytest.mark.process
async def test_backfill_a_range(world, sim, db, database_url, tmp_path):
    for day in range(10):
        world.add_runs(3, status="SUCCEEDED", started_at=T0 + timedelta(days=day))
    path = config_file(tmp_path, sim)

    code, out, err = await runsync(
        database_url, "--config", path, "backfill", "apify",
        "--since", "2026-04-03", "--until", "2026-04-05",
    )  # fmt: skip

    assert code == 0, err
    assert "backfill of apify succeeded: 9 runs read, 9 written" in out
    expected = [
        item for item in world.list_items()
        if T0 + timedelta(days=2) <= datetime.fromisoformat(item["startedAt"]) < T0 + timedelta(days=5)
    ]  # fmt: skip
    assert_matches_upstream(await stored_runs(db), expected)
    async with db.pool.acquire() as conn:
        # A finished backfill leaves a mark for its range; the incremental stream was not touched.
        (mark,) = await conn.fetch("SELECT stream, watermark, cursor FROM runsync.checkpoints")
    assert mark["stream"] == "backfill" and mark["cursor"]["done"] is True
    assert mark["cursor"]["range"] == ["2026-04-03T00:00:00.000Z", "2026-04-05T23:59:59.999Z"]

    requests = sim.requests["apify.list_user_runs"]
    args = ("--config", path, "backfill", "apify", "--since", "2026-04-03", "--until", "2026-04-05")
    code, out, _ = await runsync(database_url, *args)
    assert code == 0 and "backfill of apify: already complete" in out
    assert sim.requests["apify.list_user_runs"] == requests  # a restarted job does nothing

    code, out, _ = await runsync(database_url, *args, "--restart")
    assert code == 0 and "succeeded: 9 runs read, 0 written" in out


@pytest.mark.process
async def test_the_daemon_stops_cleanly_on_sigterm(world, sim, db, database_url, tmp_path):
    world.add_runs(300, status="SUCCEEDED", started_at=T0)
    path = config_file(tmp_path, sim)

    async def terminate_once_synced(process):
        async with asyncio.timeout(30):
            while len(await stored_runs(db)) < 300:  # noqa: ASYNC110 - the condition is in Postgres
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)

    code, _, err = await runsync(
        database_url, "--config", path, "run", signal_after=terminate_once_synced
    )

    assert code == 0, err
    events = [line["event"] for line in log_lines(err)]
    assert (
        "daemon started" in events and "stop requested" in events and events[-1] == "daemon stopped"
    )


@pytest.mark.process
async def test_a_failing_source_makes_sync_exit_1(world, sim, db, database_url, tmp_path):
    path = config_file(tmp_path, sim)
    code, _, err = await runsync(
        database_url, "--config", path, "sync", env={"APIFY_TOKEN": "wrong-token-xyz"}
    )
    assert code == 1
    failure = [line for line in log_lines(err) if line["event"] == "pass failed"]
    assert "HTTP 401" in failure[0]["error"]
    assert "wrong-token-xyz" not in err


@pytest.mark.process
async def test_an_unknown_source_exits_2_and_an_unreachable_database_1(sim, database_url, tmp_path):
    path = config_file(tmp_path, sim)
    code, _, err = await runsync(database_url, "--config", path, "sync", "nope")
    assert code == 2 and "no source named 'nope'" in err

    # A server that refuses the connection may be down for a moment: a failure (try again),
    # not a mistake in the configuration.
    unreachable = "postgresql://runsync:hunter2pw@127.0.0.1:9/runsync"
    code, _, err = await runsync(unreachable, "--config", path, "status")
    assert code == 1 and "cannot connect to the database" in err
    assert "hunter2pw" not in err and "runsync:***@127.0.0.1:9" in err


@pytest.mark.process
async def test_a_wrong_database_name_or_password_exits_2(sim, database_url, tmp_path):
    path = config_file(tmp_path, sim)
    parts = urlsplit(database_url)
    for url, reason in (
        (urlunsplit(parts._replace(path="/no_such_database")), "does not exist"),
        (urlunsplit(parts._replace(netloc="nobody_here:pw-9@" + parts.netloc.rpartition("@")[2])),
         "nobody_here"),
    ):  # fmt: skip
        code, _, err = await runsync(url, "--config", path, "status")
        assert code == 2 and "cannot connect to the database" in err and reason in err, err
        assert "pw-9" not in err


BASE = """
[http]
listen = "127.0.0.1:0"

[[sources]]
name = "apify"
kind = "apify"
token_env = "APIFY_TOKEN"
base_url = "{base_url}"
"""


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        (lambda c: c.replace('kind = "apify"', 'kind = "zapier"'), "sources.apify.kind: 'zapier' is not a known kind"),
        (lambda c: c.replace('kind = "apify"', 'kind = "rakerone"'), "sources.apify.project: required for kind 'rakerone'"),
        (lambda c: c + 'every = "often"\n', "sources.apify.every: 'often' is not a duration"),
        (lambda c: c + 'cron = "*/15 25 * * *"\n', "sources.apify.cron: '*/15 25 * * *': hour 25 is outside 0-23"),
        (lambda c: c.replace("{base_url}", "http://api.example.com"), "plain http is only allowed to this machine"),
        (lambda c: c + c[c.index("[[sources]]"):], "sources.apify: two sources share this name"),
    ],
    ids=["unknown kind", "missing project", "bad duration", "bad cron", "http to a remote host", "duplicate names"],
)  # fmt: skip
def test_config_mistakes_exit_2_with_one_line_before_any_work(
    sim, tmp_path, capsys, monkeypatch, mistake, message
):
    path = tmp_path / "mistake.toml"
    path.write_text(mistake(BASE).replace("{base_url}", sim.base_url))
    monkeypatch.setenv("APIFY_TOKEN", TOKEN)
    monkeypatch.setenv("RUNSYNC_DATABASE_URL", "postgresql://runsync:pw-77@127.0.0.1:9/x")
    from worker import cli

    assert cli.main(["--config", str(path), "run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("runsync: error: ") and message in err[0], err
    assert "pw-77" not in err[0]
    assert sum(sim.requests.values()) == 0  # no work started
