"""Request pacing within an upstream's published limits, learned from its answers, adaptive
under 429, and shared by every source of a process that uses the same token.

An upstream publishes limits per resource (one object's endpoint, such as one user's run list) and
per token (over all resources). Each limit gets a `Pace`: request starts spaced to a rate a little
under the limit, halved on a 429 and climbing back while answers come. A 429 also lowers the
ceiling the pace climbs back to, so it settles below where it was refused instead of hitting the
limit again every few seconds; after a quiet spell the ceiling rises again, so a limit that went up
upstream is found without a config change. An upstream that states its limit in a header (Apify's
X-RateLimit-Limit) is taken at its word.

An upstream may also give each token a budget of requests an hour and state what is left of it in
every answer (GitHub). An `Allowance` follows it and paces requests so that it lasts until it
refills (the rule is in its docstring); once it is spent, requests wait for the reset or fail at
once with `Spent`, and none is sent.

No I/O here beyond sleeping: http.py calls `Limits.acquire` before each request and reports what
the answer said.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

import structlog

log = structlog.get_logger("runsync.ratelimit")

HEADROOM = 0.9  # pace at this share of a limit: jitter on the way must not push a second over it
FLOOR = 0.2  # requests per second: no pace drops below this, however many 429s
LOWEST_SHARE = 0.1  # nor below this share of its limit: past it, the retries' backoff slows down
QUIET = 30.0  # seconds without a 429 before a lowered ceiling climbs back up a step
MAX_RESOURCES = 1024  # the resources whose pace is remembered; the least recently used go first
WINDOW = 2.0  # seconds over which a pace counts the requests it started
MAX_STARTS = 4096  # the starts remembered: enough for any pace a process keeps to
# A budget an hour: while more than this share of it is left, nothing paces by it ...
UNPACED_SHARE = 0.5
# ... and this share of it is left to the token's other users (a CLI, CI jobs, other tools).
RESERVE_SHARE = 0.1
# Seconds after a stated reset before the budget counts as refilled: the clocks differ.
RESET_MARGIN = 1.0


@dataclass(frozen=True)
class Budget:
    """A budget of requests an hour per token that the upstream states in every answer (GitHub's
    primary rate limit): `{prefix}limit`, `-remaining`, `-reset` (epoch seconds) and `-resource`,
    which names the budget the request spent."""

    # The budget runsync's requests spend; figures about another (GitHub's search) are left out.
    resource: str = "core"
    prefix: str = "x-ratelimit-"


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
    # A budget an hour stated in the answers' headers. Such an upstream may refuse with 403 as well
    # as 429, so a 403 that says it is about a limit is taken as one (see Limits.answered).
    budget: Budget | None = None


class Refused(StrEnum):
    """Why an answer refused a request for the upstream's limits."""

    PACE = "pace"  # a 429: too fast for a limit per second
    SECONDARY = "secondary"  # GitHub's secondary limit: wait Retry-After, else a minute or more
    BUDGET = "budget"  # the token's budget is spent until it refills


class Spent(Exception):
    """The token's budget is spent, or down to the reserve runsync leaves, until its reset: no
    request goes before it. `wait` is the seconds until one may. The message is safe to log."""

    def __init__(self, message: str, wait: float) -> None:
        super().__init__(message)
        self.wait = wait


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


class Allowance:
    """What is left of a token's budget an hour (as the upstream's answers state it), and the pace
    that makes it last until the reset.

    The rule: while more than half of the budget is left, it paces nothing. Below that, what is
    left above a reserve of a tenth is spread evenly over the seconds to the reset, one request
    every (seconds to the reset) / (left - reserve): kept to, that spacing stays the same as both
    shrink, and the budget comes down to the reserve as it refills. At the reserve (or at 0) it is
    spent until the reset. A 304 costs no budget, so it gives its place back. The figures are the
    last answer's; requests in flight meanwhile are what the reserve also covers.
    """

    def __init__(self, budget: Budget, name: str, *, wall: Callable[[], float] = time.time) -> None:
        self.budget = budget
        self.name = name
        self.wall = wall  # epoch seconds: the reset is stated in them
        self.limit: int | None = None
        self.remaining: int | None = None
        self.reset: float | None = None
        self._next = -math.inf  # the earliest start of the next request
        self._spacing = 0.0  # the spacing the last request was given

    @property
    def reserve(self) -> int:
        return math.floor((self.limit or 0) * RESERVE_SHARE)

    def stated(self, headers: Mapping[str, str]) -> None:
        """An answer's figures. Within one hour (one reset) what is left only falls, so the lowest
        figure stands: answers that overtook each other on the way cannot raise it."""
        prefix = self.budget.prefix
        resource = headers.get(prefix + "resource")
        if resource is not None and resource != self.budget.resource:
            return
        try:
            limit = int(headers[prefix + "limit"])
            remaining = int(headers[prefix + "remaining"])
            reset = float(headers[prefix + "reset"])
        except (KeyError, ValueError):
            return
        if limit <= 0 or remaining < 0 or not math.isfinite(reset):
            return
        if self.reset is not None and reset < self.reset:
            return  # an answer from an hour that is over
        if self.reset is not None and reset == self.reset and self.remaining is not None:
            remaining = min(remaining, self.remaining)
        self.limit, self.remaining, self.reset = limit, remaining, reset

    def refund(self) -> None:
        """A 304: the request cost nothing, so the next one may take its place."""
        self._next = max(self._next - self._spacing, self.wall())

    def spent(self) -> Spent | None:
        """The budget is spent, or down to the reserve, until the reset: what to raise."""
        return self._spent(self._current())

    def take(self, patience: float = math.inf) -> float:
        """Takes the next start; returns the seconds to wait for it. Raises Spent when the budget
        is spent, or when the wait would be longer than `patience`."""
        now = self._current()
        spent = self._spent(now)
        if spent is not None:
            raise spent
        if self.remaining is None or self.limit is None or self.reset is None:
            return 0.0  # nothing stated yet, or the hour is over: nothing to pace by
        if self.remaining > self.limit * UNPACED_SHARE:
            self._spacing = 0.0
            return 0.0
        start = max(now, self._next)
        spacing = max(self.reset - start, 0.0) / (self.remaining - self.reserve)
        if not self._spacing:
            log.info(
                "request budget below half; pacing it to last until the reset",
                pace=self.name,
                remaining=self.remaining,
                limit=self.limit,
                reset=_utc(self.reset),
                seconds_apart=round(spacing, 2),
            )
        self._spacing = spacing
        if start - now > patience:
            raise Spent(
                f"{self._named()} is down to {self.remaining} until {_utc(self.reset)}, paced to "
                f"last: the next request may start at {_utc(start)}",
                start - now,
            )
        self._next = start + self._spacing
        return start - now

    def _spent(self, now: float) -> Spent | None:
        if self.remaining is None or self.reset is None or self.remaining > self.reserve:
            return None
        if self.remaining == 0:
            state = "is spent"
        else:
            state = (
                f"is down to {self.remaining}, the {self.reserve} runsync leaves to the token's "
                "other users,"
            )
        return Spent(
            f"{self._named()} {state} until {_utc(self.reset)}", self.reset + RESET_MARGIN - now
        )

    def _named(self) -> str:
        return f"the hourly request budget ({self.budget.resource}, {self.limit} requests)"

    def _current(self) -> float:
        """Now; once past the reset, the figures are forgotten until an answer states new ones."""
        now = self.wall()
        if self.reset is not None and now >= self.reset + RESET_MARGIN:
            self.remaining = self.reset = None
            self._next, self._spacing = -math.inf, 0.0
        return now


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Limits:
    """The paces of one token of one upstream: one per resource, one over all of them, and an
    optional cap of the source's own. Shared by every source of the process with that token."""

    def __init__(
        self,
        published: Published,
        name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.published = published
        self.name = name
        self.clock = clock
        self.token = (
            Pace(published.per_token, f"{name} token", clock=clock) if published.per_token else None
        )
        self.allowance = (
            Allowance(published.budget, name, wall=wall) if published.budget is not None else None
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

    async def acquire(self, path: str, patience: float = math.inf) -> None:
        """Waits until a request to `path` may start. Raises Spent, at once, when the token's
        budget is spent or pacing it would take longer than `patience` seconds."""
        wait = self.allowance.take(patience) if self.allowance is not None else 0.0
        for pace in (self.token, self.pace(path)):
            if pace is not None:
                wait = max(wait, pace.reserve())
        if wait > 0:
            await asyncio.sleep(wait)

    def answered(
        self,
        path: str,
        status: int,
        stated: str | None,
        *,
        headers: Mapping[str, str] | None = None,
        message: str = "",
    ) -> Refused | None:
        """What an answer to `path` said about the limits: its status, the limit header, the
        budget's headers and the upstream's words on an error. Returns why it refused the
        request, if it did for a limit."""
        pace = self.pace(path)
        if stated is not None and pace is not None:
            try:
                limit = float(stated)
            except ValueError:
                limit = None
            if limit is not None and limit > 0 and math.isfinite(limit):
                self._stated = limit
                pace.learned(limit)
        refused = self._refused(status, headers or {}, message)
        if refused is Refused.SECONDARY:
            (self.token or pace or _UNPACED).refused()  # GitHub's are mostly per user, not path
        elif refused is Refused.PACE:
            (pace or self.token or _UNPACED).refused()
        if refused is not None:
            return refused  # a spent budget is about the hour, not the pace
        for each in (self.token, pace):
            if each is not None:
                each.answered()
        if status == 304 and self.allowance is not None:
            self.allowance.refund()
        return None

    def _refused(self, status: int, headers: Mapping[str, str], message: str) -> Refused | None:
        """An upstream with a budget (GitHub) refuses with 403 or 429: the budget is spent when
        the answer says none is left, and the secondary limit says so in words or with
        Retry-After. Any other 403 is no refusal: permission, SSO."""
        allowance = self.allowance
        if allowance is not None and status != 401:  # a 401's figures are the anonymous budget's
            allowance.stated(headers)
            if status in (403, 429):
                none_left = headers.get(allowance.budget.prefix + "remaining") == "0"
                if none_left and allowance.spent() is not None:
                    return Refused.BUDGET
                if "secondary rate limit" in message.lower() or "Retry-After" in headers:
                    return Refused.SECONDARY
        return Refused.PACE if status == 429 else None

    def spent(self) -> Spent | None:
        """The token's budget is spent until its reset: what to raise. None while it is not."""
        return self.allowance.spent() if self.allowance is not None else None

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

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.wall = wall
        self._limits: dict[tuple[str, str, bytes], Limits] = {}

    def limits(self, upstream: str, base_url: str, token: str, published: Published) -> Limits:
        # The token itself is kept nowhere: its digest tells two sources' tokens apart.
        key = (upstream, base_url.rstrip("/"), hashlib.sha256(token.encode()).digest())
        found = self._limits.get(key)
        if found is None:
            found = self._limits[key] = Limits(
                published, upstream, clock=self.clock, wall=self.wall
            )
        return found
