"""The simulated Apify API as the real service is observed to behave beyond its list docs
(upstream-docs/apify-observed-behaviour.md), over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from worker.simulator import Faults, Simulator
from worker.sources.apify.simulator import (
    KNOWN_ORIGINS,
    OPEN_STATUSES,
    TERMINAL_STATUSES,
    UNKNOWN_ORIGIN,
    ApifyWorld,
    RateLimiter,
)

ANCHOR = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ANCHOR_MS = int(ANCHOR.timestamp() * 1000)
TOKEN = "test-token"
LIMITED = {
    "error": {
        "type": "rate-limit-exceeded",
        "message": "You have exceeded the rate limit of 60 requests per second",
    }
}


class Clock:
    """A hand-driven clock: epoch milliseconds for the world, or seconds for the rate limiter."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, by: float) -> None:
        self.now += by


def world_at(clock: Clock, **options: object) -> ApifyWorld:
    return ApifyWorld(seed=11, anchor=ANCHOR, clock=clock, **options)  # type: ignore[arg-type]


@asynccontextmanager
async def served(world: ApifyWorld, **options: object) -> AsyncIterator[aiohttp.ClientSession]:
    sim = Simulator(world, token=TOKEN, **options)  # type: ignore[arg-type]
    await sim.start()
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(sim.base_url, headers=headers) as http:
            yield http
    finally:
        await sim.stop()


async def body_of(http: aiohttp.ClientSession, path: str, expect: int = 200, **params) -> dict:
    async with http.get(path, params={k: str(v) for k, v in params.items()}) as response:
        body = await response.json()
        assert response.status == expect, body
        return body


# --- usage that settles --------------------------------------------------------------------


def test_usage_is_preliminary_for_ten_seconds_after_a_run_finishes() -> None:
    clock = Clock(ANCHOR_MS)
    world = world_at(clock)
    (run,) = world.add_runs(1, status="RUNNING", started_at=ANCHOR - timedelta(hours=1))
    assert run["usageTotalUsd"] == 0 and type(run["usageTotalUsd"]) is int
    done = world.set_status(run["id"], "SUCCEEDED")
    assert done["finishedAt"] == "2025-03-01T12:00:00.000Z"
    preliminary = done["usageTotalUsd"]
    assert world.unsettled() == [run["id"]]
    clock.advance(9_999)
    assert world.list_items()[0]["usageTotalUsd"] == preliminary
    clock.advance(1)
    final = world.list_items()[0]["usageTotalUsd"]
    assert 0 < preliminary < final
    assert preliminary >= final / 2
    assert world.unsettled() == []
    # The single run reports the same figures, breakdown and compute units included.
    detail = world.get(run["id"])
    assert detail is not None
    assert detail["usageTotalUsd"] == detail["usageUsd"]["ACTOR_COMPUTE_UNITS"] == final
    assert detail["usage"]["ACTOR_COMPUTE_UNITS"] == detail["stats"]["computeUnits"] > 0


def test_a_given_cost_is_the_final_figure_and_settle_all_reaches_it_at_once() -> None:
    clock = Clock(ANCHOR_MS)
    world = world_at(clock)
    first, second = world.add_runs(2, started_at=ANCHOR - timedelta(minutes=3))
    assert world.set_status(first["id"], "FAILED", usage_total_usd=1.25)["usageTotalUsd"] < 1.25
    world.set_status(second["id"], "SUCCEEDED")
    assert sorted(world.unsettled()) == sorted([first["id"], second["id"]])
    assert world.settle_all() == 2
    assert world.unsettled() == []
    assert {i["id"]: i["usageTotalUsd"] for i in world.list_items()}[first["id"]] == 1.25
    # A run that finished long ago (by its finishedAt) has settled already.
    world.set_status(second["id"], "ABORTED", finished_at=ANCHOR - timedelta(minutes=1))
    assert world.unsettled() == []


def test_settle_seconds_zero_never_reports_a_preliminary_figure() -> None:
    clock = Clock(ANCHOR_MS)
    settled, settling = world_at(clock, settle_seconds=0), world_at(clock)
    for world in (settled, settling):
        (run,) = world.add_runs(1, started_at=ANCHOR - timedelta(hours=2))
        world.set_status(run["id"], "SUCCEEDED")
    assert settled.unsettled() == []
    assert settled.list_items()[0]["usageTotalUsd"] > settling.list_items()[0]["usageTotalUsd"]
    with pytest.raises(ValueError):
        ApifyWorld(settle_seconds=-1)


async def test_the_list_endpoint_serves_the_preliminary_then_the_final_figure() -> None:
    clock = Clock(ANCHOR_MS)
    world = world_at(clock)
    (run,) = world.add_runs(1, started_at=ANCHOR - timedelta(hours=1))
    world.set_status(run["id"], "SUCCEEDED")
    async with served(world) as http:
        early = (await body_of(http, "/v2/actor-runs"))["data"]["items"][0]
        clock.advance(10_000)
        late = (await body_of(http, "/v2/actor-runs"))["data"]["items"][0]
        detail = (await body_of(http, f"/v2/actor-runs/{run['id']}"))["data"]
    assert early["usageTotalUsd"] < late["usageTotalUsd"] == detail["usageTotalUsd"]


def test_generated_runs_that_finished_moments_ago_are_still_settling() -> None:
    # The newest generated runs finish up to an hour after they start, so some finish within
    # the last ten seconds before the anchor when the clock stands there.
    clock = Clock(ANCHOR_MS)
    world = ApifyWorld(runs=20_000, seed=4, anchor=ANCHOR, clock=clock, open_share=0)
    horizon = (ANCHOR - timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%S")
    recent = {i["id"] for i in world.list_items() if i["finishedAt"] > horizon}
    assert set(world.unsettled()) == recent
    clock.advance(10_000)
    assert world.unsettled() == []


# --- resurrection --------------------------------------------------------------------------


def test_resurrect_reopens_a_finished_run_of_any_age_and_it_finishes_again() -> None:
    clock = Clock(ANCHOR_MS)
    world = ApifyWorld(runs=50, seed=2, anchor=ANCHOR, clock=clock, open_share=0)
    old = world.list_items()[0]  # weeks old
    before = world.get(old["id"])
    assert before is not None and before["exitCode"] == 0 and old["status"] == "SUCCEEDED"

    reopened = world.resurrect(old["id"])
    assert (reopened["id"], reopened["startedAt"]) == (old["id"], old["startedAt"])
    assert (reopened["status"], reopened["finishedAt"]) == ("RUNNING", None)
    # What it cost so far stays while it runs again.
    assert reopened["usageTotalUsd"] == old["usageTotalUsd"]
    detail = world.get(old["id"])
    assert detail is not None and "exitCode" not in detail
    assert detail["stats"]["resurrectCount"] == 1
    assert not detail["isStatusMessageTerminal"]

    again = world.set_status(old["id"], "FAILED")
    assert again["finishedAt"] == "2025-03-01T12:00:00.000Z"
    clock.advance(10_000)
    assert world.list_items()[0]["usageTotalUsd"] > old["usageTotalUsd"]  # it ran longer
    detail = world.get(old["id"])
    assert detail is not None and detail["exitCode"] == 1
    assert detail["stats"]["resurrectCount"] == 1
    world.resurrect(old["id"])
    detail = world.get(old["id"])
    assert detail is not None and detail["stats"]["resurrectCount"] == 2
    assert world.finish_open() == 1
    with pytest.raises(KeyError):
        world.resurrect("AAAAAAAAAAAAAAAAA")


def test_only_a_finished_run_can_be_resurrected() -> None:
    world = world_at(Clock(ANCHOR_MS))
    (run,) = world.add_runs(1, status="READY")
    with pytest.raises(ValueError, match="not finished"):
        world.resurrect(run["id"])


async def test_a_resurrected_run_is_listed_as_running_again() -> None:
    world = world_at(Clock(ANCHOR_MS), runs=40, open_share=0)
    run = world.list_items()[5]
    world.resurrect(run["id"])
    async with served(world) as http:
        running = (await body_of(http, "/v2/actor-runs", status="RUNNING"))["data"]["items"]
        everything = (await body_of(http, "/v2/actor-runs"))["data"]["items"]
    assert [i["id"] for i in running] == [run["id"]]
    assert everything[5]["id"] == run["id"]  # same startedAt: same place in the list


# --- list items as recorded ----------------------------------------------------------------


def test_some_list_items_omit_usage_or_task_and_the_single_run_never_does() -> None:
    world = ApifyWorld(runs=3000, seed=5, anchor=ANCHOR, omit_share=0.2)
    items = world.list_items()
    missing = Counter(
        tuple(field for field in ("usageTotalUsd", "actorTaskId") if field not in item)
        for item in items
    )
    assert 0.15 < 1 - missing[()] / len(items) < 0.25
    assert {("usageTotalUsd",), ("actorTaskId",), ("usageTotalUsd", "actorTaskId")} < set(missing)
    for item in items[:200]:
        detail = world.get(item["id"])
        assert detail is not None
        assert {"usageTotalUsd", "actorTaskId"} <= detail.keys()
        assert {k: detail[k] for k in item if k != "meta"} == {
            k: v for k, v in item.items() if k != "meta"
        }
    # The choice is seeded and stable: the same world omits the same fields, call after call.
    assert world.list_items() == items
    assert ApifyWorld(runs=3000, seed=5, anchor=ANCHOR, omit_share=0.2).list_items() == items
    assert all(len(item) == 15 for item in ApifyWorld(runs=300, seed=5).list_items())
    with pytest.raises(ValueError):
        ApifyWorld(omit_share=1.5)


async def test_omitting_items_are_served_as_the_truth_says() -> None:
    world = ApifyWorld(runs=500, seed=6, anchor=ANCHOR, omit_share=0.3)
    async with served(world) as http:
        served_items = (await body_of(http, "/v2/actor-runs"))["data"]["items"]
        task = world.tasks[0]
        task_items = (await body_of(http, f"/v2/actor-tasks/{task['id']}/runs"))["data"]["items"]
    assert served_items == world.list_items()
    # A task's run that does not say its task is still in the task's list.
    assert any("actorTaskId" not in item for item in task_items)
    assert {item.get("actorTaskId", task["id"]) for item in task_items} == {task["id"]}


async def test_items_carry_user_id_and_an_integer_build_number_and_integer_zero_costs() -> None:
    world = world_at(Clock(ANCHOR_MS), runs=200, open_share=0.1)
    async with served(world) as http, http.get("/v2/actor-runs") as response:
        text = await response.text()
    items = json.loads(text)["data"]["items"]
    assert {item["userId"] for item in items} == {world.user_id}
    for item in items:
        major, minor, build = (int(part) for part in item["buildNumber"].split("."))
        assert item["buildNumberInt"] == major * 100_000_000 + minor * 100_000 + build
    open_items = [item for item in items if item["status"] in OPEN_STATUSES]
    assert open_items and all(type(item["usageTotalUsd"]) is int for item in open_items)
    assert text.count('"usageTotalUsd":0,') >= len(open_items)  # written as 0, not 0.0
    assert '"usageTotalUsd":0.0,' not in text


def test_origins_are_an_open_set() -> None:
    origins = Counter(
        item["meta"]["origin"] for item in ApifyWorld(runs=20_000, seed=8).list_items()
    )
    assert set(origins) == {*KNOWN_ORIGINS, UNKNOWN_ORIGIN}
    assert UNKNOWN_ORIGIN not in KNOWN_ORIGINS
    assert 0 < origins[UNKNOWN_ORIGIN] < 200  # occasionally
    assert origins["API"] > origins["SCHEDULER"] > origins["WEB"] > origins["MCP"]


# --- the single run ------------------------------------------------------------------------


def test_the_single_run_has_the_recorded_extra_fields() -> None:
    clock = Clock(ANCHOR_MS)
    world = world_at(clock, runs=100, open_share=0.1)
    for item in world.list_items():
        detail = world.get(item["id"])
        assert detail is not None
        assert isinstance(detail["statusMessage"], str) and detail["statusMessage"]
        assert detail["isStatusMessageTerminal"] is (item["status"] in TERMINAL_STATUSES)
        assert ("exitCode" in detail) is (item["status"] in TERMINAL_STATUSES)
        assert {"durationMillis", "runTimeSecs", "computeUnits", "resurrectCount"} <= set(
            detail["stats"]
        )
        assert {"build", "timeoutSecs", "memoryMbytes"} <= set(detail["options"])
        assert set(detail["usage"]) == set(detail["usageUsd"]) > {"ACTOR_COMPUTE_UNITS"}
        assert detail["generalAccess"] == "FOLLOW_USER_SETTING"
        assert detail["storageIds"] == {
            "datasets": {"default": item["defaultDatasetId"]},
            "keyValueStores": {"default": item["defaultKeyValueStoreId"]},
            "requestQueues": {"default": item["defaultRequestQueueId"]},
        }
        assert detail["containerUrl"].startswith("https://")
        assert detail["consoleUrl"].endswith(f"/view/runs/{item['id']}")
        assert detail["meta"] == item["meta"]  # by default; detail_meta adds the rest
    running = next(i for i in world.list_items() if i["status"] == "RUNNING")
    took = world.get(running["id"])["stats"]["durationMillis"]  # type: ignore[index]
    clock.advance(5_000)
    assert world.get(running["id"])["stats"]["durationMillis"] == took + 5_000  # type: ignore[index]


def test_detail_meta_adds_the_client_and_the_schedule() -> None:
    world = ApifyWorld(runs=400, seed=3, anchor=ANCHOR, detail_meta=True)
    details = world.details()
    assert [d["id"] for d in details] == [i["id"] for i in world.list_items()]
    for detail in details:
        meta = detail["meta"]
        assert {"origin", "userAgent", "clientIp"} <= set(meta)
        assert ("scheduleId" in meta) is (meta["origin"] == "SCHEDULER")
        if meta["origin"] == "SCHEDULER":
            assert meta["scheduledAt"] < detail["startedAt"] and meta["clientIp"] is None


async def test_a_status_message_may_hold_any_character() -> None:
    world = world_at(Clock(ANCHOR_MS))
    (run,) = world.add_runs(1)
    message = "page\x00 3 of \ud800 5 \u2603 \x1b[0m"
    world.set_status_message(run["id"], message)
    async with served(world) as http, http.get(f"/v2/actor-runs/{run['id']}") as response:
        text = await response.text()
    assert "\\u0000" in text and "\\ud800" in text
    detail = json.loads(text)["data"]
    assert detail["statusMessage"] == message and detail["isStatusMessageTerminal"] is False
    world.set_status(run["id"], "SUCCEEDED")  # the message stays until it is set again
    assert world.get(run["id"])["statusMessage"] == message  # type: ignore[index]
    world.set_status_message(run["id"], "Done \x00", terminal=True)
    assert world.get(run["id"])["isStatusMessageTerminal"] is True  # type: ignore[index]
    world.set_status_message(run["id"], None)
    assert world.get(run["id"])["statusMessage"].startswith("Finished!")  # type: ignore[index]
    with pytest.raises(KeyError):
        world.set_status_message("AAAAAAAAAAAAAAAAA", "x")


# --- errors --------------------------------------------------------------------------------


async def test_a_wrong_token_gets_the_live_apis_401_when_asked() -> None:
    world = ApifyWorld(runs=3, live_auth_error=True)
    sim = Simulator(world, token=TOKEN)
    base = await sim.start()
    try:
        async with aiohttp.ClientSession(base) as http:
            async with http.get("/v2/actor-runs", headers={"Authorization": "Bearer no"}) as r:
                assert r.status == 401
                assert await r.json() == {
                    "error": {
                        "type": "user-or-token-not-found",
                        "message": "User was not found or authentication token is not valid",
                    }
                }
            async with http.get("/v2/actor-runs") as r:
                assert (r.status, (await r.json())["error"]["type"]) == (401, "token-not-provided")
    finally:
        await sim.stop()


async def test_forbidden_actors_tasks_and_runs_get_403() -> None:
    world = ApifyWorld(runs=300, seed=4, anchor=ANCHOR)
    actor, task = world.actors[0], world.tasks[-1]
    own_run = next(i for i in world.list_items() if i["actId"] == actor["id"])
    task_run = next(i for i in world.list_items() if i["actorTaskId"] == task["id"])
    lone_run = next(
        i for i in world.list_items() if i["actId"] != actor["id"] and i["actorTaskId"] is None
    )
    world.forbidden |= {f"janedoe~{actor['name']}", task["id"], lone_run["id"]}
    denied = {
        f"/v2/acts/{actor['id']}/runs": "Actor",
        f"/v2/acts/janedoe~{actor['name']}/runs": "Actor",
        f"/v2/actor-tasks/janedoe~{task['name']}/runs": "Actor task",
        f"/v2/actor-runs/{own_run['id']}": "Actor run",
        f"/v2/actor-runs/{task_run['id']}": "Actor run",
        f"/v2/actor-runs/{lone_run['id']}": "Actor run",
    }
    async with served(world) as http:
        for path, what in denied.items():
            error = (await body_of(http, path, expect=403))["error"]
            assert error["type"] == "insufficient-permissions"
            assert error["message"].startswith(f"Insufficient permissions for the {what}. Make")
        other = next(a for a in world.actors if a["id"] != actor["id"])
        await body_of(http, f"/v2/acts/{other['id']}/runs")
        assert (await body_of(http, "/v2/actor-runs"))["data"]["total"] == 300
        missing = await body_of(http, "/v2/actor-runs/AAAAAAAAAAAAAAAAA", expect=404)
        assert missing["error"]["type"] == "record-not-found"
        bad = await body_of(http, "/v2/actor-runs", expect=400, limit="x")
        assert bad["error"]["type"] == "invalid-input"


# --- rate limits ---------------------------------------------------------------------------


async def test_sixty_requests_a_second_per_resource_then_429_without_retry_after() -> None:
    ticks = Clock(1000.0)
    world = ApifyWorld(runs=20, seed=3, anchor=ANCHOR, rate_clock=ticks)
    run_id = world.list_items()[0]["id"]
    async with served(world) as http:
        statuses = []
        for _ in range(61):
            async with http.get("/v2/actor-runs?limit=1") as response:
                statuses.append(response.status)
                assert response.headers["X-RateLimit-Limit"] == "60"
                if response.status == 429:
                    assert "Retry-After" not in response.headers
                    assert await response.json() == LIMITED
        assert statuses == [200] * 60 + [429]
        # Each single run is a resource of its own, with its own sixty.
        async with http.get(f"/v2/actor-runs/{run_id}") as response:
            assert response.status == 200
        ticks.advance(0.999)
        async with http.get("/v2/actor-runs") as response:
            assert response.status == 429
        ticks.advance(0.001)  # a second after the first sixty: they have left the window
        async with http.get("/v2/actor-runs") as response:
            assert response.status == 200
    limiter = world.rate_limiter
    assert limiter.requests == {"/v2/actor-runs": 63, f"/v2/actor-runs/{run_id}": 1}
    assert limiter.refused == {"/v2/actor-runs": 2} and limiter.refused_total == 2


async def test_both_names_of_an_actor_are_one_resource_and_lists_are_separate() -> None:
    ticks = Clock(0.0)
    world = ApifyWorld(runs=20, seed=3, anchor=ANCHOR, rate_limit=4, rate_clock=ticks)
    actor = world.actors[0]
    async with served(world) as http:
        paths = [f"/v2/acts/{actor['id']}/runs", f"/v2/acts/janedoe~{actor['name']}/runs"] * 3
        statuses = [(await http.get(path)).status for path in paths]
        assert statuses == [200] * 4 + [429] * 2
        assert (await http.get("/v2/actor-runs")).status == 200
        async with http.get(paths[0]) as response:
            body = await response.json()
        assert (
            body["error"]["message"] == "You have exceeded the rate limit of 4 requests per second"
        )
    assert world.rate_limiter.requests[f"/v2/acts/{actor['id']}/runs"] == 7


async def test_every_apify_answer_carries_the_limit_but_the_controls_and_rakerone() -> None:
    world = ApifyWorld(runs=5, seed=3, anchor=ANCHOR)
    async with served(world) as http:
        for path, status in (
            ("/v2/actor-runs", 200),
            ("/v2/actor-runs?limit=0", 400),
            ("/v2/actor-runs/nope", 404),
            ("/v2/elsewhere", 404),
        ):
            async with http.get(path) as response:
                assert response.status == status
                assert response.headers["X-RateLimit-Limit"] == "60"
        async with http.get("/v2/actor-runs", headers={"Authorization": "Bearer x"}) as response:
            assert (response.status, response.headers["X-RateLimit-Limit"]) == (401, "60")
        async with http.post("/_simulator/apify/runs") as response:
            assert response.status == 201 and "X-RateLimit-Limit" not in response.headers
    # Injected faults are answers too, truncated ones included (their headers go out first).
    for kind in ("503", "truncate"):
        faults = Faults(1.0, (kind,))
        async with (
            served(ApifyWorld(runs=5), faults=faults) as http,
            http.get("/v2/actor-runs") as response,
        ):
            assert response.headers["X-RateLimit-Limit"] == "60"


async def test_no_rate_limit_when_disabled() -> None:
    world = ApifyWorld(runs=5, seed=3, rate_limit=None, rate_clock=Clock(0.0))
    async with served(world) as http:
        responses = await asyncio.gather(*(http.get("/v2/actor-runs") for _ in range(100)))
        assert {r.status for r in responses} == {200}
        assert all("X-RateLimit-Limit" not in r.headers for r in responses)
        for response in responses:
            response.release()
    assert world.rate_limiter.requests["/v2/actor-runs"] == 100
    assert world.rate_limiter.refused_total == 0


def test_the_window_slides() -> None:
    ticks = Clock(0.0)
    limiter = RateLimiter(60, ticks)
    assert all(limiter.admit("r") for _ in range(30))
    ticks.advance(0.5)
    assert all(limiter.admit("r") for _ in range(30))
    assert not limiter.admit("r")
    ticks.advance(0.5)  # the first thirty leave the window
    assert all(limiter.admit("r") for _ in range(30))
    assert not limiter.admit("r")
    ticks.advance(0.2)
    assert not limiter.admit("r")  # the second thirty are still in it
    assert limiter.admit("other")
    assert limiter.refused == {"r": 3}
    limiter.reset()
    assert not limiter.requests and limiter.admit("r")
    with pytest.raises(ValueError):
        RateLimiter(0)


# --- retention and the clock ---------------------------------------------------------------


async def test_retention_deletes_old_runs_and_later_offsets_shift() -> None:
    world = ApifyWorld(runs=300, seed=9, anchor=ANCHOR)
    items = world.list_items()
    world.add_raw_item({"id": "RAW"}, started_at=ANCHOR - timedelta(days=91))  # the oldest
    cut = datetime.fromisoformat(items[100]["startedAt"])
    async with served(world) as http:
        before = (await body_of(http, "/v2/actor-runs", offset=151, limit=10))["data"]["items"]
        assert world.delete_started_before(cut) == 100
        after = (await body_of(http, "/v2/actor-runs", offset=50, limit=10))["data"]
        assert after["total"] == 200 and after["items"] == before
        await body_of(http, f"/v2/actor-runs/{items[0]['id']}", expect=404)
        actor = items[0]["actId"]
        by_actor = (await body_of(http, f"/v2/acts/{actor}/runs"))["data"]["items"]
    assert world.list_items() == items[100:]
    assert by_actor == [i for i in items[100:] if i["actId"] == actor]
    assert world.get(items[0]["id"]) is None and world.get(items[100]["id"]) is not None
    assert world.delete_started_before(cut) == 0


def test_the_clock_drives_new_runs_and_the_default_anchor() -> None:
    clock = Clock(ANCHOR_MS + 123)
    world = ApifyWorld(runs=10, seed=1, clock=clock)
    assert world.anchor == ANCHOR and world.now() == ANCHOR + timedelta(milliseconds=123)
    assert all(i["startedAt"] < "2025-03-01T11:00:00.001Z" for i in world.list_items())
    (run,) = world.add_runs(1)
    assert run["startedAt"] == "2025-03-01T12:00:00.123Z"
    clock.advance(60_000)
    assert world.set_status(run["id"], "SUCCEEDED")["finishedAt"] == "2025-03-01T12:01:00.123Z"


def test_a_world_and_its_clock_replay_exactly() -> None:
    def build() -> ApifyWorld:
        clock = Clock(ANCHOR_MS)
        world = ApifyWorld(runs=500, seed=21, clock=clock, omit_share=0.1, detail_meta=True)
        world.add_runs(5, status="SUCCEEDED")
        world.resurrect(world.list_items()[3]["id"])
        clock.advance(4_000)
        world.finish_open("ABORTED")
        return world

    first, second = build(), build()
    assert first.list_items() == second.list_items()
    assert first.details() == second.details()
    assert first.unsettled() == second.unsettled() != []
