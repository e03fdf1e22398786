"""What one simulated upstream gives the shared Simulator: its world, and its endpoints.

A world (`World`) is an upstream's in-memory state, in the upstream's package
(worker/sources/<kind>/simulator.py); it names its `Endpoints`, which the Simulator routes and
asks whatever the upstream does its own way: how a request proves it has the token, the error
bodies (a 401, a path nothing routes, an injected failure), the headers every answer carries, a
rate limit that answers before the API does, and where the runs are in an answer (for the
wrong-types fault). Nothing here names an upstream.

An upstream's error format (its dialect) answers for the paths under its `paths`, and the one
upstream whose endpoints say `default` answers for every other path. Subclassing `Endpoints`
registers the dialect, so a path of an upstream that is not served still gets that upstream's
404.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Protocol

from aiohttp import web

__all__ = ["Endpoints", "Handler", "Mistyping", "Route", "World", "dialect", "dialects"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Route = tuple[str, str, Handler, str]  # (method, path, handler, route name)
# How the wrong-types fault spoils one field: (its value, the draw's generator) -> a wrong type.
Mistyping = Callable[[object, random.Random], object]

# Every upstream's endpoints known in this process, in the order they were defined.
_DIALECTS: list[type[Endpoints]] = []


class Endpoints(Protocol):
    """One upstream's HTTP endpoints over its world, as the Simulator serves them.

    An upstream subclasses it (which registers its dialect); the members with a body are what an
    upstream without that feature does."""

    # The path prefixes answered in this upstream's dialect (its controls' included).
    paths: ClassVar[tuple[str, ...]] = ()
    # This upstream's dialect answers for the paths no upstream claims (one upstream at most).
    default: ClassVar[bool] = False
    # The run fields the wrong-types fault may spoil, each with how, in the order a draw picks.
    mistypable: ClassVar[Mapping[str, Mistyping]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "_is_protocol", False):
            _register(cls)

    def routes(self) -> list[Route]:
        """(method, path, handler, route name) of every endpoint and demo control."""
        ...

    def authorized(self, request: web.Request, token: str) -> bool:
        """Whether the request carries the token the way this upstream takes one."""
        return request.headers.get("Authorization") == f"Bearer {token}"

    def unauthorized(self, request: web.Request) -> web.StreamResponse:
        """The 401 for a request without the token (or with a wrong one)."""
        ...

    @staticmethod
    def unrouted(exc: web.HTTPException) -> web.StreamResponse:
        """The answer to a path no route takes (404) or a method it does not (405); asked of
        the class, since the upstream need not be served."""
        ...

    @staticmethod
    def failure(status: int) -> web.StreamResponse:
        """An injected failure (429, 500, 502 or 503: worker.simulator.faults)."""
        ...

    def stamp(self, response: web.StreamResponse) -> None:
        """Adds what every answer of this upstream carries (rate-limit headers); controls'
        answers are not stamped."""
        return None

    def throttled(self, request: web.Request) -> web.StreamResponse | None:
        """A rate limit in front of the API: its refusal of a routed request (before latency,
        the token and faults), or None to go on."""
        return None

    @property
    def rate_limited(self) -> int:
        """How many requests `throttled` refused so far."""
        return 0

    @staticmethod
    def items(answer: object) -> list[dict[str, Any]]:
        """The run objects of one of its answers (parsed JSON): what wrong-types may spoil."""
        ...


class World(Protocol):
    """An upstream's simulated state, which the Simulator serves through its endpoints."""

    def endpoints(self) -> Endpoints: ...


def _register(kind: type[Endpoints]) -> None:
    for known in _DIALECTS:
        if known.__qualname__ == kind.__qualname__ and known.__module__ == kind.__module__:
            _DIALECTS.remove(known)  # the same class defined again (a module reloaded)
            break
    for known in _DIALECTS:
        clash = [p for p in kind.paths for q in known.paths if p.startswith(q) or q.startswith(p)]
        if clash:
            raise ValueError(f"{kind.__qualname__}'s paths {clash} overlap {known.__qualname__}'s")
        if kind.default and known.default:
            raise ValueError(f"{kind.__qualname__} and {known.__qualname__} are both the default")
    _DIALECTS.append(kind)


def dialects() -> tuple[type[Endpoints], ...]:
    """Every upstream's endpoints known in this process."""
    return tuple(_DIALECTS)


def dialect(path: str) -> type[Endpoints] | None:
    """The upstream whose dialect answers for `path`: the one it is under, else the default
    (None when no upstream is, nor a default one known)."""
    for kind in _DIALECTS:
        if path.startswith(kind.paths):
            return kind
    for kind in _DIALECTS:
        if kind.default:
            return kind
    return None
