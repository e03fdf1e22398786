"""The daemon's HTTP endpoint: /healthz (the process is alive), /readyz (it can do its work),
/metrics (Prometheus text), POST /webhooks/{kind}/{source} (deliveries, for webhooks.Receiver) and
the status page at / (statuspage.StatusPage), unless the page is off or has a listen address of
its own (PageServer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from worker.model import Outcome
from worker.statuspage import BadRange, StatusPage, Unavailable, chart_range

if TYPE_CHECKING:
    from worker.metrics import Metrics
    from worker.webhooks import Receiver

Check = Callable[[], Awaitable[dict[str, Any] | None]]  # None when ready, else why not: {"reason"}

MAX_BODY_BYTES = 1024 * 1024  # a webhook delivery carries one run object: a few kB


# The page runs only its own script and style, talks only to its own origin, and is never framed.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ListenError(Exception):
    """An address the daemon was told to listen on cannot be had (in use, not this host's)."""


class _Server:
    """An aiohttp application listening on host:port (port 0: a free one, read back after start).
    `key`: the config key that gave the address, for the message when it cannot be had."""

    def __init__(self, listen: str, app: web.Application, key: str) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.key = key
        self._runner = web.AppRunner(app, access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError as error:
            await self._runner.cleanup()
            reason = error.strerror or str(error)
            raise ListenError(
                f"cannot listen on {self.host}:{self.port} ({self.key}): {reason}"
            ) from None
        self.port = self._runner.addresses[0][1]  # the one picked, when listen said port 0

    async def stop(self) -> None:
        await self._runner.cleanup()


class HealthServer(_Server):
    def __init__(
        self,
        listen: str,
        readiness: Check,
        *,
        metrics: Metrics | None = None,
        webhooks: Receiver | None = None,
        page: StatusPage | None = None,
    ) -> None:
        self._readiness = readiness
        self._metrics = metrics
        self.webhooks = webhooks  # None: deliveries are refused with 503 (starting, stopping)
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._scrape)
        app.router.add_post("/webhooks/{kind}/{source}", self._webhook)
        if page is not None:
            add_page(app, page)
        super().__init__(listen, app, "[http] listen")

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


class PageServer(_Server):
    """The status page alone, on a listen address of its own ([http] status_page_listen)."""

    def __init__(self, listen: str, page: StatusPage) -> None:
        app = web.Application()
        add_page(app, page)
        super().__init__(listen, app, "[http] status_page_listen")


def add_page(app: web.Application, page: StatusPage) -> None:
    """The status page's routes: / (the page), /status/sources (its sources' section, which an
    open page fetches again), /status/charts?days= (the charts' data) and /status/assets/."""

    async def whole(request: web.Request) -> web.Response:
        try:
            days = chart_range(request.query.get("days"))
        except BadRange as error:
            return _text(str(error), status=400)
        return _html(await page.page(days))

    async def sources(_request: web.Request) -> web.Response:
        return _html(await page.sources_fragment())

    async def charts(request: web.Request) -> web.Response:
        try:
            data = await page.charts(chart_range(request.query.get("days")))
        except BadRange as error:
            return web.json_response({"reason": str(error)}, status=400, headers=_PAGE_HEADERS)
        except Unavailable as error:
            return web.json_response({"reason": str(error)}, status=503, headers=_PAGE_HEADERS)
        return web.json_response(data, headers={**_PAGE_HEADERS, "Cache-Control": "no-store"})

    async def asset(request: web.Request) -> web.Response:
        found = page.assets.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        # The URL carries the content's digest (?v=): a changed asset has a new URL.
        cache = "public, max-age=31536000, immutable" if request.query.get("v") else "no-cache"
        return web.Response(
            body=found.body,
            headers={**_PAGE_HEADERS, "Content-Type": found.content_type, "Cache-Control": cache},
        )

    async def no_icon(_request: web.Request) -> web.Response:
        return web.Response(status=204)  # browsers ask; the page has none

    app.router.add_get("/", whole)
    app.router.add_get("/favicon.ico", no_icon)
    app.router.add_get("/status/sources", sources)
    app.router.add_get("/status/charts", charts)
    app.router.add_get("/status/assets/{name}", asset)


def _html(body: str) -> web.Response:
    return web.Response(
        text=body,
        content_type="text/html",
        charset="utf-8",
        headers={**_PAGE_HEADERS, "Cache-Control": "no-store"},
    )


def _text(body: str, *, status: int) -> web.Response:
    return web.Response(text=body, status=status, headers=_PAGE_HEADERS)


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
