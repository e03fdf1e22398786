"""Request pacing within an upstream's published limits, learned from its answers, adaptive
under 429, and shared by every source of a process that uses the same token.

An upstream publishes limits per resource (one object's endpoint, such as one user's run list) and
per token (over all resources). Each limit gets a `Pace`: request starts spaced to a rate a little
under the limit, halved on a 429 and climbing back while answers come. A 429 also lowers the
ceiling the pace climbs back to, so it settles below where it was refused instead of hitting the
limit again every few seconds; after a quiet spell the ceiling rises again, so a limit that went up
upstream is found without a config change. An upstream that states its limit in a header (Apify's
X-RateLimit-Limit) is taken at its word.

No I/O here beyond sleeping: http.py calls `Limits.acquire` before each request and reports what
the answer said.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger("runsync.ratelimit")

HEADROOM = 0.9  # pace at this share of a limit: jitter on the way must not push a second over it
FLOOR = 0.2  # requests per second: no pace drops below this, however many 429s
LOWEST_SHARE = 0.1  # nor below this share of its limit: past it, the retries' backoff slows down
QUIET = 30.0  # seconds without a 429 before a lowered ceiling climbs back up a step
MAX_RESOURCES = 1024  # the resources whose pace is remembered; the least recently used go first
WINDOW = 2.0  # seconds over which a pace counts the requests it started
MAX_STARTS = 4096  # the starts remembered: enough for any pace a process keeps to


@dataclass(frozen=True)
class Published:
    """An upstream's request limits, as it publishes them.

    `resource` names the resource a request path is for; None for a path that is a resource of its
    own that one process never comes near the limit of (each single run on Apify), which only the
    per-token limit then paces.
    """

    per_resource: float | None = None  # requests per second to one resource
    per_token: float | None = None  # requests per second over all resources of one token
    header: str | None = None  # the answer header that states the per-resource limit in force
    resource: Callable[[str], str | None] = field(default=lambda path: None)
    # The upstream publishes no limit: `per_token` is runsync's conservative guess, which a
    # source's max_requests_per_second replaces (see sources.limits).
    guessed: bool = False


class Pace:
    """Request starts spaced to an adaptive rate under `limit` requests per second."""

    def __init__(
        self,
        limit: float,
        name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.clock = clock
        self.limit = limit  # as published or stated by the upstream
        self.ceiling = limit * HEADROOM  # where the rate climbs back to; lowered by a 429
        self.rate = self.ceiling
        self.refusals = 0  # 429s answered to requests paced here
        self._next = -math.inf  # the earliest start of the next request
        self._last_refusal = -math.inf
        self._slowed_at = -math.inf  # when the last 429 halved the rate
        self._starts: deque[float] = deque(maxlen=MAX_STARTS)  # the last WINDOW's request starts

    @property
    def floor(self) -> float:
        return max(FLOOR, self.limit * LOWEST_SHARE)

    def reserve(self) -> float:
        """Takes the next start; returns the seconds to wait for it."""
        now = self.clock()
        start = max(now, self._next)
        self._next = start + 1.0 / self.rate
        self._starts.append(start)
        return start - now

    def observed(self) -> float:
        """Requests per second started under this pace over the last WINDOW seconds."""
        now = self.clock()
        while self._starts and self._starts[0] < now - WINDOW:
            self._starts.popleft()
        return sum(start <= now for start in self._starts) / WINDOW

    def learned(self, limit: float) -> None:
        """The upstream stated the limit in force (a header): it replaces the published one."""
        if limit == self.limit or limit <= 0 or not math.isfinite(limit):
            return
        log.info("rate limit stated by the upstream", pace=self.name, limit=limit, was=self.limit)
        self.limit = limit
        self.ceiling = min(self.ceiling, limit * HEADROOM) if self.refusals else limit * HEADROOM
        self.rate = min(self.rate, self.ceiling)

    def refused(self) -> None:
        """A 429: halve the rate; and when the requests came at about the pace's rate, settle
        below it from now on. A 429 while they came at well under half of it is not about the
        pace (another client spent the budget, or the upstream refuses at random): the rate
        climbs back to where it was. The requests in flight when the limit was crossed are
        refused together; they count as one."""
        now = self.clock()
        self.refusals += 1
        self._last_refusal = now
        if now - self._slowed_at < max(1.0, 2.0 / self.rate):
            return
        self._slowed_at = now
        observed = self.observed()
        if observed >= self.rate / 2:
            self.ceiling = max(self.floor, min(self.ceiling, self.rate * HEADROOM))
        self.rate = max(self.floor, self.rate / 2)
        self._next = max(self._next, now + 1.0 / self.rate)
        log.warning(
            "rate limited; slowing down",
            pace=self.name,
            requests_per_second=round(self.rate, 2),
            settling_at=round(self.ceiling, 2),
        )

    def answered(self) -> None:
        """An answer that was not a 429: climb back towards the ceiling, and after a quiet spell
        raise the ceiling towards the limit."""
        top = self.limit * HEADROOM
        if self.ceiling < top and self.clock() - self._last_refusal > QUIET:
            self.ceiling = min(top, self.ceiling + top * 0.1)
            self._last_refusal = self.clock()  # the next step comes after another quiet spell
        if self.rate < self.ceiling:
            self.rate = min(self.ceiling, self.rate + self.ceiling * 0.05)


class Limits:
    """The paces of one token of one upstream: one per resource, one over all of them, and an
    optional cap of the source's own. Shared by every source of the process with that token."""

    def __init__(
        self, published: Published, name: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.published = published
        self.name = name
        self.clock = clock
        self.token = (
            Pace(published.per_token, f"{name} token", clock=clock) if published.per_token else None
        )
        self._resources: OrderedDict[str, Pace] = OrderedDict()
        self._stated: float | None = None  # the per-resource limit the upstream last stated

    def pace(self, path: str) -> Pace | None:
        """The pace of the resource `path` is for, None when only the token's applies."""
        if not self.published.per_resource:
            return None
        resource = self.published.resource(path)
        if resource is None:
            return None
        pace = self._resources.get(resource)
        if pace is None:
            limit = self._stated or self.published.per_resource
            pace = self._resources[resource] = Pace(limit, resource, clock=self.clock)
            while len(self._resources) > MAX_RESOURCES:
                self._resources.popitem(last=False)
        self._resources.move_to_end(resource)
        return pace

    async def acquire(self, path: str) -> None:
        """Waits until a request to `path` may start."""
        wait = 0.0
        for pace in (self.token, self.pace(path)):
            if pace is not None:
                wait = max(wait, pace.reserve())
        if wait > 0:
            await asyncio.sleep(wait)

    def answered(self, path: str, status: int, stated: str | None) -> None:
        """What an answer to `path` said about the limits: its status, and the limit header."""
        pace = self.pace(path)
        if stated is not None and pace is not None:
            try:
                limit = float(stated)
            except ValueError:
                limit = None
            if limit is not None and limit > 0 and math.isfinite(limit):
                self._stated = limit
                pace.learned(limit)
        if status == 429:
            (pace or self.token or _UNPACED).refused()
            return
        for each in (self.token, pace):
            if each is not None:
                each.answered()

    @property
    def refusals(self) -> int:
        paces = [self.token, *self._resources.values()]
        return sum(p.refusals for p in paces if p is not None)


class _Unpaced:
    def refused(self) -> None:
        pass


_UNPACED = _Unpaced()


class Registry:
    """The limits of each token in use in this process: sources on one token share them."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._limits: dict[tuple[str, str, bytes], Limits] = {}

    def limits(self, upstream: str, base_url: str, token: str, published: Published) -> Limits:
        # The token itself is kept nowhere: its digest tells two sources' tokens apart.
        key = (upstream, base_url.rstrip("/"), hashlib.sha256(token.encode()).digest())
        found = self._limits.get(key)
        if found is None:
            found = self._limits[key] = Limits(published, upstream, clock=self.clock)
        return found
