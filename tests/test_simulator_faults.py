"""Seeded fault injection and latency of the simulated upstreams, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from helpers import eventually

from worker.simulator import FAULT_KINDS, Faults, Simulator, serve
from worker.sources import demo_worlds
from worker.sources.apify.simulator import ApifyWorld
from worker.sources.github.simulator import GitHubWorld
from worker.sources.rakerone.simulator import RakerWorld

ANCHOR = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
TOKEN = "fault-token"
APIFY_LIST = "/v2/actor-runs?limit=30"
RAKER_LIST = "/api/projects/proj/action-runs?limit=30"
GITHUB_LIST = "/repos/octo/app/actions/runs?per_page=30"
APIFY_ERRORS = {
    429: "rate-limit-exceeded",
    500: "internal-server-error",
    502: "bad-gateway",
    503: "service-unavailable",
}
RAKER_ERRORS = {429: "rate_limited", 500: "internal_error", 502: "bad_gateway", 503: "unavailable"}
# Every faulted route of the upstreams: their list endpoints, and Apify's and GitHub's single run.
ROUTES = ["apify-list", "apify-run", "rakerone-list", "github-list", "github-run"]
# The fields wrong-types mistypes, by the route's upstream.
MISTYPED = {"apify": ("id", "startedAt", "status"), "rakerone": ("id", "startedAt", "status"),
            "github": ("id", "created_at", "status")}  # fmt: skip


def apify_world() -> ApifyWorld:
    return ApifyWorld(runs=60, seed=5, anchor=ANCHOR, span=timedelta(days=2), open_share=0.0)


def raker_world() -> RakerWorld:
    return RakerWorld(projects={"proj": 60}, seed=5, anchor=ANCHOR, open_share=0.0)


def github_world() -> GitHubWorld:
    return GitHubWorld({"octo/app": 60}, seed=5, anchor=ANCHOR, open_share=0.0)


@asynccontextmanager
async def simulated(
    faults: Faults | None = None, latency: float = 0.0, client_timeout: float = 5.0
) -> AsyncIterator[tuple[Simulator, aiohttp.ClientSession]]:
    sim = Simulator(
        apify_world(), raker_world(), github_world(), token=TOKEN,
        faults=faults, latency=latency,
    )  # fmt: skip
    await sim.start()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=client_timeout)
    try:
        async with aiohttp.ClientSession(sim.base_url, headers=headers, timeout=timeout) as http:
            yield sim, http
    finally:
        await sim.stop()


def path_of(route: str, sim: Simulator) -> str:
    if route == "apify-run":
        return f"/v2/actor-runs/{sim.world(ApifyWorld).list_items()[0]['id']}"
    if route == "github-run":
        return f"/repos/octo/app/actions/runs/{sim.world(GitHubWorld).runs('octo/app')[0]['id']}"
    return {"apify-list": APIFY_LIST, "rakerone-list": RAKER_LIST, "github-list": GITHUB_LIST}[
        route
    ]


def runs_of(route: str, page: dict) -> list[dict]:
    if route == "apify-run":
        return [page["data"]]
    if route == "github-run":
        return [page]
    if route == "github-list":
        return page["workflow_runs"]
    return page["data"]["items"] if route == "apify-list" else page["runs"]


async def outcome(http: aiohttp.ClientSession, url: str) -> str:
    """What a client saw: a status and a digest of the body, or the kind of failure."""
    try:
        async with http.get(url) as response:
            body = await response.read()
    except aiohttp.ClientPayloadError:
        return "truncated"
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        return "reset"
    return f"{response.status} {hashlib.sha256(body).hexdigest()[:12]}"


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Deliberate faults must not make aiohttp (or asyncio) log errors or tracebacks."""
    caplog.set_level(logging.DEBUG)
    yield
    noisy = [
        r
        for r in caplog.get_records("setup") + caplog.get_records("call")
        if r.levelno >= logging.WARNING and r.name.split(".")[0] in ("aiohttp", "asyncio")
    ]
    assert not noisy, [r.getMessage() for r in noisy]


# --- each kind as specified ----------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503])
@pytest.mark.parametrize("route", ROUTES)
async def test_status_faults_answer_in_the_upstreams_error_format(route: str, status: int) -> None:
    faults = Faults(1.0, (str(status),))
    async with simulated(faults) as (sim, http), http.get(path_of(route, sim)) as response:
        body = await response.json()
        assert response.status == status
        assert "Retry-After" not in response.headers
    if route.startswith("apify"):
        assert body["error"]["type"] == APIFY_ERRORS[status]
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    elif route.startswith("github"):
        assert body["status"] == str(status) and body["message"] and body["documentation_url"]
    else:
        assert body == {"error": RAKER_ERRORS[status]}
    assert faults.injected == {str(status): 1}


@pytest.mark.parametrize(("retry_after", "header"), [(0.05, "0.05"), (1.0, "1"), (2.5, "2.5")])
@pytest.mark.parametrize("route", ["apify-list", "rakerone-list", "github-list"])
async def test_429_retry_after_carries_the_header(route: str, retry_after: float, header: str):
    faults = Faults(1.0, ("429-retry-after",), retry_after=retry_after)
    async with simulated(faults) as (sim, http), http.get(path_of(route, sim)) as response:
        body = await response.json()
        assert response.status == 429
        assert response.headers["Retry-After"] == header
    if route.startswith("rakerone"):
        assert body == {"error": "rate_limited"}
    elif route.startswith("github"):
        assert "secondary rate limit" in body["message"]
    else:
        assert body["error"]["type"] == "rate-limit-exceeded"
    assert faults.injected == {"429-retry-after": 1}


async def test_stall_outlasts_a_short_client_timeout() -> None:
    # The stall is a hundred times the timeout: a TimeoutError at all means the client gave up
    # first (after the stall, the answer would be a plain 200). Stopping cuts the stall short.
    faults = Faults(1.0, ("stall",), stall_seconds=30.0)
    async with simulated(faults, client_timeout=0.3) as (_, http):
        with pytest.raises(TimeoutError):
            async with http.get(RAKER_LIST) as response:
                await response.read()
    assert faults.injected == {"stall": 1}


async def test_a_stalled_request_is_answered_normally_afterwards() -> None:
    faults = Faults(1.0, ("stall",), stall_seconds=0.2)
    async with simulated() as (_, clean_http):
        expected = await (await clean_http.get(APIFY_LIST)).json()
    async with simulated(faults) as (_, http):
        started = time.monotonic()
        async with http.get(APIFY_LIST) as response:
            assert response.status == 200
            assert await response.json() == expected
        assert time.monotonic() - started >= 0.2


async def test_stopping_cuts_a_stall_short() -> None:
    faults = Faults(1.0, ("stall",), stall_seconds=60)
    async with simulated(faults, client_timeout=60) as (sim, http):
        pending = asyncio.create_task(outcome(http, RAKER_LIST))
        await eventually(lambda: faults.injected)  # the request is stalled now
        assert faults.injected == {"stall": 1}
        # Within half the stall, however loaded the machine: the stall did not run its course.
        await asyncio.wait_for(sim.stop(), 30)
        await asyncio.wait_for(asyncio.gather(pending, return_exceptions=True), 30)


@pytest.mark.parametrize("route", ROUTES)
async def test_truncate_breaks_off_the_body(route: str) -> None:
    faults = Faults(1.0, ("truncate",))
    async with simulated(faults) as (sim, http), http.get(path_of(route, sim)) as response:
        assert response.status == 200
        assert response.content_length and response.content_length > 100
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert faults.injected == {"truncate": 1}


@pytest.mark.parametrize("route", ROUTES)
async def test_reset_drops_the_connection_without_an_answer(route: str) -> None:
    faults = Faults(1.0, ("reset",))
    async with simulated(faults) as (sim, http):
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            async with http.get(path_of(route, sim)) as response:
                await response.read()
        # aiohttp's client retries an idempotent request once after a disconnect.
        served = sum(sim.requests.values())
        assert faults.injected == {"reset": served}
        assert served in (1, 2)


@pytest.mark.parametrize("route", ROUTES)
async def test_bad_json_is_a_json_typed_answer_that_does_not_parse(route: str) -> None:
    faults = Faults(1.0, ("bad-json",))
    async with simulated(faults) as (sim, http), http.get(path_of(route, sim)) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        text = await response.text()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert "<html>" in text
    assert faults.injected == {"bad-json": 1}


@pytest.mark.parametrize("route", ROUTES)
async def test_wrong_types_mistypes_about_a_third_of_the_runs(route: str) -> None:
    faults = Faults(1.0, ("wrong-types",))
    async with simulated() as (sim, clean_http):
        path = path_of(route, sim)
        clean = runs_of(route, await (await clean_http.get(path)).json())
    async with simulated(faults) as (_, http), http.get(path) as response:
        assert response.status == 200
        spoilt = runs_of(route, await response.json())
    assert len(spoilt) == len(clean)
    changed = [(c, s) for c, s in zip(clean, spoilt, strict=True) if c != s]
    assert len(changed) == max(1, round(len(clean) / 3))
    for right, wrong in changed:
        fields = [name for name in right if right[name] != wrong[name]]
        assert len(fields) == 1 and fields[0] in MISTYPED[route.split("-")[0]]
        # A type of its own: GitHub's ids are numbers, so a number is no wrong type for them.
        value = wrong[fields[0]]
        assert type(value) is not type(right[fields[0]]), (fields[0], right[fields[0]], value)
        assert type(value) in (int, list)
    assert faults.injected == {"wrong-types": 1}


async def test_wrong_types_is_transient() -> None:
    faults = Faults(0.5, ("wrong-types",), seed=3)
    async with simulated(faults) as (_, http):
        pages = [await (await http.get(RAKER_LIST)).json() for _ in range(12)]
    typed = [all(isinstance(run["id"], str) for run in page["runs"]) for page in pages]
    assert True in typed and False in typed


async def test_wrong_types_leaves_errors_and_empty_pages_alone() -> None:
    faults = Faults(1.0, ("wrong-types",))
    async with simulated(faults) as (_, http):
        async with http.get("/v2/actor-runs?offset=1000") as response:
            assert (await response.json())["data"]["items"] == []
        async with http.get("/v2/actor-runs/nosuchrun") as response:
            assert response.status == 404
    assert not faults.injected


# --- rates, replay and scope ---------------------------------------------------------------


async def test_rate_zero_never_injects() -> None:
    faults = Faults(0.0, seed=9)
    async with simulated(faults) as (sim, http):
        for offset in range(25):
            for path in (f"{APIFY_LIST}&offset={offset}", RAKER_LIST):
                async with http.get(path) as response:
                    assert response.status == 200
                    await response.json()
    assert not faults.injected
    assert sum(sim.requests.values()) == 50


def url_sequence() -> list[str]:
    """Distinct and repeated URLs of both upstreams."""
    urls = [f"/v2/actor-runs?limit=5&offset={n % 12}" for n in range(30)]
    urls += [RAKER_LIST, "/api/projects/proj/action-runs?limit=7"] * 8
    return urls


async def served_outcomes(seed: int, kinds: tuple[str, ...] = FAULT_KINDS) -> tuple[list, Counter]:
    faults = Faults(0.3, kinds, seed=seed, stall_seconds=0.01, retry_after=0)
    async with simulated(faults) as (_, http):
        seen = [await outcome(http, url) for url in url_sequence()]
    return seen, faults.injected


async def test_the_same_seed_replays_the_same_outcomes() -> None:
    first, first_injected = await served_outcomes(seed=42)
    second, second_injected = await served_outcomes(seed=42)
    assert first == second
    assert first_injected == second_injected
    assert 10 < sum(first_injected.values()) < 40  # about 30% of ~66 answers
    other, other_injected = await served_outcomes(seed=43)
    assert other != first
    assert other_injected != first_injected


async def test_replay_does_not_depend_on_how_requests_interleave() -> None:
    # Without "reset": the client's automatic retry would add draws whose order varies.
    kinds = tuple(kind for kind in FAULT_KINDS if kind != "reset")
    urls = url_sequence()

    async def concurrently(order: list[str]) -> Counter:
        faults = Faults(0.3, kinds, seed=7, stall_seconds=0.01, retry_after=0)
        async with simulated(faults) as (_, http):
            seen = await asyncio.gather(*(outcome(http, url) for url in order))
        return Counter(zip(order, seen, strict=True))

    assert await concurrently(urls) == await concurrently(urls[::-1])


def test_decisions_depend_on_seed_key_and_asking() -> None:
    def draws(seed: int, keys: list[str]) -> list[str | None]:
        faults = Faults(0.3, seed=seed)
        return [faults.decide(key) for key in keys]

    keys = [f"GET /v2/actor-runs?offset={n % 20}" for n in range(400)]
    assert draws(1, keys) == draws(1, keys)
    assert draws(1, keys) != draws(2, keys)
    decided = draws(1, keys)
    assert 0.2 < sum(d is not None for d in decided) / len(decided) < 0.4
    assert set(decided) == {None, *FAULT_KINDS}  # every kind gets picked


async def test_a_repeated_request_draws_again_so_retries_pass() -> None:
    faults = Faults(0.5, ("503",), seed=1)
    async with simulated(faults) as (_, http):
        statuses = [(await http.get(RAKER_LIST)).status for _ in range(16)]
    assert set(statuses) == {200, 503}
    assert faults.injected["503"] == statuses.count(503)


async def test_query_order_does_not_make_a_different_request() -> None:
    async def statuses(urls: list[str]) -> list[int]:
        async with simulated(Faults(0.5, ("500",), seed=4)) as (_, http):
            return [(await http.get(url)).status for url in urls]

    same = ["/v2/actor-runs?limit=5&offset=2"] * 10
    swapped = ["/v2/actor-runs?limit=5&offset=2", "/v2/actor-runs?offset=2&limit=5"] * 5
    assert await statuses(same) == await statuses(swapped)


async def test_controls_unauthorized_and_unrouted_requests_are_never_faulted() -> None:
    faults = Faults(1.0, seed=2)
    async with simulated(faults) as (sim, http):
        for path in ("/_simulator/apify/runs?count=2", "/_simulator/rakerone/proj/runs?count=2"):
            async with http.post(path) as response:
                assert response.status == 201, await response.text()
        async with http.post("/_simulator/apify/finish") as response:
            assert response.status == 200
        async with http.get(APIFY_LIST, headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401
        async with http.get("/v2/no-such-endpoint") as response:
            assert response.status == 404
        assert not faults.injected
        assert sim.requests["control.add_runs"] == 1
        assert sim.requests["control.rakerone.add_runs"] == 1


async def test_faulty_requests_are_counted_like_others() -> None:
    faults = Faults(1.0, ("500", "bad-json"), seed=2)
    async with simulated(faults) as (sim, http):
        for _ in range(6):
            await (await http.get(RAKER_LIST)).read()
    assert sim.requests["rakerone.list_action_runs"] == 6
    assert sum(faults.injected.values()) == 6


@pytest.mark.parametrize("route", ROUTES)
async def test_latency_delays_upstream_answers(route: str) -> None:
    async with simulated(latency=0.15) as (sim, http):
        started = time.monotonic()
        async with http.get(path_of(route, sim)) as response:
            assert response.status == 200
        assert time.monotonic() - started >= 0.15


async def test_latency_spares_the_controls() -> None:
    # A minute's latency that the control does not wait for (a delayed answer would time out).
    async with simulated(latency=60.0) as (_, http):
        answer = asyncio.wait_for(http.post("/_simulator/apify/runs"), 30)
        async with await answer as response:
            assert response.status == 201


@pytest.mark.parametrize(
    "arguments",
    [{"kinds": ("429", "teapot")}, {"rate": 1.5}, {"rate": -0.1}, {"stall_seconds": -1}],
)
def test_bad_settings_are_refused(arguments: dict) -> None:
    with pytest.raises(ValueError):
        Faults(**arguments)


async def test_serve_passes_faults_and_latency_through() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = asyncio.create_task(
        serve(
            demo_worlds(6, 1),
            host="127.0.0.1",
            port=port,
            token="t",
            fault_rate=1.0,
            fault_kinds=("502",),
            fault_seed=5,
            latency=0.1,
        )
    )
    headers = {"Authorization": "Bearer t"}
    try:
        async with aiohttp.ClientSession(headers=headers) as session:
            for _ in range(200):
                try:
                    started = time.monotonic()
                    async with session.get(f"http://127.0.0.1:{port}/v2/actor-runs") as response:
                        assert response.status == 502
                        assert (await response.json())["error"]["type"] == "bad-gateway"
                        assert time.monotonic() - started >= 0.1
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.02)
            else:
                pytest.fail("the simulator never answered")
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server


async def test_serve_refuses_unknown_fault_kinds() -> None:
    with pytest.raises(ValueError, match="teapot"):
        await serve(demo_worlds(1, 1), host="127.0.0.1", port=0, token="t", fault_kinds=["teapot"])
