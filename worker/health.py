"""The daemon's HTTP endpoint: /healthz (the process is alive), /readyz (it can do its work),
/metrics (Prometheus text) and POST /webhooks/{kind}/{source} (deliveries, for webhooks.Receiver).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from worker.model import Outcome

if TYPE_CHECKING:
    from worker.metrics import Metrics
    from worker.webhooks import Receiver

Check = Callable[[], Awaitable[dict[str, Any] | None]]  # None when ready, else why not: {"reason"}

MAX_BODY_BYTES = 1024 * 1024  # a webhook delivery carries one run object: a few kB


class HealthServer:
    def __init__(
        self,
        listen: str,
        readiness: Check,
        *,
        metrics: Metrics | None = None,
        webhooks: Receiver | None = None,
    ) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self._readiness = readiness
        self._metrics = metrics
        self.webhooks = webhooks  # None: deliveries are refused with 503 (starting, stopping)
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._scrape)
        app.router.add_post("/webhooks/{kind}/{source}", self._webhook)
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]  # the one picked, when listen said port 0

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        try:
            problem = await asyncio.wait_for(self._readiness(), timeout=5)
        except TimeoutError:
            problem = {"reason": "readiness check timed out"}
        if problem:
            return web.json_response({"status": "unavailable", **problem}, status=503)
        return web.json_response({"status": "ok"})

    async def _scrape(self, _request: web.Request) -> web.Response:
        if self._metrics is None:
            raise web.HTTPNotFound()
        body, content_type = self._metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _webhook(self, request: web.Request) -> web.Response:
        if self.webhooks is None:  # the sender tries again later
            reason = "not taking deliveries now (starting or stopping)"
            return web.json_response({"outcome": "unavailable", "reason": reason}, status=503)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body = None
        answer = await self.webhooks.receive(
            request.match_info["kind"], request.match_info["source"], request.headers, body
        )
        return web.json_response(answer.body, status=answer.status)


@dataclass
class _Stream:
    last_success: datetime | None = None
    failed: bool = False  # its newest pass that ran to an end failed
    error: str | None = None


class PassOutcomes:
    """Which sources have been failing for longer than a threshold, for /readyz.

    A stream is failing when its newest pass failed and its last success (or, with none, the
    daemon's start) is older than the threshold. Skipped and interrupted passes tell nothing.
    """

    def __init__(
        self,
        threshold: timedelta,
        started_at: datetime | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.threshold = threshold
        self.clock = clock  # tests pass their own
        self.started_at = started_at or clock()
        self._streams: dict[tuple[str, str], _Stream] = {}

    def record(self, source: str, stream: str, outcome: Outcome, error: str | None = None) -> None:
        state = self._streams.setdefault((source, stream), _Stream())
        if outcome == Outcome.SUCCEEDED:
            state.last_success, state.failed, state.error = self.clock(), False, None
        elif outcome == Outcome.FAILED:
            state.failed, state.error = True, error

    def streams(self) -> list[tuple[str, str, datetime | None]]:
        """Each stream a pass has been recorded for (source, stream), and while its newest pass
        that ran to an end failed, since when it counts as failing (its last success, or the
        start); None while that pass succeeded. For the daemon's metrics."""
        return [
            (source, stream, (state.last_success or self.started_at) if state.failed else None)
            for (source, stream), state in sorted(self._streams.items())
        ]

    def failing(self, now: datetime | None = None) -> list[dict[str, Any]]:
        now = now or self.clock()
        found = []
        for (source, stream), state in sorted(self._streams.items()):
            since = state.last_success or self.started_at
            if state.failed and now - since > self.threshold:
                found.append(
                    {
                        "source": source,
                        "stream": stream,
                        "since": since.isoformat(),
                        "last_success_at": state.last_success and state.last_success.isoformat(),
                        "error": state.error,
                    }
                )
        return found
