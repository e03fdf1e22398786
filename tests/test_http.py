"""The upstream client against real HTTP servers on loopback: one that answers from a script, and
the simulated GitHub API (ETags and free 304s, its hourly budget and its rate-limit answers)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from aiohttp import web

from worker import http, ratelimit
from worker.simulator import Simulator
from worker.sources.github.simulator import GitHubWorld

TOKEN = "tok-SECRET-9f8e"
FAST = http.Backoff(retries=4, base=0.01, cap=0.05, budget=5.0)


class Scripted:
    """Serves the queued answers in order; remembers what it was asked."""

    def __init__(self) -> None:
        self.answers: list = []
        self.seen: list[web.Request] = []
        self.runner: web.AppRunner | None = None
        self.base = ""
        self.released = asyncio.Event()  # set when the test ends: stalled answers go then

    async def stalled(self, request: web.Request) -> web.StreamResponse:
        """An answer that never comes while the test runs, however long the client waits."""
        await self.released.wait()
        return web.json_response({})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        answer = self.answers.pop(0) if self.answers else web.json_response({"ok": True})
        return await answer(request) if callable(answer) else answer

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        return self.base


@pytest.fixture
async def upstream():
    server = Scripted()
    base = await server.start()
    client = http.Client(base, TOKEN, name="test", rate=1000, backoff=FAST, timeout=0.5)
    yield server, client
    await client.close()
    server.released.set()
    await server.runner.cleanup()


async def test_token_only_in_the_authorization_header(upstream):
    server, client = upstream
    answer = await client.get_json("/v2/actor-runs", {"limit": "10"})
    assert answer.body == {"ok": True} and answer.status == 200
    (request,) = server.seen
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in str(request.rel_url)


@pytest.mark.parametrize("status", [408, 425, 429, 500, 501, 502, 503, 504, 520, 599])
async def test_transient_statuses_are_retried(upstream, status):
    server, client = upstream
    server.answers = [
        web.json_response({"error": {"message": "busy"}}, status=status) for _ in "ab"
    ]
    answer = await client.get_json("/x")
    assert answer.body == {"ok": True} and len(server.seen) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
async def test_other_client_errors_fail_at_once(upstream, status):
    server, client = upstream
    server.answers = [web.json_response({"error": {"message": "no"}}, status=status)]
    with pytest.raises(http.UpstreamError) as failure:
        await client.get_json("/x")
    assert failure.value.status == status and len(server.seen) == 1


async def test_the_retry_budget_bounds_the_waits_in_total_not_each(upstream):
    """Each wait (0.2 s, from Retry-After) is within the budget; the third would take the total
    past it, so the request fails after three attempts rather than after all five."""
    server, client = upstream
    client.backoff = http.Backoff(retries=4, base=0.01, cap=0.05, budget=0.5)
    server.answers = [web.Response(status=503, headers={"Retry-After": "0.2"}) for _ in range(5)]
    with pytest.raises(http.UpstreamError, match="retry budget"):
        await client.get_json("/x")
    assert len(server.seen) == 3


async def test_retry_after_seconds_and_date_are_honoured(upstream):
    server, client = upstream
    # HTTP dates have whole seconds: two seconds ahead is at least one second ahead.
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    server.answers = [
        web.Response(status=429, headers={"Retry-After": "0.3"}),
        web.Response(status=503, headers={"Retry-After": later}),
    ]
    started = time.monotonic()
    await client.get_json("/x")
    # 0.3 s, then until the given date: jittered backoff alone would take milliseconds.
    assert time.monotonic() - started >= 1.0


async def test_broken_json_truncation_and_stalls_are_retried(upstream):
    server, client = upstream

    async def truncated(request):
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b'{"data": {"it')
        request.transport.close()  # the connection drops mid-body
        return response

    server.answers = [web.Response(text="<html>oops</html>"), truncated, server.stalled]
    assert (await client.get_json("/x")).body == {"ok": True}
    assert len(server.seen) == 4


async def test_client_errors_fail_at_once_with_the_upstreams_words(upstream):
    server, client = upstream
    server.answers = [
        web.json_response(
            {"error": {"type": "token-not-valid", "message": "Authentication token is not valid."}},
            status=401,
        )
    ]
    with pytest.raises(http.UpstreamError) as caught:
        await client.get_json("/v2/actor-runs")
    assert caught.value.status == 401
    assert str(caught.value) == (
        "test: GET /v2/actor-runs answered HTTP 401: Authentication token is not valid."
    )
    assert len(server.seen) == 1


async def test_githubs_words_are_read_from_its_top_level_message(upstream):
    server, client = upstream
    body = {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}
    server.answers = [web.json_response(body, status=404)]
    with pytest.raises(http.UpstreamError) as caught:
        await client.get_json("/repos/octo/gone/actions/runs")
    assert caught.value.status == 404
    assert (
        str(caught.value) == "test: GET /repos/octo/gone/actions/runs answered HTTP 404: Not Found"
    )


async def test_an_upstreams_own_headers_go_over_the_defaults(upstream):
    server, _ = upstream
    own = {"accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    async with http.Client(server.base, TOKEN, name="gh", backoff=FAST, headers=own) as client:
        await client.get_json("/x")
    (request,) = server.seen
    assert request.headers.getall("Accept") == ["application/vnd.github+json"]
    assert request.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert request.headers["User-Agent"].startswith("runsync/")
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    # The token has one place: a header that would carry it elsewhere, or replace it, is refused.
    with pytest.raises(ValueError, match="Authorization"):
        http.Client(server.base, TOKEN, name="gh", headers={"authorization": f"token {TOKEN}"})


async def test_retries_run_out_with_one_clear_error(upstream):
    server, client = upstream
    server.answers = [web.Response(status=503) for _ in range(10)]
    with pytest.raises(http.UpstreamError, match=r"failed after 5 attempts: HTTP 503"):
        await client.get_json("/x")
    assert len(server.seen) == 5


async def test_a_response_over_the_cap_is_refused(upstream):
    server, client = upstream
    client.max_response_bytes = 1000
    server.answers = [web.json_response({"items": ["x" * 2000]})]
    with pytest.raises(http.UpstreamError, match="cap"):
        await client.get_json("/x")


async def test_the_rate_cap_spaces_requests():
    limiter = http.RateLimiter(rate=50)
    started = time.monotonic()
    for _ in range(11):
        await limiter.wait()
    assert time.monotonic() - started >= 10 / 50 * 0.9


async def test_a_retry_after_beyond_the_budget_fails_at_once(upstream):
    server, client = upstream
    server.answers = [web.Response(status=429, headers={"Retry-After": "3600"})]
    # At once: waiting would take an hour, so even a loaded machine answers within the minute.
    with pytest.raises(http.UpstreamError, match="would exceed the 5 s retry budget"):
        await asyncio.wait_for(client.get_json("/x"), 60)
    assert len(server.seen) == 1


async def test_a_last_modified_alone_is_asked_about_too_and_an_unasked_304_is_retried(upstream):
    server, _ = upstream
    stamp = "Sat, 01 Mar 2025 12:00:00 GMT"
    server.answers = [
        web.json_response({"n": 1}, headers={"Last-Modified": stamp}),
        web.Response(status=304),
        web.Response(status=304),  # asked without a condition: not an answer to take
    ]
    async with http.Client(server.base, TOKEN, name="t", backoff=FAST, conditional=True) as client:
        assert (await client.get_json("/x")).status == 200
        again = await client.get_json("/x")
        assert again.status == 304 and again.body == {"n": 1}
        assert (await client.get_json("/y")).body == {"ok": True}
    first, second, third, fourth = server.seen
    assert "If-Modified-Since" not in first.headers and "If-None-Match" not in second.headers
    assert second.headers["If-Modified-Since"] == stamp
    assert "If-Modified-Since" not in third.headers and fourth.path == "/y"


# --- GitHub: conditional requests ------------------------------------------------------------

GITHUB_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
SIM_TOKEN = "sim-token"
RUNS = "/repos/octo/app/actions/runs"
ANCHOR = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class WorldClock:
    """The simulated GitHub's clock (epoch milliseconds): real time, shifted to start at ANCHOR
    and moved on by the test. Being real time, the waits the client sleeps pass upstream too."""

    def __init__(self) -> None:
        self.shift = int(ANCHOR.timestamp() * 1000) - time.time_ns() // 1_000_000

    def __call__(self) -> int:
        return time.time_ns() // 1_000_000 + self.shift

    def advance(self, seconds: float) -> None:
        self.shift += int(seconds * 1000)


@pytest.fixture
async def github():
    clock = WorldClock()
    world = GitHubWorld({"octo/app": 40}, seed=7, anchor=ANCHOR, clock=clock)
    sim = Simulator(world, token=SIM_TOKEN)
    await sim.start()
    yield world, sim, clock
    await sim.stop()


# As GitHub's package declares them: 900 requests a minute (its secondary limit per endpoint), and
# the hourly budget its answers state.
GITHUB = ratelimit.Published(per_token=15.0, budget=ratelimit.Budget())


def github_limits(clock: WorldClock) -> ratelimit.Limits:
    return ratelimit.Limits(GITHUB, "github", wall=lambda: clock() / 1000)


def github_client(sim: Simulator, **options) -> http.Client:
    options = {"name": "github", "headers": GITHUB_HEADERS, "backoff": FAST, **options}
    return http.Client(sim.base_url, SIM_TOKEN, **options)


async def test_a_repeated_get_is_answered_304_with_the_same_body_for_no_budget(github):
    world, sim, _ = github
    params = {"per_page": "10", "exclude_pull_requests": "true"}
    async with github_client(sim, conditional=True) as client:
        first = await client.get_json(RUNS, params)
        used = world.budget.used
        again = await client.get_json(RUNS, params)
        assert (first.status, again.status) == (200, 304)
        assert again.body == first.body and again.observed_at > first.observed_at
        assert world.budget.used == used  # the 304 was free
        # Other params are another request; a change upstream is a 200 with the new body.
        assert (await client.get_json(RUNS, {"per_page": "5"})).status == 200
        world.add_run("octo/app")
        changed = await client.get_json(RUNS, params)
        assert changed.status == 200 and changed.body != first.body
        assert (await client.get_json(RUNS, params)).body == changed.body
    assert world.budget.used == used + 2
    # Off by default: the same GETs spend the budget every time.
    async with github_client(sim) as plain:
        for _ in range(2):
            assert (await plain.get_json(RUNS, params)).status == 200
    assert world.budget.used == used + 4


async def test_what_is_remembered_is_bounded_in_bytes_least_recently_used_out(github):
    """Five GETs of one run, told apart by a parameter the API ignores, so each body is the same
    size: four fit the bound and the fifth pushes out the one least recently asked for."""
    world, sim, _ = github
    run = f"{RUNS}/{world.runs('octo/app')[0]['id']}"
    async with github_client(sim, conditional=True) as probe:
        await probe.get_json(run)
        size = probe.remembered.size
    async with github_client(sim, conditional=True, remembered_bytes=4 * size) as client:
        for n in range(5):
            await client.get_json(run, {"n": str(n)})
        assert len(client.remembered) == 4 and client.remembered.size == 4 * size
        assert (await client.get_json(run, {"n": "1"})).status == 304  # kept, and now the newest
        used = world.budget.used
        assert (await client.get_json(run, {"n": "0"})).status == 200  # pushed out: asked afresh
        assert (await client.get_json(run, {"n": "2"})).status == 200  # pushed out by n=0
        assert (await client.get_json(run, {"n": "1"})).status == 304
        assert world.budget.used == used + 2
        # A body over a quarter of the bound is not kept at all.
        for _ in range(2):
            assert (await client.get_json(RUNS, {"per_page": "30"})).status == 200
        assert client.remembered.size <= 4 * size


# --- GitHub: its limits -----------------------------------------------------------------------


def sent(sim: Simulator) -> int:
    return sum(sim.requests.values())


async def test_a_spent_budget_whose_reset_is_near_is_waited_for(github):
    world, sim, clock = github
    world.budget.exhaust()
    clock.advance(3600 - 2)  # the budget refills in a second or two
    async with github_client(sim, limits=github_limits(clock)) as client:
        answer = await client.get_json(RUNS)
    assert answer.status == 200 and world.budget.used == 1
    assert sent(sim) == 2  # refused once, then answered after the reset


@pytest.mark.parametrize("limited_status", [403, 429])
async def test_a_spent_budget_whose_reset_is_far_fails_at_once_and_sends_nothing_more(
    github, limited_status
):
    world, sim, clock = github
    world.limited_status = limited_status
    world.budget.exhaust()  # at 12:00:00: the budget refills at 13:00:00
    registry = ratelimit.Registry(wall=lambda: clock() / 1000)
    clients = [
        github_client(sim, limits=registry.limits("github", sim.base_url, SIM_TOKEN, GITHUB))
        for _ in range(2)
    ]
    # A source, then another on the same token, then the first again: only the first request
    # is sent, and every one fails at once (waiting would take an hour), saying until when.
    for client, path in zip([*clients, clients[0]], [RUNS, f"{RUNS}/1", RUNS], strict=True):
        with pytest.raises(http.UpstreamError) as failure:
            await asyncio.wait_for(client.get_json(path), 60)
        assert str(failure.value) == (
            f"github: GET {path}: the hourly request budget (core, 5000 requests) is spent until "
            "2025-03-01 13:00:00 UTC, past the 5 s retry budget"
        )
    assert sent(sim) == 1
    for client in clients:
        await client.close()


async def test_an_answer_that_leaves_no_budget_stops_the_next_request_before_it_is_sent(github):
    world, sim, clock = github
    world.budget.limit = 2
    async with github_client(sim, limits=github_limits(clock)) as client:
        for _ in range(2):
            await client.get_json(RUNS, {"per_page": "1"})
        with pytest.raises(http.UpstreamError, match="is spent until 2025-03-01 13:00:00 UTC"):
            await client.get_json(RUNS, {"per_page": "2"})
    assert sent(sim) == 2


@pytest.mark.parametrize("status", [403, 429])
async def test_the_secondary_limit_is_retried_after_retry_after_and_slows_the_pace(github, status):
    world, sim, clock = github
    world.trip_secondary_limit(1, status=status)
    limits = github_limits(clock)
    async with github_client(sim, limits=limits) as client:
        started = time.monotonic()
        assert (await client.get_json(RUNS)).status == 200
    assert time.monotonic() - started >= 0.9  # Retry-After: 1; jittered backoff takes ms
    assert sent(sim) == 2 and world.budget.used == 1
    assert limits.token.refusals == 1 and limits.token.rate < limits.token.ceiling


async def test_a_secondary_limit_without_retry_after_waits_a_minute_at_least(upstream):
    """GitHub asks for a minute's wait at least: more than this client's 5 s retry budget, so the
    request fails at once instead of trying again in milliseconds."""
    server, _ = upstream
    words = "You have exceeded a secondary rate limit. Please wait a few minutes."
    server.answers = [web.json_response({"message": words}, status=403)]
    limits = ratelimit.Limits(GITHUB, "github")
    async with http.Client(server.base, TOKEN, name="gh", backoff=FAST, limits=limits) as client:
        with pytest.raises(http.UpstreamError) as failure:
            await asyncio.wait_for(client.get_json("/x"), 60)
    assert str(failure.value) == (
        f"gh: GET /x failed after 1 attempts: HTTP 403: {words}; waiting 60 s more would exceed "
        "the 5 s retry budget"
    )
    assert failure.value.status is None and len(server.seen) == 1


async def test_a_permission_403_and_a_404_are_not_retried(upstream, github):
    """GitHub's 403 that is about no limit (a token without Actions: read; SSO) fails at once in
    GitHub's words, and its budget is left as it was; so does a 404."""
    server, _ = upstream
    words = "Resource not accessible by personal access token"
    headers = {
        "x-ratelimit-limit": "5000",
        "x-ratelimit-remaining": "4990",
        "x-ratelimit-reset": str(int(time.time()) + 600),
        "x-ratelimit-resource": "core",
        "X-Accepted-GitHub-Permissions": "actions=read",
    }
    server.answers = [web.json_response({"message": words}, status=403, headers=headers)]
    limits = ratelimit.Limits(GITHUB, "github")
    async with http.Client(server.base, TOKEN, name="gh", backoff=FAST, limits=limits) as client:
        with pytest.raises(http.UpstreamError) as failure:
            await client.get_json(RUNS)
    assert failure.value.status == 403 and len(server.seen) == 1
    assert str(failure.value) == f"gh: GET {RUNS} answered HTTP 403: {words}"
    assert limits.spent() is None and limits.refusals == 0
    _, sim, clock = github
    async with github_client(sim, limits=github_limits(clock)) as client:
        with pytest.raises(http.UpstreamError) as failure:
            await client.get_json("/repos/octo/nope/actions/runs")
    assert failure.value.status == 404 and sent(sim) == 1
