"""The simulated RakerOne API, exercised over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from worker.simulator import Simulator, serve
from worker.sources import demo_worlds
from worker.sources.apify.simulator import ApifyWorld
from worker.sources.rakerone.simulator import RAKER_OPEN, RAKER_TERMINAL, RakerWorld

ANCHOR = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
TOKEN = "test-token"
LIST = "/api/projects/{}/action-runs"
FIELDS = {"id", "status", "startedAt", "finishedAt", "triggeredBy", "result"}
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
RUN_ID = re.compile(r"^run_[0-9a-f]{8}$")
TRIGGER = re.compile(r"^(user_\d{5}|schedule)$")


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def newest_first(items: list[dict]) -> list[dict]:
    return sorted(items, key=lambda item: (item["startedAt"], item["id"]), reverse=True)


@pytest.fixture
def world() -> RakerWorld:
    # A short span puts 600 runs close together, so many share a startedAt second.
    return RakerWorld(
        projects={"proj_a": 600, "proj_b": 40, "proj_empty": 0},
        seed=11,
        anchor=ANCHOR,
        span=timedelta(hours=3),
        forbidden=["proj_secret"],
    )


@pytest.fixture
async def sim(world: RakerWorld) -> AsyncIterator[Simulator]:
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
    http: aiohttp.ClientSession, project: str = "proj_a", expect: int = 200, **params: object
) -> dict:
    query = {k: str(v) for k, v in params.items() if v is not None}
    async with http.get(LIST.format(project), params=query) as response:
        body = await response.json()
        assert response.status == expect, body
        return body


async def walk(
    http: aiohttp.ClientSession, project: str = "proj_a", **params: object
) -> tuple[list[dict], list[str]]:
    """Every item of a listing by following nextCursor, and the cursors handed out."""
    items: list[dict] = []
    cursors: list[str] = []
    while True:
        body = await fetch(http, project, cursor=(cursors or [None])[-1], **params)
        assert list(body) == ["runs", "nextCursor"]
        items += body["runs"]
        if body["nextCursor"] is None:
            return items, cursors
        cursors.append(body["nextCursor"])


async def walk_from(http: aiohttp.ClientSession, cursor: str | None, **params: object) -> list:
    """Every item after `cursor`, following nextCursor to the end."""
    items: list[dict] = []
    while cursor is not None:
        body = await fetch(http, cursor=cursor, **params)
        items += body["runs"]
        cursor = body["nextCursor"]
    return items


def forge(**payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


# --- auth and errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}]
)
async def test_requests_without_the_right_bearer_token_get_401(
    sim: Simulator, headers: dict
) -> None:
    async with (
        aiohttp.ClientSession(sim.base_url) as session,
        session.get(LIST.format("proj_a"), headers=headers) as response,
    ):
        assert response.status == 401
        assert await response.json() == {"error": "unauthorized"}
    assert sim.requests["rakerone.list_action_runs"] == 1


async def test_forbidden_and_unknown_projects(http: aiohttp.ClientSession) -> None:
    assert await fetch(http, "proj_secret", expect=403) == {"error": "forbidden"}
    assert await fetch(http, "proj_nope", expect=404) == {"error": "not_found"}
    async with http.get("/api/elsewhere") as response:
        assert (response.status, await response.json()) == (404, {"error": "not_found"})
    async with http.post(LIST.format("proj_a")) as response:
        assert (response.status, await response.json()) == (405, {"error": "method_not_allowed"})


async def test_limit_defaults_to_and_is_clamped_to_the_maximum(
    http: aiohttp.ClientSession, world: RakerWorld
) -> None:
    assert world.max_limit == 100
    top = world.list_items("proj_a")[:100]
    assert (await fetch(http))["runs"] == top
    assert (await fetch(http, limit=5000))["runs"] == top
    assert (await fetch(http, limit=7))["runs"] == top[:7]
    assert (await fetch(http, limit="007", whatever="ignored"))["runs"] == top[:7]


async def test_a_smaller_server_maximum_clamps_too() -> None:
    world = RakerWorld(projects={"p": 30}, seed=2, max_limit=8)
    sim = Simulator(world, token=TOKEN)
    await sim.start()
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(sim.base_url, headers=headers) as http:
            assert len((await fetch(http, "p"))["runs"]) == 8
            assert len((await fetch(http, "p", limit=9))["runs"]) == 8
            items, cursors = await walk(http, "p", limit=1000)
            assert items == world.list_items("p") and len(cursors) == 3
    finally:
        await sim.stop()


# "\u0661" is an Arabic-Indic one: a Unicode digit, but not an ASCII one.
@pytest.mark.parametrize("value", ["0", "-1", "ten", "1.5", "", "+5", " 5", "\u0661"])
async def test_invalid_limits_get_400_invalid_query(
    http: aiohttp.ClientSession, value: str
) -> None:
    body = await fetch(http, expect=400, limit=value)
    assert set(body) == {"error", "issues"} and body["error"] == "invalid_query"
    (issue,) = body["issues"]
    assert issue["path"] == ["limit"] and issue["message"]


# --- listing -------------------------------------------------------------------------------


async def test_items_have_exactly_the_documented_fields(
    http: aiohttp.ClientSession, world: RakerWorld
) -> None:
    items, _ = await walk(http)
    assert items == world.list_items("proj_a")
    for item in items:
        assert set(item) == FIELDS
        assert RUN_ID.match(item["id"]) and TRIGGER.match(item["triggeredBy"])
        assert TIMESTAMP.match(item["startedAt"])
        if item["status"] in RAKER_OPEN:
            assert item["finishedAt"] is None and item["result"] is None
        else:
            assert item["status"] in RAKER_TERMINAL
            assert TIMESTAMP.match(item["finishedAt"]) and item["finishedAt"] >= item["startedAt"]
            assert set(item["result"]) == {"success", "details"}
            assert item["result"]["success"] is (item["status"] == "completed")
            assert isinstance(item["result"]["details"], str)


@pytest.mark.parametrize("limit", [1, 7, 13])
async def test_a_full_walk_equals_list_items_newest_first_with_ties(
    http: aiohttp.ClientSession, world: RakerWorld, limit: int
) -> None:
    items, cursors = await walk(http, limit=limit)
    truth = world.list_items("proj_a")
    assert items == truth == newest_first(truth)
    assert len(cursors) == -(-600 // limit) - 1
    seconds = Counter(item["startedAt"] for item in items)
    assert sum(n for n in seconds.values() if n > 1) > 100  # ties at one second are common
    # Some pages end inside a tie, and the next page still continues it in id order.
    page_breaks = range(limit, len(items), limit)
    assert any(items[i - 1]["startedAt"] == items[i]["startedAt"] for i in page_breaks)


async def test_next_cursor_is_null_on_the_last_page(
    http: aiohttp.ClientSession, world: RakerWorld
) -> None:
    assert await fetch(http, "proj_empty") == {"runs": [], "nextCursor": None}
    world.add_runs("proj_empty", 200, status="completed", started_at=ANCHOR)
    first = await fetch(http, "proj_empty")
    last = await fetch(http, "proj_empty", cursor=first["nextCursor"])
    assert len(first["runs"]) == len(last["runs"]) == 100 and last["nextCursor"] is None
    assert (await fetch(http, "proj_b", limit=40))["nextCursor"] is None
    assert (await fetch(http, "proj_b", limit=39))["nextCursor"] is not None


async def test_runs_added_at_the_top_during_a_walk_do_not_shift_it(
    http: aiohttp.ClientSession, world: RakerWorld
) -> None:
    before = world.list_items("proj_a")
    seen: list[dict] = []
    cursor = None
    while True:
        body = await fetch(http, cursor=cursor, limit=30)
        seen += body["runs"]
        world.add_runs("proj_a", 7)  # startedAt now: above every page to come
        world.add_runs("proj_a", 3, status="completed", started_at=ANCHOR)
        if (cursor := body["nextCursor"]) is None:
            break
    assert seen == before


async def test_deleting_runs_during_a_walk_skips_none_of_the_rest(
    http: aiohttp.ClientSession, world: RakerWorld
) -> None:
    before = world.list_items("proj_a")
    first = await fetch(http, limit=50)
    for item in (first["runs"][-1], first["runs"][-2], before[50], before[51]):
        world.delete_run("proj_a", item["id"])  # the cursor's own run, and the next page's
    rest = await walk_from(http, first["nextCursor"], limit=50)
    assert rest == before[52:]


async def test_status_filter_is_an_exact_match(
    http: aiohttp.ClientSession, world: RakerWorld
) -> None:
    truth = world.list_items("proj_a")
    for status in (*RAKER_TERMINAL, *RAKER_OPEN):
        expected = [item for item in truth if item["status"] == status]
        assert expected, status
        assert (await walk(http, status=status, limit=9))[0] == expected
    world.set_status("proj_a", truth[3]["id"], "archived")
    assert (await walk(http, status="archived"))[0] == [world.list_items("proj_a")[3]]
    for status in ("Completed", "completed,failed", ""):
        assert await fetch(http, status=status) == {"runs": [], "nextCursor": None}


async def test_cursor_from_another_listing_or_malformed_is_invalid(
    http: aiohttp.ClientSession,
) -> None:
    plain = (await fetch(http, limit=5))["nextCursor"]
    completed = (await fetch(http, limit=5, status="completed"))["nextCursor"]
    other = (await fetch(http, "proj_b", limit=5))["nextCursor"]
    valid = json.loads(base64.urlsafe_b64decode(plain + "=" * (-len(plain) % 4)))
    invalid = {
        "proj_a": [other, completed, "garbage!", "", "eyJ", "e30", plain[:-3]],
        "proj_b": [plain],
    }
    invalid["proj_a"] += [
        forge(**{**valid, "epoch": True}),
        forge(**{**valid, "after": valid["after"][:2]}),
        forge(**{**valid, "extra": 1}),
        forge(**valid) + "%",
    ]
    for project, cursors in invalid.items():
        for cursor in cursors:
            body = await fetch(http, project, expect=400, cursor=cursor, limit=5)
            assert body == {"error": "invalid_cursor"}, cursor
    with_status = await fetch(http, expect=400, cursor=plain, status="completed")
    assert with_status == {"error": "invalid_cursor"}
    assert (await fetch(http, cursor=completed, status="completed"))["runs"]
    padded = plain + "=" * (-len(plain) % 4)
    assert (await fetch(http, cursor=padded))["runs"] == (await fetch(http, cursor=plain))["runs"]


async def test_expired_cursors_are_refused_and_a_fresh_walk_works(
    http: aiohttp.ClientSession, world: RakerWorld
) -> None:
    first = await fetch(http, limit=50)
    world.expire_cursors()
    body = await fetch(http, expect=400, cursor=first["nextCursor"], limit=50)
    assert body == {"error": "invalid_cursor"}
    items, cursors = await walk(http, limit=50)
    assert items == world.list_items("proj_a")
    assert cursors[0] != first["nextCursor"]
    world.expire_cursors()
    assert (await fetch(http, expect=400, cursor=cursors[3]))["error"] == "invalid_cursor"


async def test_cursors_are_stable_url_safe_base64_json(http: aiohttp.ClientSession) -> None:
    _, cursors = await walk(http, limit=64)
    _, again = await walk(http, limit=64)
    assert cursors == again
    for cursor in cursors:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", cursor)
        json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    # The position decides the cursor, not the page sizes that led to it.
    after_five = (await fetch(http, limit=5))["nextCursor"]
    after_ten = (await fetch(http, limit=5, cursor=after_five))["nextCursor"]
    assert after_ten == (await fetch(http, limit=10))["nextCursor"]


# --- the world -----------------------------------------------------------------------------


def test_same_seed_gives_the_same_world() -> None:
    projects = {"p": 300, "q": 50}
    first = RakerWorld(projects=projects, seed=3, anchor=ANCHOR)
    again = RakerWorld(projects=projects, seed=3, anchor=ANCHOR)
    other = RakerWorld(projects=projects, seed=4, anchor=ANCHOR)
    for project in projects:
        assert first.list_items(project) == again.list_items(project)
        assert first.list_items(project) != other.list_items(project)
    assert first.projects == ["p", "q"]


def test_generation_spreads_runs_and_keeps_the_newest_open() -> None:
    world = RakerWorld(projects={"p": 3000, "q": 3000}, seed=9, anchor=ANCHOR, open_share=0.05)
    items = world.list_items("p")
    assert len(items) == 3000
    assert items[-1]["startedAt"] >= iso(ANCHOR - timedelta(days=60))
    assert items[0]["startedAt"] <= iso(ANCHOR - timedelta(hours=1))
    newest, older = items[:150], items[150:]
    assert {i["status"] for i in newest} == set(RAKER_OPEN)
    assert {i["status"] for i in older} == {*RAKER_TERMINAL, "needs_review"}
    old_reviews = [i for i in older if i["status"] == "needs_review"]
    assert 5 <= len(old_reviews) <= 80
    assert min(i["startedAt"] for i in old_reviews) < iso(ANCHOR - timedelta(days=30))
    assert sum(i["status"] == "completed" for i in items) > 2300
    assert all(i["finishedAt"] <= iso(ANCHOR) for i in older if i["finishedAt"])
    assert {i["triggeredBy"] for i in items} > {"schedule"}
    ids = [i["id"] for p in world.projects for i in world.list_items(p)]
    assert len(set(ids)) == len(ids) == 6000


def test_set_status_add_runs_and_delete(world: RakerWorld) -> None:
    run = next(i for i in world.list_items("proj_a") if i["status"] == "processing")
    done = world.set_status("proj_a", run["id"], "failed", finished_at=ANCHOR)
    assert done == {
        **run, "status": "failed", "finishedAt": "2025-03-01T12:00:00Z",
        "result": {"success": False, "details": "Action failed"},
    }  # fmt: skip
    custom = {"success": True, "details": "reviewed"}
    assert world.set_status("proj_a", run["id"], "completed", result=custom)["result"] == custom
    reopened = world.set_status("proj_a", run["id"], "needs_review")
    assert (reopened["finishedAt"], reopened["result"]) == (None, None)
    archived = world.set_status("proj_a", run["id"], "archived", finished_at=ANCHOR)
    assert (archived["status"], archived["finishedAt"], archived["result"]) == (
        "archived", "2025-03-01T12:00:00Z", None,
    )  # fmt: skip

    added = world.add_runs("proj_b", 3, started_at=ANCHOR + timedelta(microseconds=999_999))
    assert {(i["status"], i["startedAt"], i["finishedAt"]) for i in added} == {
        ("processing", "2025-03-01T12:00:00Z", None)
    }
    assert world.list_items("proj_b")[:3] == newest_first(added)
    (now,) = world.add_runs("proj_b", status="completed")
    assert now["startedAt"] > iso(ANCHOR) and now["result"]["success"] is True
    open_count = sum(i["status"] in RAKER_OPEN for i in world.list_items("proj_b"))
    assert world.finish_open("proj_b") == open_count >= 3
    assert {i["status"] for i in world.list_items("proj_b")} <= set(RAKER_TERMINAL)
    world.delete_run("proj_b", added[0]["id"])
    assert added[0]["id"] not in {i["id"] for i in world.list_items("proj_b")}
    with pytest.raises(KeyError):
        world.delete_run("proj_a", added[1]["id"])  # a run of another project
    with pytest.raises(KeyError):
        world.add_runs("proj_nope")
    with pytest.raises(ValueError, match="terminal"):
        world.finish_open("proj_b", "processing")


async def test_raw_items_are_listed_but_not_in_the_truth(
    http: aiohttp.ClientSession, world: RakerWorld
) -> None:
    (oldest,) = world.add_runs("proj_empty", status="completed", started_at=ANCHOR)
    later = ANCHOR + timedelta(seconds=10)
    tied = newest_first(world.add_runs("proj_empty", 2, status="completed", started_at=later))
    malformed = {"id": 5, "status": "completed", "startedAt": "yesterday"}
    world.add_raw_item("proj_empty", malformed, started_at=ANCHOR + timedelta(seconds=5))
    world.add_raw_item("proj_empty", ["not", "a", "run"], started_at=ANCHOR + timedelta(seconds=6))
    # Same startedAt and id as a real run: listed right above it, and cursors tell them apart.
    twin = {"id": tied[1]["id"], "status": "broken"}
    world.add_raw_item("proj_empty", twin, started_at=later)
    listed, _ = await walk(http, "proj_empty", limit=1)
    assert listed == [tied[0], twin, tied[1], ["not", "a", "run"], malformed, oldest]
    assert world.list_items("proj_empty") == [*tied, oldest]
    completed, _ = await walk(http, "proj_empty", status="completed", limit=1)
    assert completed == [*tied, malformed, oldest]
    assert (await walk(http, "proj_empty", status="broken"))[0] == [twin]


# --- serving and controls ------------------------------------------------------------------


async def test_controls_add_runs_and_finish_open_ones_over_http(world: RakerWorld) -> None:
    sim = Simulator(world, token="t")
    base = await sim.start()
    try:
        async with aiohttp.ClientSession(base, headers={"Authorization": "Bearer t"}) as client:
            async with client.post("/_simulator/rakerone/proj_empty/runs?count=3") as response:
                assert response.status == 201
                ids = (await response.json())["ids"]
            items = world.list_items("proj_empty")
            assert {i["id"] for i in items} == set(ids)
            assert {i["status"] for i in items} == {"processing"}
            url = "/_simulator/rakerone/proj_empty/runs?count=2&status=needs_review"
            async with client.post(url) as response:
                assert response.status == 201
            async with client.post("/_simulator/rakerone/proj_empty/finish") as response:
                assert (await response.json()) == {"finished": 5}
            assert {i["status"] for i in world.list_items("proj_empty")} == {"completed"}
            async with client.post("/_simulator/rakerone/proj_empty/finish?status=processing") as r:
                assert (r.status, (await r.json())["error"]) == (400, "invalid_query")
            async with client.post("/_simulator/rakerone/proj_empty/runs?count=0") as r:
                assert (r.status, (await r.json())["error"]) == (400, "invalid_query")
            async with client.post("/_simulator/rakerone/proj_nope/runs") as r:
                assert (r.status, await r.json()) == (404, {"error": "not_found"})
        async with (
            aiohttp.ClientSession(base) as anonymous,
            anonymous.post("/_simulator/rakerone/proj_empty/runs") as response,
        ):
            assert (response.status, await response.json()) == (401, {"error": "unauthorized"})
        assert sim.requests["control.rakerone.add_runs"] == 5
        assert sim.requests["control.rakerone.finish_open"] == 2
    finally:
        await sim.stop()


async def test_routes_exist_only_for_the_worlds_given() -> None:
    apify_only = Simulator(ApifyWorld(runs=3), token="t")
    raker_only = Simulator(RakerWorld(projects={"p": 3}), token="t")
    both = Simulator(ApifyWorld(runs=3), RakerWorld(projects={"p": 3}), token="t")
    expected = {
        apify_only: (404, 200),
        raker_only: (200, 404),
        both: (200, 200),
    }
    for sim, statuses in expected.items():
        base = await sim.start()
        try:
            async with aiohttp.ClientSession(base, headers={"Authorization": "Bearer t"}) as c:
                got = []
                for path in (LIST.format("p"), "/v2/actor-runs"):
                    async with c.get(path) as response:
                        got.append(response.status)
                assert tuple(got) == statuses
        finally:
            await sim.stop()


async def test_serve_runs_both_upstreams_until_cancelled() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = asyncio.create_task(serve(demo_worlds(10, 1), host="127.0.0.1", port=port, token="t"))
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(base, headers={"Authorization": "Bearer t"}) as session:
        for _ in range(100):
            try:
                async with session.get(LIST.format("proj_alpha")) as response:
                    assert len((await response.json())["runs"]) == 5
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.02)
        else:
            pytest.fail("the simulator never answered")
        async with session.get(LIST.format("proj_beta")) as response:
            assert len((await response.json())["runs"]) == 5
        async with session.get("/v2/actor-runs") as response:
            assert (await response.json())["data"]["total"] == 10
    server.cancel()
    with pytest.raises(asyncio.CancelledError):
        await server
