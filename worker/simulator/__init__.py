"""Simulated upstreams (Apify API v2, RakerOne, GitHub Actions) served by aiohttp on loopback.

Used by tests, demos and benchmarks. Each upstream is an in-memory world (apify.ApifyWorld,
rakerone.RakerWorld, github.GitHubWorld) plus its endpoints; the Simulator serves the worlds it is given, optionally
slowed down (latency) and with seeded, replayable faults (faults.Faults). Apify's answers also go
through the world's per-resource rate limit (apify.RateLimiter) and carry X-RateLimit-Limit;
GitHub's spend the world's hourly budget (github.RateBudget) and carry its x-ratelimit-* headers.
github_hooks builds the `workflow_run` webhook deliveries GitHub would send.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from contextlib import suppress

from aiohttp import web
from aiohttp.typedefs import Handler

from worker.simulator.faults import (
    FAULT_KINDS,
    STATUS_FAULTS,
    Faults,
    bad_json,
    body_of,
    replaced,
    request_key,
    reset,
    truncated,
    wrong_types,
)
from worker.sources.apify.simulator import (
    ALL_STATUSES,
    KNOWN_ORIGINS,
    OPEN_STATUSES,
    TERMINAL_STATUSES,
    UNKNOWN_ORIGIN,
    USERNAME,
    ApifyEndpoints,
    ApifyWorld,
    RateLimiter,
)
from worker.sources.github.simulator import (
    GITHUB_CONCLUSIONS,
    GITHUB_OPEN,
    GITHUB_STATUSES,
    Delivery,
    GitHubEndpoints,
    GitHubWorld,
    RateBudget,
    created_bounds,
    signature_256,
    workflow_run_delivery,
)
from worker.sources.rakerone.simulator import (
    RAKER_OPEN,
    RAKER_QUEUED,
    RAKER_TERMINAL,
    RakerEndpoints,
    RakerWorld,
)

__all__ = [
    "ALL_STATUSES",
    "FAULT_KINDS",
    "GITHUB_CONCLUSIONS",
    "GITHUB_OPEN",
    "GITHUB_STATUSES",
    "KNOWN_ORIGINS",
    "OPEN_STATUSES",
    "RAKER_OPEN",
    "RAKER_QUEUED",
    "RAKER_TERMINAL",
    "TERMINAL_STATUSES",
    "UNKNOWN_ORIGIN",
    "USERNAME",
    "ApifyWorld",
    "Delivery",
    "Faults",
    "GitHubWorld",
    "RakerWorld",
    "RateBudget",
    "RateLimiter",
    "Simulator",
    "created_bounds",
    "serve",
    "signature_256",
    "workflow_run_delivery",
]


_Endpoints = ApifyEndpoints | RakerEndpoints | GitHubEndpoints


def _dialect(path: str) -> type[_Endpoints]:
    """The upstream whose error format answers for `path` (Apify's, unless RakerOne's or
    GitHub's own)."""
    if path.startswith(GitHubEndpoints.paths):
        return GitHubEndpoints
    return RakerEndpoints if path.startswith(RakerEndpoints.paths) else ApifyEndpoints


DEMO_REPOSITORY = "octo-org/octo-app"  # `runsync simulate`'s GitHub repository

# The demo controls' paths: never slowed down or faulted, so tests can always shape the world.
_CONTROLS = "/_simulator/"


class Simulator:
    """Serves an ApifyWorld, a RakerWorld and/or a GitHubWorld over HTTP, like their real APIs
    (reads only)."""

    def __init__(
        self,
        apify: ApifyWorld | None = None,
        *,
        rakerone: RakerWorld | None = None,
        github: GitHubWorld | None = None,
        token: str = "sim-token",
        faults: Faults | None = None,
        latency: float = 0.0,
    ) -> None:
        if latency < 0:
            raise ValueError(f"latency must not be negative, got {latency!r}")
        self.apify = apify
        self.rakerone = rakerone
        self.github = github
        self.token = token
        self.faults = faults
        self.latency = latency
        self._stopping = asyncio.Event()
        self.requests: Counter[str] = Counter()
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[self._guard])
        self.app.on_response_prepare.append(self._stamp)
        self._apify = ApifyEndpoints(apify) if apify is not None else None
        self._rakerone = RakerEndpoints(rakerone) if rakerone is not None else None
        self._github = GitHubEndpoints(github) if github is not None else None
        for upstream in (self._apify, self._rakerone, self._github):
            for method, path, handler, name in upstream.routes() if upstream else ():
                self.app.router.add_route(method, path, handler, name=name)
        self.app.router.add_get(
            "/_simulator/requests", self._request_counts, name="control.requests"
        )

    async def _request_counts(self, _request: web.Request) -> web.Response:
        """The requests answered so far, by endpoint, and the 429s of Apify's rate limit: what a
        benchmark in another process reads."""
        refused = self._apify.world.rate_limiter.refused_total if self._apify else 0
        return web.json_response({"requests": dict(self.requests), "rate_limited": refused})

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listens on host:port (port 0 picks a free one) and returns the base URL."""
        self._stopping = asyncio.Event()
        self._runner = web.AppRunner(self.app, access_log=None)  # logging would skew benchmarks
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_port = self._runner.addresses[0][1]
        self.base_url = f"http://{f'[{host}]' if ':' in host else host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        self._stopping.set()  # cuts stalls and latency short, so stopping never waits for them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _endpoints(self, path: str) -> _Endpoints | None:
        """The served upstream whose dialect answers for `path`, if it is served."""
        dialect = _dialect(path)
        if dialect is GitHubEndpoints:
            return self._github
        return self._rakerone if dialect is RakerEndpoints else self._apify

    def _authorized(self, request: web.Request, endpoints: _Endpoints) -> bool:
        """Whether the request carries the token the way its upstream takes one."""
        if isinstance(endpoints, GitHubEndpoints):
            return endpoints.authorized(request, self.token)
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        """Apify's answers (all but the controls') carry X-RateLimit-Limit, GitHub's its
        x-ratelimit-* headers, errors included."""
        path = request.path
        if path.startswith(_CONTROLS):
            return
        dialect = _dialect(path)
        if self._apify is not None and dialect is ApifyEndpoints:
            self._apify.stamp(response)
        if self._github is not None and dialect is GitHubEndpoints:
            self._github.stamp(response)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Counts routed requests, applies Apify's rate limit, adds latency, enforces the bearer
        token and injects faults. GitHub's budget is spent by its endpoints, after the token is
        checked: a 401 is not the token's request."""
        upstream = not request.path.startswith(_CONTROLS)
        unrouted = request.match_info.http_exception
        if unrouted is None:
            self.requests[request.match_info.route.name or ""] += 1
        endpoints = self._endpoints(request.path)
        if upstream and unrouted is None and isinstance(endpoints, ApifyEndpoints):
            refused = endpoints.throttled(request)  # the limiter answers before the API does
            if refused is not None:
                return refused
        if upstream and self.latency > 0:
            await self._pause(self.latency)
        if unrouted is not None:
            return _dialect(request.path).unrouted(unrouted)
        assert endpoints is not None  # a route exists only for an upstream that is served
        if not self._authorized(request, endpoints):
            return endpoints.unauthorized(request)
        if upstream and self.faults is not None:
            return await self._faulty(request, handler, self.faults)
        return await handler(request)

    async def _faulty(
        self, request: web.Request, handler: Handler, faults: Faults
    ) -> web.StreamResponse:
        """The answer to an upstream request, spoilt as the faults decide."""
        kind, draw = faults.draw(request_key(request))
        if kind is None:
            return await handler(request)
        if kind in STATUS_FAULTS:  # a rate limiter or proxy answers before the API does
            faults.injected[kind] += 1
            response: web.StreamResponse = _dialect(request.path).failure(STATUS_FAULTS[kind])
            if kind == "429-retry-after":
                response.headers["Retry-After"] = f"{faults.retry_after:g}"
            return response
        if kind == "reset":
            faults.injected[kind] += 1
            return reset(request)
        if kind == "stall":
            faults.injected[kind] += 1
            await self._pause(faults.stall_seconds)
            return await handler(request)
        response = await handler(request)
        body = body_of(response)
        if body is None:
            return response
        if kind == "wrong-types":
            spoilt = wrong_types(body, draw)
            if spoilt is None:  # an error or an empty page has no items to mistype
                return response
            faults.injected[kind] += 1
            return replaced(response, spoilt)
        faults.injected[kind] += 1
        if kind == "bad-json":
            return replaced(response, bad_json(body))
        return await truncated(request, response, body)

    async def _pause(self, seconds: float) -> None:
        """Sleeps `seconds`, or less if the simulator stops meanwhile."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


async def serve(
    *,
    host: str,
    port: int,
    runs: int,
    seed: int,
    token: str,
    fault_rate: float = 0.0,
    fault_kinds: Iterable[str] = FAULT_KINDS,
    fault_seed: int = 0,
    latency: float = 0.0,
) -> None:
    """Runs a Simulator of every upstream over freshly generated worlds until cancelled."""
    faults = Faults(fault_rate, fault_kinds, seed=fault_seed)  # built anyway: rejects bad kinds
    # Generating in a thread keeps the loop responsive.
    apify = await asyncio.to_thread(ApifyWorld, runs=runs, seed=seed)
    projects = {"proj_alpha": runs // 2, "proj_beta": runs // 2}
    rakerone = await asyncio.to_thread(RakerWorld, projects=projects, seed=seed)
    github = await asyncio.to_thread(GitHubWorld, {DEMO_REPOSITORY: runs // 2}, seed=seed)
    simulator = Simulator(
        apify,
        rakerone=rakerone,
        github=github,
        token=token,
        faults=faults if fault_rate > 0 else None,
        latency=latency,
    )
    await simulator.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
