"""The simulated Apify API, exercised over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import random
import re
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from worker.simulator import Simulator, serve
from worker.sources import demo_worlds
from worker.sources.apify.simulator import (
    KNOWN_ORIGINS,
    OPEN_STATUSES,
    TERMINAL_STATUSES,
    UNKNOWN_ORIGIN,
    ApifyWorld,
)

ANCHOR = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
TOKEN = "test-token"
LIST_FIELDS = {
    "id", "actId", "actorTaskId", "status", "startedAt", "finishedAt", "buildId", "buildNumber",
    "meta", "usageTotalUsd", "defaultKeyValueStoreId", "defaultDatasetId", "defaultRequestQueueId",
}  # fmt: skip
# Not documented for list items, but recorded ones carry them.
RECORDED_FIELDS = {"userId", "buildNumberInt"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
RUN_ID = re.compile(r"^[0-9A-Za-z]{17}$")
ORIGINS = {*KNOWN_ORIGINS, UNKNOWN_ORIGIN}


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@pytest.fixture
def world() -> ApifyWorld:
    return ApifyWorld(runs=600, seed=11, anchor=ANCHOR, span=timedelta(days=5), open_share=0.05)


@pytest.fixture
async def sim(world: ApifyWorld) -> AsyncIterator[Simulator]:
    simulator = Simulator(world, token=TOKEN)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def http(sim: Simulator) -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(base_url=sim.base_url, headers=headers) as session:
        yield session


async def fetch(
    http: aiohttp.ClientSession, path: str, expect: int = 200, **params: object
) -> dict:
    async with http.get(path, params={k: str(v) for k, v in params.items()}) as response:
        body = await response.json()
        assert response.status == expect, body
        return body


async def page(http: aiohttp.ClientSession, path: str = "/v2/actor-runs", **params: object) -> dict:
    return (await fetch(http, path, **params))["data"]


async def collect(http: aiohttp.ClientSession, path: str, limit: int, **params: object) -> list:
    items: list[dict] = []
    while True:
        data = await page(http, path, offset=len(items), limit=limit, **params)
        items += data["items"]
        if len(items) >= data["total"]:
            return items


# --- auth and errors -----------------------------------------------------------------------


NOT_PROVIDED = {"type": "token-not-provided", "message": "Authentication token was not provided"}
NOT_VALID = {"type": "token-not-valid", "message": "Authentication token is not valid."}


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, NOT_PROVIDED),
        ({"Authorization": TOKEN}, NOT_PROVIDED),  # no "Bearer ": no token as far as Apify knows
        ({"Authorization": "Bearer "}, NOT_PROVIDED),
        ({"Authorization": "Bearer nope"}, NOT_VALID),
    ],
)
async def test_requests_without_the_right_bearer_token_get_401(
    sim: Simulator, headers: dict, error: dict
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{sim.base_url}/v2/actor-runs", headers=headers) as response,
    ):
        assert response.status == 401
        assert await response.json() == {"error": error}
    assert sim.requests["apify.list_user_runs"] == 1


async def test_unknown_records_get_404(http: aiohttp.ClientSession, sim: Simulator) -> None:
    cases = {
        "/v2/acts/nope/runs": "Actor was not found",
        "/v2/acts/janedoe~nope/runs": "Actor was not found",
        "/v2/actor-tasks/nope/runs": "Actor task was not found",
        "/v2/actor-runs/AAAAAAAAAAAAAAAAA": "Actor run was not found",
    }
    for path, message in cases.items():
        body = await fetch(http, path, expect=404)
        assert body == {"error": {"type": "record-not-found", "message": message}}
    assert sim.requests["apify.list_actor_runs"] == 2
    assert sim.requests["apify.get_run"] == 1
    assert (await fetch(http, "/v2/elsewhere", expect=404))["error"]["type"] == "page-not-found"


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("limit", "0"), ("limit", "-5"), ("limit", "ten"), ("limit", "1.5"), ("limit", ""),
        ("offset", "-1"), ("offset", "x"), ("desc", "yes"), ("desc", ""),
        ("status", "DONE"), ("status", "SUCCEEDED,"), ("status", "succeeded"),
        ("startedAfter", "yesterday"), ("startedBefore", "2025-13-01T00:00:00Z"),
    ],
)  # fmt: skip
async def test_invalid_list_parameters_get_400(
    http: aiohttp.ClientSession, param: str, value: str
) -> None:
    body = await fetch(http, "/v2/actor-runs", expect=400, **{param: value})
    assert body["error"]["type"] == "invalid-input"
    assert param in body["error"]["message"]


# --- listing -------------------------------------------------------------------------------


async def test_list_items_have_exactly_the_documented_fields(
    http: aiohttp.ClientSession, world: ApifyWorld
) -> None:
    data = await page(http)
    assert data["items"] == world.list_items()
    for item in data["items"]:
        assert set(item) == LIST_FIELDS | RECORDED_FIELDS
        assert RUN_ID.match(item["id"]) and RUN_ID.match(item["actId"])
        assert item["userId"] == world.user_id
        assert type(item["buildNumberInt"]) is int
        assert TIMESTAMP.match(item["startedAt"])
        assert item["meta"] == {"origin": item["meta"]["origin"]}
        assert item["meta"]["origin"] in ORIGINS
        # JavaScript writes whole numbers without a fraction: a cost of nothing is the integer 0.
        usage = item["usageTotalUsd"]
        assert type(usage) is float or (type(usage) is int and usage == 0)
        if item["status"] in OPEN_STATUSES:
            assert item["finishedAt"] is None
        else:
            assert TIMESTAMP.match(item["finishedAt"]) and item["finishedAt"] > item["startedAt"]
        assert len({item["id"], item["defaultKeyValueStoreId"], item["defaultDatasetId"]}) == 3


async def test_pagination_reports_total_and_clamps_limit(http: aiohttp.ClientSession) -> None:
    data = await page(http)
    assert (data["total"], data["offset"], data["limit"], data["desc"]) == (600, 0, 1000, False)
    assert data["count"] == len(data["items"]) == 600
    clamped = await page(http, limit=5000)
    assert clamped["limit"] == 1000 and clamped["count"] == 600
    middle = await page(http, offset=10, limit=5)
    assert (middle["offset"], middle["limit"], middle["count"]) == (10, 5, 5)
    assert middle["items"] == data["items"][10:15]
    beyond = await page(http, offset=600)
    assert (beyond["total"], beyond["count"], beyond["items"]) == (600, 0, [])


async def test_limit_is_clamped_to_1000_with_more_runs(
    http: aiohttp.ClientSession, world: ApifyWorld
) -> None:
    world.add_runs(500, status="SUCCEEDED", started_at=ANCHOR - timedelta(hours=2))
    data = await page(http, limit=1001)
    assert (data["total"], data["limit"], data["count"]) == (1100, 1000, 1000)
    assert (await page(http))["count"] == 1000


async def test_desc_reverses_the_order(http: aiohttp.ClientSession) -> None:
    ascending = (await page(http))["items"]
    for flag in ("1", "true"):
        data = await page(http, desc=flag, limit=50, offset=3)
        assert data["desc"] is True
        assert data["items"] == ascending[::-1][3:53]
    for flag in ("0", "false"):
        assert (await page(http, desc=flag))["items"] == ascending


def test_sort_is_by_started_at_then_id(world: ApifyWorld) -> None:
    items = world.list_items()
    assert items == sorted(items, key=lambda item: (item["startedAt"], item["id"]))


async def test_ties_keep_one_order_across_pages(
    http: aiohttp.ClientSession, world: ApifyWorld
) -> None:
    moment = ANCHOR - timedelta(days=1)
    tied = {run["id"] for run in world.add_runs(25, status="SUCCEEDED", started_at=moment)}
    bounds = {"startedAfter": iso(moment), "startedBefore": iso(moment)}
    first = await collect(http, "/v2/actor-runs", 4, **bounds)
    second = await collect(http, "/v2/actor-runs", 7, **bounds)
    assert [run["id"] for run in first] == [run["id"] for run in second] == sorted(tied)
    backwards = await collect(http, "/v2/actor-runs", 6, desc=1, **bounds)
    assert backwards == first[::-1]


async def test_started_bounds_are_inclusive(http: aiohttp.ClientSession, world: ApifyWorld) -> None:
    items = world.list_items()
    low, high = items[100]["startedAt"], items[199]["startedAt"]
    data = await page(http, startedAfter=low, startedBefore=high)
    assert data["items"] == [i for i in items if low <= i["startedAt"] <= high]
    assert data["items"][0] == items[100] and data["items"][-1] == items[199]
    just_after = (await page(http, startedAfter=low.replace("Z", "1Z")))["items"]  # +0.1 ms
    assert just_after[0] == items[101]
    offset_form = low.replace("Z", "+00:00")
    assert (await page(http, startedAfter=offset_form))["items"][0] == items[100]


async def test_status_filter_accepts_a_comma_list(
    http: aiohttp.ClientSession, world: ApifyWorld
) -> None:
    items = world.list_items()
    for statuses in (["FAILED"], ["FAILED", "ABORTED"], ["RUNNING", "READY", "SUCCEEDED"]):
        expected = [i for i in items if i["status"] in statuses]
        assert await collect(http, "/v2/actor-runs", 37, status=",".join(statuses)) == expected
        data = await page(http, status=",".join(statuses), desc=1, offset=5, limit=20)
        assert (data["total"], data["items"]) == (len(expected), expected[::-1][5:25])


async def test_random_queries_match_a_brute_force_filter(
    http: aiohttp.ClientSession, world: ApifyWorld
) -> None:
    items, rng = world.list_items(), random.Random(5)
    statuses = sorted(TERMINAL_STATUSES | {"RUNNING", "READY"})
    for _ in range(40):
        params: dict = {
            "offset": rng.randint(0, 300),
            "limit": rng.choice([1, 10, 250]),
            "desc": rng.randint(0, 1),
        }
        chosen = rng.sample(statuses, rng.randint(1, 3)) if rng.random() < 0.6 else statuses
        low, high = sorted(rng.sample([i["startedAt"] for i in items], 2))
        expected = [i for i in items if i["status"] in chosen and low <= i["startedAt"] <= high]
        if params["desc"]:
            expected.reverse()
        data = await page(
            http, status=",".join(chosen), startedAfter=low, startedBefore=high, **params
        )
        assert data["total"] == len(expected)
        assert data["items"] == expected[params["offset"] : params["offset"] + params["limit"]]


async def test_actor_runs_by_id_and_by_username_tilde_name(
    http: aiohttp.ClientSession, world: ApifyWorld
) -> None:
    assert 3 <= len(world.actors) <= 5
    for actor in world.actors:
        expected = [i for i in world.list_items() if i["actId"] == actor["id"]]
        by_id = await collect(http, f"/v2/acts/{actor['id']}/runs", 50)
        by_name = await collect(http, f"/v2/acts/janedoe~{actor['name']}/runs", 50)
        assert by_id == by_name == expected
        middle = expected[len(expected) // 2]["startedAt"]
        data = await page(
            http, f"/v2/acts/{actor['id']}/runs", startedAfter=middle, status="SUCCEEDED"
        )
        assert data["items"] == [
            i for i in expected if i["startedAt"] >= middle and i["status"] == "SUCCEEDED"
        ]


async def test_task_runs_ignore_started_filters(
    http: aiohttp.ClientSession, world: ApifyWorld
) -> None:
    task_runs = [i for i in world.list_items() if i["actorTaskId"]]
    assert 0.2 < len(task_runs) / 600 < 0.45
    for task in world.tasks:
        expected = [i for i in task_runs if i["actorTaskId"] == task["id"]]
        assert {i["actId"] for i in expected} == {task["actId"]}
        path = f"/v2/actor-tasks/janedoe~{task['name']}/runs"
        assert await collect(http, path, 20) == expected
        filtered = await page(http, path, startedAfter=iso(ANCHOR), startedBefore="garbage")
        assert filtered["items"] == expected
        failed = await page(
            http, f"/v2/actor-tasks/{task['id']}/runs", status="FAILED", desc="true"
        )
        assert failed["items"] == [i for i in expected if i["status"] == "FAILED"][::-1]
    # The user listing does apply the same filter: every generated run starts before the anchor.
    assert (await page(http, startedAfter=iso(ANCHOR)))["total"] == 0


# --- single runs and mutations -------------------------------------------------------------


async def test_single_run_has_detail_fields(http: aiohttp.ClientSession, world: ApifyWorld) -> None:
    item = world.list_items()[42]
    detail = (await fetch(http, f"/v2/actor-runs/{item['id']}"))["data"]
    assert {k: detail[k] for k in item} == item
    assert RUN_ID.match(detail["userId"])
    assert detail["stats"]["resurrectCount"] == 0 and detail["stats"]["durationMillis"] > 0
    assert {"memoryMbytes", "timeoutSecs"} <= set(detail["options"])
    assert "ACTOR_COMPUTE_UNITS" in detail["usage"]
    assert detail == world.get(item["id"])


async def test_set_status_can_resurrect_a_finished_run(
    http: aiohttp.ClientSession, world: ApifyWorld
) -> None:
    run = next(i for i in world.list_items() if i["status"] == "SUCCEEDED")
    resurrected = world.set_status(run["id"], "RUNNING")
    assert (resurrected["status"], resurrected["finishedAt"]) == ("RUNNING", None)
    running = await collect(http, "/v2/actor-runs", 100, status="RUNNING")
    assert resurrected in running
    detail = (await fetch(http, f"/v2/actor-runs/{run['id']}"))["data"]
    assert (detail["status"], detail["stats"]["resurrectCount"]) == ("RUNNING", 1)
    finished_at = ANCHOR + timedelta(minutes=5, microseconds=123_456)
    done = world.set_status(run["id"], "FAILED", finished_at=finished_at, usage_total_usd=1.25)
    assert (done["finishedAt"], done["usageTotalUsd"]) == ("2025-03-01T12:05:00.123Z", 1.25)
    assert done in (await page(http, status="FAILED"))["items"]
    assert resurrected not in (await page(http, status="RUNNING"))["items"]


async def test_add_runs_finish_open_and_delete(
    http: aiohttp.ClientSession, world: ApifyWorld
) -> None:
    task = world.tasks[0]
    added = world.add_runs(3, task_id=task["id"])
    assert all(run["actorTaskId"] == task["id"] and run["actId"] == task["actId"] for run in added)
    assert all(run["status"] == "RUNNING" and run["finishedAt"] is None for run in added)
    newest = (await page(http, desc=1, limit=3))["items"]
    assert {run["id"] for run in newest} == {run["id"] for run in added}
    open_before = sum(i["status"] in OPEN_STATUSES for i in world.list_items())
    assert world.finish_open() == open_before
    assert (await page(http, status=",".join(sorted(OPEN_STATUSES))))["total"] == 0
    world.delete_run(added[0]["id"])
    assert world.get(added[0]["id"]) is None
    await fetch(http, f"/v2/actor-runs/{added[0]['id']}", expect=404)
    assert (await page(http))["total"] == 602
    with pytest.raises(ValueError, match="unknown run status"):
        world.add_runs(status="DONE")


async def test_raw_items_appear_only_in_the_user_listing(
    http: aiohttp.ClientSession, world: ApifyWorld
) -> None:
    items = world.list_items()
    moment = datetime.fromisoformat(items[10]["startedAt"]) + timedelta(milliseconds=1)
    malformed = {"id": 5, "status": "SUCCEEDED", "actId": items[10]["actId"]}
    world.add_raw_item(malformed, started_at=moment)
    world.add_raw_item(["not", "a", "run"], started_at=moment)
    listed = (await page(http))["items"]
    assert listed == [*items[:11], malformed, ["not", "a", "run"], *items[11:]]
    # Raw items obey the filters as far as their fields allow.
    assert (await page(http, status="SUCCEEDED", startedAfter=iso(moment)))["items"][0] == malformed
    assert world.list_items() == items
    by_actor = await collect(http, f"/v2/acts/{items[10]['actId']}/runs", 1000)
    assert by_actor == [i for i in items if i["actId"] == items[10]["actId"]]


# --- determinism, generation and serving ---------------------------------------------------


def test_same_seed_gives_the_same_world() -> None:
    first = ApifyWorld(runs=300, seed=3, anchor=ANCHOR)
    again = ApifyWorld(runs=300, seed=3, anchor=ANCHOR)
    other = ApifyWorld(runs=300, seed=4, anchor=ANCHOR)
    assert first.list_items() == again.list_items() and first.actors == again.actors
    assert first.list_items() != other.list_items()


def test_generation_spreads_runs_and_keeps_the_newest_open() -> None:
    world = ApifyWorld(runs=2000, seed=9, anchor=ANCHOR, open_share=0.02)
    items = world.list_items()
    assert items[0]["startedAt"] >= iso(ANCHOR - timedelta(days=90))
    assert items[-1]["startedAt"] <= iso(ANCHOR - timedelta(hours=1))
    assert {i["status"] for i in items[-40:]} <= OPEN_STATUSES
    assert {i["status"] for i in items[:-40]} <= TERMINAL_STATUSES
    assert sum(i["status"] == "SUCCEEDED" for i in items) > 1500
    assert all(i["finishedAt"] <= iso(ANCHOR) for i in items[:-40])
    assert all(a["username"] == "janedoe" and RUN_ID.match(a["id"]) for a in world.actors)
    names = [a["name"] for a in world.actors] + [t["name"] for t in world.tasks]
    assert len(set(names)) == len(names)


async def test_serve_runs_until_cancelled() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = asyncio.create_task(serve(demo_worlds(5, 1), host="127.0.0.1", port=port, token="t"))
    headers = {"Authorization": "Bearer t"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for _ in range(100):
            try:
                async with session.get(f"http://127.0.0.1:{port}/v2/actor-runs") as response:
                    assert (await response.json())["data"]["total"] == 5
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("the simulator never answered")
    server.cancel()
    with pytest.raises(asyncio.CancelledError):
        await server


async def test_controls_add_runs_and_finish_open_ones_over_http():
    world = ApifyWorld(runs=0, seed=3)
    sim = Simulator(world, token="t")
    base = await sim.start()
    try:
        headers = {"Authorization": "Bearer t"}
        async with aiohttp.ClientSession(base, headers=headers) as client:
            async with client.post("/_simulator/apify/runs?count=3&status=RUNNING") as response:
                assert response.status == 201
                ids = (await response.json())["data"]["ids"]
            assert {item["id"] for item in world.list_items()} == set(ids)
            async with client.post("/_simulator/apify/finish?status=FAILED") as response:
                assert (await response.json())["data"]["finished"] == 3
            assert {item["status"] for item in world.list_items()} == {"FAILED"}
            async with client.post("/_simulator/apify/finish?status=RUNNING") as response:
                assert response.status == 400
        async with (
            aiohttp.ClientSession(base) as anonymous,
            anonymous.post("/_simulator/apify/runs") as response,
        ):
            assert response.status == 401
    finally:
        await sim.stop()
