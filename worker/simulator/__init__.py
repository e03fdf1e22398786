"""Simulated upstreams (Apify API v2, RakerOne) served by aiohttp on loopback.

Used by tests, demos and benchmarks. Each upstream is an in-memory world (apify.ApifyWorld,
rakerone.RakerWorld) plus its endpoints; the Simulator serves the worlds it is given.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiohttp import web

from worker.simulator.apify import (
    ALL_STATUSES,
    OPEN_STATUSES,
    TERMINAL_STATUSES,
    USERNAME,
    ApifyEndpoints,
    ApifyWorld,
)
from worker.simulator.rakerone import RAKER_OPEN, RAKER_TERMINAL, RakerEndpoints, RakerWorld

__all__ = [
    "ALL_STATUSES",
    "OPEN_STATUSES",
    "RAKER_OPEN",
    "RAKER_TERMINAL",
    "TERMINAL_STATUSES",
    "USERNAME",
    "ApifyWorld",
    "RakerWorld",
    "Simulator",
    "serve",
]


def _dialect(path: str) -> type[ApifyEndpoints] | type[RakerEndpoints]:
    """The upstream whose error format answers for `path` (Apify's, unless RakerOne's own)."""
    return RakerEndpoints if path.startswith(RakerEndpoints.paths) else ApifyEndpoints


class Simulator:
    """Serves an ApifyWorld and/or a RakerWorld over HTTP, like their real APIs (reads only)."""

    def __init__(
        self,
        apify: ApifyWorld | None = None,
        *,
        rakerone: RakerWorld | None = None,
        token: str = "sim-token",
    ) -> None:
        self.apify = apify
        self.rakerone = rakerone
        self.token = token
        self.requests: Counter[str] = Counter()
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[self._guard])
        endpoints = [
            *([ApifyEndpoints(apify)] if apify is not None else []),
            *([RakerEndpoints(rakerone)] if rakerone is not None else []),
        ]
        for upstream in endpoints:
            for method, path, handler, name in upstream.routes():
                self.app.router.add_route(method, path, handler, name=name)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listens on host:port (port 0 picks a free one) and returns the base URL."""
        self._runner = web.AppRunner(self.app, access_log=None)  # logging would skew benchmarks
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_port = self._runner.addresses[0][1]
        self.base_url = f"http://{f'[{host}]' if ':' in host else host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Counts routed requests and enforces the bearer token, in each upstream's error format."""
        unrouted = request.match_info.http_exception
        if unrouted is not None:
            return _dialect(request.path).unrouted(unrouted)
        self.requests[request.match_info.route.name or ""] += 1
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _dialect(request.path).unauthorized()
        return await handler(request)


async def serve(*, host: str, port: int, runs: int, seed: int, token: str) -> None:
    """Runs a Simulator of both upstreams over freshly generated worlds until cancelled."""
    # Generating in a thread keeps the loop responsive.
    apify = await asyncio.to_thread(ApifyWorld, runs=runs, seed=seed)
    projects = {"proj_alpha": runs // 2, "proj_beta": runs // 2}
    rakerone = await asyncio.to_thread(RakerWorld, projects=projects, seed=seed)
    simulator = Simulator(apify, rakerone=rakerone, token=token)
    await simulator.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
