"""Secrets never leave the process: not in logs, errors, status output, URLs or tables."""

from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess

import aiohttp
import pytest
from aiohttp import web
from helpers import REPO, config_toml, eventually, free_port, source_toml, spawn

from worker import http
from worker.simulator import Simulator
from worker.sources.github.simulator import workflow_run_delivery

APIFY_SECRET = "apify_api_S3CRETa1b2c3"
RAKER_SECRET = "raker_S3CRETd4e5f6"
WRONG_SECRET = "apify_api_WR0NGsecret99"
DB_SECRET = "dbpw_S3CRETg7h8"
GITHUB_SECRET = "ghp_S3CRETr5s6t7u8"
WRONG_GITHUB_SECRET = "ghp_WR0NGsecret42"
HOOK_SECRET = "whsec_S3CRETv9w0x1y2z3"  # the GitHub webhook's, which keys its signatures
SECRETS = (
    APIFY_SECRET, RAKER_SECRET, WRONG_SECRET, DB_SECRET, GITHUB_SECRET, WRONG_GITHUB_SECRET,
    HOOK_SECRET,
)  # fmt: skip


@pytest.fixture
async def sim_with_secret(world, raker):
    world.add_runs(30, status="RUNNING")
    raker.add_runs("proj_a", 20, status="processing")
    served = Simulator(world, raker, token=APIFY_SECRET)
    await served.start()
    yield served
    await served.stop()


@pytest.fixture
async def github_with_secret(hub):
    """GitHub on a simulator of its own, which takes its own token."""
    hub.add_runs(REPO, 20, status="completed", created_at=hub.now())
    hub.add_runs(REPO, 5, status="in_progress", created_at=hub.now())
    served = Simulator(hub, token=GITHUB_SECRET)
    await served.start()
    yield served
    await served.stop()


async def deliveries(port: int, hub) -> list[int]:
    """GitHub's deliveries to the daemon, once it is ready (until then it answers 503): a signed
    one, a forged one, and one whose signature header holds the secret itself (a sender set up
    wrong); the daemon's answers, or none yet."""
    run_id = hub.runs(REPO)[0]["id"]
    signed = workflow_run_delivery(hub, REPO, run_id, secret=HOOK_SECRET)
    forged = {**signed.headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}
    careless = {**signed.headers, "X-Hub-Signature-256": HOOK_SECRET}
    statuses = []
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{port}/readyz") as ready:
            if ready.status != 200:
                return []
        for headers in (signed.headers, forged, careless):
            url = f"http://127.0.0.1:{port}/webhooks/github/hub"
            async with client.post(url, data=signed.body, headers=headers) as answer:
                statuses.append(answer.status)
    return statuses


@pytest.mark.process
async def test_no_command_lets_a_secret_out(
    sim_with_secret, github_with_secret, hub, db, database_url, tmp_path
):
    sim, github = sim_with_secret, github_with_secret
    path = tmp_path / "secrets.toml"
    port = free_port()
    github_sources = (
        source_toml("hub", github.base_url, kind="github", token_env="GITHUB_TOKEN",
                    repository=REPO, page_size=100, webhook_secret_env="HOOK_SECRET"),
        source_toml("hub-revoked", github.base_url, kind="github", token_env="OLD_GITHUB_TOKEN",
                    repository=REPO),
    )  # fmt: skip
    path.write_text(
        config_toml(
            source_toml("apify", sim.base_url),
            source_toml(
                "raker", sim.base_url, kind="rakerone", token_env="RAKER_TOKEN", project="proj_a"
            ),
            source_toml("revoked", sim.base_url, token_env="OLD_TOKEN"),
            *github_sources,
            listen=f"127.0.0.1:{port}",
        )
    )
    # The test server trusts every password, so the URL can carry one.
    url = database_url.replace("postgresql://postgres:@", f"postgresql://postgres:{DB_SECRET}@")
    env = {"APIFY_TOKEN": APIFY_SECRET, "RAKER_TOKEN": APIFY_SECRET, "OLD_TOKEN": WRONG_SECRET,
           "GITHUB_TOKEN": GITHUB_SECRET, "OLD_GITHUB_TOKEN": WRONG_GITHUB_SECRET,
           "HOOK_SECRET": HOOK_SECRET}  # fmt: skip
    outputs = []

    async def runsync(*args, stop_when=None, extra_env=None):
        pipe = asyncio.subprocess.PIPE
        process = await spawn(
            url,
            "--config",
            str(path),
            *args,
            env={**env, **(extra_env or {})},
            stdout=pipe,
            stderr=pipe,
        )
        if stop_when is not None:
            # (Two ticks of each source: GitHub's passes are the slowest. The deliveries wait
            # for the daemon to listen.)
            await eventually(stop_when, 120, ignoring=(aiohttp.ClientConnectionError,))
            process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), 60)
        outputs.append((args, process.returncode, out.decode() + err.decode()))
        return process.returncode

    assert await runsync("check-config") == 0
    assert await runsync("migrate") == 0
    assert await runsync("sync") == 1  # the revoked tokens fail with 401; the others succeed
    assert await runsync("sync", "apify", "raker", "hub", "--log-level", "DEBUG") == 0
    assert await runsync("backfill", "apify") == 0
    assert await runsync("backfill", "hub", "--log-level", "DEBUG") == 0
    assert await runsync("status") == 0
    assert await runsync("status", "--json") == 0
    async with db.pool.acquire() as conn:
        before = await conn.fetchval("SELECT coalesce(max(id), 0) FROM runsync.passes")

    async def two_ticks_each() -> bool:
        """The daemon ran the pass at start and a scheduled one of each source to their end."""
        async with db.pool.acquire() as conn:
            counts = await conn.fetch(
                "SELECT source, count(*) FROM runsync.passes"
                " WHERE id > $1 AND finished_at IS NOT NULL GROUP BY source",
                before,
            )
        return {row["source"]: row["count"] >= 2 for row in counts} == dict.fromkeys(
            ("apify", "raker", "revoked", "hub", "hub-revoked"), True
        )

    answers = []

    async def delivered_and_two_ticks_each() -> bool:
        if not answers:  # GitHub's deliveries, once the daemon takes them
            answers.extend(await deliveries(port, hub))
        return await two_ticks_each()

    stop_when = delivered_and_two_ticks_each
    assert await runsync("run", "--log-level", "DEBUG", stop_when=stop_when) == 0
    assert answers == [200, 401, 401]
    unreachable = f"postgresql://runsync:{DB_SECRET}@127.0.0.1:9/x"
    assert (
        await runsync("status", extra_env={"RUNSYNC_DATABASE_URL": unreachable}) == 1
    )  # down: try again

    assert any("HTTP 401" in text for _, _, text in outputs)  # the failure was reported...
    assert any("hub-revoked: GET /repos/" in text for _, _, text in outputs)  # GitHub's too
    for args, _, text in outputs:
        for secret in SECRETS:
            assert secret not in text, (args, secret)  # ...without a secret
    async with db.pool.acquire() as conn:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'runsync'"
        )
        assert len(tables) >= 6
        for table in tables:
            text = await conn.fetchval(
                f"SELECT coalesce(string_agg(t::text, ' '), '') FROM runsync.{table['table_name']} t"
            )
            for secret in SECRETS:
                assert secret not in text, (table["table_name"], secret)


@pytest.fixture
def self_signed(tmp_path):
    """A certificate for 127.0.0.1 that no authority signed."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_certificates_are_verified(self_signed):
    cert, key = self_signed
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    seen = []

    async def answer(request):
        seen.append(request)
        return web.json_response({"data": {"items": []}})

    app = web.Application()
    app.router.add_get("/v2/actor-runs", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    base = f"https://127.0.0.1:{runner.addresses[0][1]}"
    client = http.Client(base, APIFY_SECRET, name="tls")
    try:
        with pytest.raises(http.UpstreamError, match="TLS failed") as caught:
            await client.get_json("/v2/actor-runs")
        assert "certificate verify failed" in str(caught.value)
        assert APIFY_SECRET not in str(caught.value) and seen == []  # nothing was sent
    finally:
        await client.close()
        await runner.cleanup()
