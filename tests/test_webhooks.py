"""Apify webhook deliveries: to the daemon as a subprocess, and to its endpoint in this process."""

from __future__ import annotations

import asyncio
import io
import json
import signal
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web
from helpers import config_toml, free_port, source_toml, spawn, stored_runs

from worker import health, metrics, runtime, webhooks

T0 = datetime(2026, 6, 1, tzinfo=UTC)
SECRET = "whsec-7c1d2e3f4a5b6c7d8e9f"
HEADER = "X-Runsync-Webhook-Secret"


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def payload(run: dict, created_at: datetime, event_type: str = "ACTOR.RUN.SUCCEEDED") -> dict:
    """Apify's default payload for a run event."""
    return {
        "userId": "user1",
        "createdAt": iso(created_at),
        "eventType": event_type,
        "eventData": {"actorId": run.get("actId"), "actorRunId": run.get("id")},
        "resource": run,
    }


async def deliver(port: int, source: str, body, *, headers=None) -> tuple[int, dict]:
    data = io.BytesIO(body if isinstance(body, bytes) else json.dumps(body).encode())
    headers = {HEADER: SECRET} if headers is None else headers
    async with (
        aiohttp.ClientSession() as client,
        client.post(
            f"http://127.0.0.1:{port}/webhooks/apify/{source}", data=data, headers=headers
        ) as answer,
    ):
        return answer.status, await answer.json()


async def history(db, run_id: str) -> list[tuple]:
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT previous_status, status FROM runsync.run_status_history WHERE run_id = $1 "
            "ORDER BY id",
            run_id,
        )
    return [tuple(row) for row in rows]


@pytest.mark.process
async def test_deliveries_to_the_daemon_land_once_and_older_news_loses(
    world, sim, db, database_url, tmp_path
):
    (watched,) = world.add_runs(1, status="RUNNING", started_at=T0)
    world.add_runs(5, status="SUCCEEDED", started_at=T0)
    port = free_port()
    path = tmp_path / "daemon.toml"
    # The pass at start is the only one: no tick of a yearly cron falls within the test (an
    # interval's would, by its phase, now and then).
    source = source_toml(
        "apify", sim.base_url, cron="0 0 1 1 *", webhook_secret_env="APIFY_WEBHOOK_SECRET"
    )
    path.write_text(config_toml(source, listen=f"127.0.0.1:{port}"))
    pipe = asyncio.subprocess.PIPE
    daemon = await spawn(
        database_url, "--config", str(path), "run",
        env={"APIFY_WEBHOOK_SECRET": SECRET}, stdout=pipe, stderr=pipe,
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):  # the pass at start (its first copy, then incremental)
            while True:
                async with db.pool.acquire() as conn:
                    outcome = await conn.fetchval(
                        "SELECT outcome FROM runsync.passes WHERE stream = 'incremental'"
                    )
                if outcome == "succeeded":
                    break
                await asyncio.sleep(0.05)
        assert (await stored_runs(db))[watched["id"]]["status"] == "RUNNING"

        # A run no pass has seen lands the moment Apify tells.
        (fresh,) = world.add_runs(1, status="RUNNING")
        created = datetime.now(UTC)
        created_event = payload(world.get(fresh["id"]), created, "ACTOR.RUN.CREATED")
        assert await deliver(port, "apify", created_event) == (
            200,
            {"outcome": "stored", "run_id": fresh["id"], "status": "RUNNING"},
        )
        row = (await stored_runs(db))[fresh["id"]]
        assert row["status"] == "RUNNING" and row["observed_at"] == created.replace(
            microsecond=created.microsecond // 1000 * 1000
        )

        # The watched run finishes: the delivery says so, before any pass could.
        world.set_status(watched["id"], "SUCCEEDED")
        finished_at = datetime.now(UTC)
        finished = payload(world.get(watched["id"]), finished_at)
        status, answer = await deliver(port, "apify", finished)
        assert (status, answer["outcome"]) == (200, "updated")
        row = (await stored_runs(db))[watched["id"]]
        assert row["status"] == "SUCCEEDED" and row["is_terminal"]
        assert "stats" in row["raw"]  # the whole run object, merged over the list item
        assert await history(db, watched["id"]) == [("RUNNING", "SUCCEEDED")]

        # Apify sends it again: nothing changes, not even updated_at.
        status, answer = await deliver(port, "apify", finished)
        assert (status, answer["outcome"]) == (200, "unchanged")
        again = (await stored_runs(db))[watched["id"]]
        assert again["updated_at"] == row["updated_at"]
        assert await history(db, watched["id"]) == [("RUNNING", "SUCCEEDED")]

        # An older observation that arrives late does not win.
        stale = {**world.get(watched["id"]), "status": "RUNNING", "finishedAt": None}
        late = payload(stale, finished_at - timedelta(seconds=10), "ACTOR.RUN.CREATED")
        status, answer = await deliver(port, "apify", late)
        assert (status, answer["outcome"]) == (200, "unchanged")
        assert (await stored_runs(db))[watched["id"]]["status"] == "SUCCEEDED"
        assert await history(db, watched["id"]) == [("RUNNING", "SUCCEEDED")]

        # A wrong secret writes nothing.
        (intruder,) = world.add_runs(1, status="RUNNING")
        forged = payload(world.get(intruder["id"]), datetime.now(UTC))
        status, answer = await deliver(
            port, "apify", forged, headers={HEADER: "whsec-wrong-0123456789"}
        )
        assert (status, answer["outcome"]) == (401, "unauthorized")
        assert intruder["id"] not in await stored_runs(db)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(daemon.communicate(), 30)

    text = err.decode()
    assert daemon.returncode == 0, text
    assert SECRET not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    received = [line for line in lines if line["event"] == "webhook received"]
    assert [line["outcome"] for line in received] == [
        "stored", "updated", "unchanged", "unchanged", "unauthorized",
    ]  # fmt: skip
    assert received[0]["run_id"] == fresh["id"] and received[0]["event_type"] == "ACTOR.RUN.CREATED"
    assert lines[-1]["event"] == "daemon stopped"


async def test_what_the_endpoint_refuses_and_what_it_acknowledges(world, sim, db, write_config):
    actor, other = world.actors[0]["id"], world.actors[1]["id"]
    settings = write_config(
        config_toml(
            source_toml("apify", sim.base_url, webhook_secret_env="HOOK_SECRET"),
            source_toml("scoped", sim.base_url, actor=actor, webhook_secret_env="HOOK_SECRET"),
            source_toml("quiet", sim.base_url),
        ),
        env={"APIFY_TOKEN": "t0ken-abcd", "HOOK_SECRET": SECRET},
    )
    meters = metrics.Metrics()

    async def ready():
        return None

    receiver = webhooks.receiver(settings.sources, db, {}, meters)
    server = health.HealthServer("127.0.0.1:0", ready, metrics=meters, webhooks=receiver)
    await server.start()
    now = datetime.now(UTC)
    (mine,) = world.add_runs(1, status="SUCCEEDED", actor_id=actor, started_at=T0)
    (theirs,) = world.add_runs(1, status="SUCCEEDED", actor_id=other, started_at=T0)
    good = payload(world.get(mine["id"]), now)
    unreadable = {**world.get(theirs["id"]), "id": "broken-1", "startedAt": "yesterday"}
    cases = [
        ("nope", good, None, 404, "not_found"),
        ("quiet", good, None, 404, "not_found"),
        ("apify", good, {}, 401, "unauthorized"),
        ("apify", good, {"Authorization": "Bearer whsec-wrong-0123456789"}, 401, "unauthorized"),
        ("apify", b"{not json", None, 400, "bad_request"),
        ("apify", [good], None, 400, "bad_request"),
        ("apify", {**good, "createdAt": None}, None, 400, "bad_request"),
        ("apify", {**good, "createdAt": "2026-06-01T00:00:00"}, None, 400, "bad_request"),
        ("apify", {**good, "createdAt": iso(now + timedelta(hours=1))}, None, 400, "bad_request"),
        ("apify", {**good, "resource": None}, None, 400, "bad_request"),
        ("apify", {**good, "eventType": None}, None, 400, "bad_request"),
        ("apify", b"[" * 1_100_000, None, 413, "too_large"),
        ("apify", {**good, "eventType": "ACTOR.BUILD.SUCCEEDED"}, None, 200, "ignored"),
        ("apify", {**good, "eventType": "TEST", "resource": None}, None, 200, "ignored"),
        ("scoped", payload(world.get(theirs["id"]), now), None, 200, "out_of_scope"),
        ("apify", payload(unreadable, now), None, 200, "quarantined"),
    ]
    try:
        for source, body, headers, status, outcome in cases:
            answer = await deliver(server.port, source, body, headers=headers)
            assert answer[0] == status and answer[1]["outcome"] == outcome, (source, body, answer)
        assert await stored_runs(db, "apify") == {} and await stored_runs(db, "scoped") == {}
        async with db.pool.acquire() as conn:
            (kept,) = await conn.fetch("SELECT source, reason, raw FROM runsync.quarantine")
        assert kept["source"] == "apify" and "startedAt 'yesterday'" in kept["reason"]

        # In scope, with the secret as a bearer token, while a pass holds the source's lock.
        async with db.lease("scoped", "incremental") as lease:
            assert lease is not None
            answer = await asyncio.wait_for(
                deliver(server.port, "scoped", good, headers={"Authorization": f"Bearer {SECRET}"}),
                5,
            )
        assert answer == (200, {"outcome": "stored", "run_id": mine["id"], "status": "SUCCEEDED"})
        assert list(await stored_runs(db, "scoped")) == [mine["id"]]

        async with (
            aiohttp.ClientSession() as client,
            client.get(f"http://127.0.0.1:{server.port}/metrics") as scrape,
        ):
            text = await scrape.text()
        assert (
            'runsync_webhook_deliveries_total{outcome="not_found",source="(unknown)"} 2.0' in text
        )
        assert 'runsync_webhook_deliveries_total{outcome="bad_request",source="apify"} 7.0' in text
        assert 'runsync_runs_inserted_total{source="scoped",stream="webhook"} 1.0' in text
        assert 'runsync_items_quarantined_total{source="apify",stream="webhook"} 1.0' in text
    finally:
        await server.stop()


async def test_a_scope_given_by_name_is_looked_up_once(db, write_config):
    lookups = []

    async def get_actor(request: web.Request) -> web.Response:
        lookups.append(request.match_info["actor"])
        return web.json_response({"data": {"id": "ACTOR1", "name": "my-actor"}})

    app = web.Application()
    app.router.add_get("/v2/acts/{actor}", get_actor)
    upstream = web.AppRunner(app)
    await upstream.setup()
    await web.TCPSite(upstream, "127.0.0.1", 0).start()
    base_url = f"http://127.0.0.1:{upstream.addresses[0][1]}"
    settings = write_config(
        config_toml(
            source_toml(
                "named", base_url, actor="janedoe~my-actor", webhook_secret_env="HOOK_SECRET"
            )
        ),
        env={"APIFY_TOKEN": "t0ken-abcd", "HOOK_SECRET": SECRET},
    )
    client = runtime.client_for(settings.source("named"))
    receiver = webhooks.receiver(settings.sources, db, {"named": client})
    started = iso(T0)

    def run(run_id: str, actor: str) -> bytes:
        resource = {"id": run_id, "actId": actor, "status": "RUNNING", "startedAt": started}
        return json.dumps(payload(resource, datetime.now(UTC), "ACTOR.RUN.CREATED")).encode()

    try:
        answers = [
            await receiver.receive("apify", "named", {HEADER: SECRET}, run(run_id, actor))
            for run_id, actor in [("r1", "ACTOR1"), ("r2", "ACTOR2"), ("r3", "ACTOR1")]
        ]
    finally:
        await client.close()
        await upstream.cleanup()
    assert [a.body["outcome"] for a in answers] == ["stored", "out_of_scope", "stored"]
    assert lookups == ["janedoe~my-actor"]
    assert sorted(await stored_runs(db, "named")) == ["r1", "r3"]


async def test_a_resurrection_event_brings_the_run_back_between_two_passes(
    world, sim, db, write_config
):
    """ACTOR.RUN.RESURRECTED, then ACTOR.RUN.SUCCEEDED: both changes land, with no pass at all."""
    settings = write_config(
        config_toml(source_toml("apify", sim.base_url, webhook_secret_env="HOOK_SECRET")),
        env={"APIFY_TOKEN": "t0ken-abcd", "HOOK_SECRET": SECRET},
    )
    (run,) = world.add_runs(1, status="RUNNING", started_at=T0)
    world.set_status(run["id"], "TIMED-OUT", usage_total_usd=0.13)
    meters = metrics.Metrics()

    async def ready():
        return None

    receiver = webhooks.receiver(settings.sources, db, {}, meters)
    server = health.HealthServer("127.0.0.1:0", ready, metrics=meters, webhooks=receiver)
    await server.start()
    try:
        now = datetime.now(UTC)
        events = [(world.get(run["id"]), "ACTOR.RUN.TIMED_OUT")]
        world.set_status(run["id"], "RUNNING")
        events.append((world.get(run["id"]), "ACTOR.RUN.RESURRECTED"))
        world.set_status(run["id"], "SUCCEEDED", usage_total_usd=139.75)
        world.settle_all()  # the figure is final (Apify's is preliminary for about ten seconds)
        events.append((world.get(run["id"]), "ACTOR.RUN.SUCCEEDED"))
        for step, (resource, event) in enumerate(events):
            sent = payload(resource, now + timedelta(milliseconds=step), event)
            assert (await deliver(server.port, "apify", sent))[0] == 200
    finally:
        await server.stop()

    row = (await stored_runs(db))[run["id"]]
    assert (row["status"], float(row["usage_total_usd"])) == ("SUCCEEDED", 139.75)
    assert row["raw"] == events[-1][0]  # a whole run replaces raw: nothing of the first finish
    assert await history(db, run["id"]) == [("TIMED-OUT", "RUNNING"), ("RUNNING", "SUCCEEDED")]
