"""Simulated upstreams served by aiohttp on loopback; used by tests, demos and benchmarks.

Each upstream's simulation lives in its package (worker/sources/<kind>/simulator.py, or a
subpackage): an in-memory world and its endpoints (contract.World, contract.Endpoints). The
Simulator serves the worlds it is given, optionally slowed down (latency) and with seeded,
replayable faults (faults.Faults), and answers each request in the dialect of the upstream whose
path it is. `serve` runs one until cancelled (`runsync simulate` gives it every registered
upstream's demo world). Nothing here names an upstream.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler

from worker.simulator.contract import Endpoints, Mistyping, Route, World, dialect
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

__all__ = [
    "FAULT_KINDS",
    "Endpoints",
    "Faults",
    "Mistyping",
    "Route",
    "Simulator",
    "World",
    "serve",
]

# The demo controls' paths: never slowed down or faulted, so tests can always shape the world.
_CONTROLS = "/_simulator/"

W = TypeVar("W", bound=World)


class Simulator:
    """Serves upstreams' worlds over HTTP, like their real APIs (reads only), one world an
    upstream."""

    def __init__(
        self,
        *worlds: World,
        token: str = "sim-token",
        faults: Faults | None = None,
        latency: float = 0.0,
    ) -> None:
        if latency < 0:
            raise ValueError(f"latency must not be negative, got {latency!r}")
        self.worlds = worlds
        self.token = token
        self.faults = faults
        self.latency = latency
        self._stopping = asyncio.Event()
        self.requests: Counter[str] = Counter()
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[self._guard])
        self.app.on_response_prepare.append(self._stamp)
        # The served upstreams' endpoints, by their class (which is their dialect).
        self._served: dict[type[Endpoints], Endpoints] = {}
        for world in worlds:
            endpoints = world.endpoints()
            if type(endpoints) in self._served:
                raise ValueError(f"two worlds of one upstream ({type(world).__name__})")
            self._served[type(endpoints)] = endpoints
            for method, path, handler, name in endpoints.routes():
                self.app.router.add_route(method, path, handler, name=name)
        self.app.router.add_get(
            "/_simulator/requests", self._request_counts, name="control.requests"
        )

    def world(self, kind: type[W]) -> W:
        """The served world of that type."""
        for world in self.worlds:
            if isinstance(world, kind):
                return world
        raise KeyError(f"no {kind.__name__} is served")

    async def _request_counts(self, _request: web.Request) -> web.Response:
        """The requests answered so far, by endpoint, and those an upstream's rate limit refused
        before its API saw them (Endpoints.throttled): what a benchmark in another process reads."""
        refused = sum(endpoints.rate_limited for endpoints in self._served.values())
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

    def _endpoints(self, path: str) -> Endpoints | None:
        """The served upstream whose dialect answers for `path`, if it is served."""
        kind = dialect(path)
        return None if kind is None else self._served.get(kind)

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        """An upstream's answers (all but the controls') carry what its answers carry, errors
        included."""
        if request.path.startswith(_CONTROLS):
            return
        endpoints = self._endpoints(request.path)
        if endpoints is not None:
            endpoints.stamp(response)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Counts routed requests, applies an upstream's rate limit, adds latency, enforces the
        token and injects faults. A budget an upstream's endpoints keep (an hourly one) is spent
        by them, after the token is checked: a 401 is not the token's request."""
        upstream = not request.path.startswith(_CONTROLS)
        unrouted = request.match_info.http_exception
        if unrouted is None:
            self.requests[request.match_info.route.name or ""] += 1
        endpoints = self._endpoints(request.path)
        if upstream and unrouted is None and endpoints is not None:
            refused = endpoints.throttled(request)  # the limiter answers before the API does
            if refused is not None:
                return refused
        if upstream and self.latency > 0:
            await self._pause(self.latency)
        if unrouted is not None:
            kind = dialect(request.path)
            if kind is None:
                raise unrouted
            return kind.unrouted(unrouted)
        if endpoints is None:
            # Only the simulator's own route, when the default upstream is not served.
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                raise web.HTTPUnauthorized()
            return await handler(request)
        if not endpoints.authorized(request, self.token):
            return endpoints.unauthorized(request)
        if upstream and self.faults is not None:
            return await self._faulty(request, handler, self.faults, endpoints)
        return await handler(request)

    async def _faulty(
        self, request: web.Request, handler: Handler, faults: Faults, endpoints: Endpoints
    ) -> web.StreamResponse:
        """The answer to an upstream request, spoilt as the faults decide."""
        kind, draw = faults.draw(request_key(request))
        if kind is None:
            return await handler(request)
        if kind in STATUS_FAULTS:  # a rate limiter or proxy answers before the API does
            faults.injected[kind] += 1
            response: web.StreamResponse = endpoints.failure(STATUS_FAULTS[kind])
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
            spoilt = wrong_types(body, draw, endpoints)
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
    worlds: Iterable[Callable[[], World]],
    *,
    host: str,
    port: int,
    token: str,
    fault_rate: float = 0.0,
    fault_kinds: Iterable[str] = FAULT_KINDS,
    fault_seed: int = 0,
    latency: float = 0.0,
) -> None:
    """Runs a Simulator of the worlds `worlds` make until cancelled (`runsync simulate` gives it
    every registered upstream's demo: worker.sources.demo_worlds)."""
    faults = Faults(fault_rate, fault_kinds, seed=fault_seed)  # built anyway: rejects bad kinds
    # Generating in a thread keeps the loop responsive.
    made = [await asyncio.to_thread(make) for make in worlds]
    simulator = Simulator(
        *made, token=token, faults=faults if fault_rate > 0 else None, latency=latency
    )
    await simulator.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
