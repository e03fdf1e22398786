"""Seeded, replayable fault injection for the simulated upstreams.

Faults decides which answers go wrong; the Simulator serves them. A decision depends only on the
seed, the request (method, path, sorted query) and how many times that request was seen before, so
concurrent requests can interleave in any order and the k-th asking of one URL still gets the same
answer in every run with that seed, while a retry (the k+1-th) draws again.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from aiohttp import web

if TYPE_CHECKING:  # named in annotations only
    from worker.simulator.contract import Endpoints

FAULT_KINDS = (
    "429",
    "429-retry-after",
    "500",
    "502",
    "503",
    "stall",
    "truncate",
    "reset",
    "bad-json",
    "wrong-types",
)
# Kinds answered with an upstream error body instead of the handler's answer.
STATUS_FAULTS = {"429": 429, "429-retry-after": 429, "500": 500, "502": 502, "503": 503}
# What a misconfigured proxy in front of the API might append to a cut-off JSON body.
_HTML_TAIL = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


class Faults:
    """Which answers of the upstream routes go wrong, replayably."""

    def __init__(
        self,
        rate: float = 0.0,
        kinds: Iterable[str] = FAULT_KINDS,
        *,
        seed: int = 0,
        stall_seconds: float = 5.0,
        retry_after: float = 1.0,
    ) -> None:
        self.kinds = tuple(kinds)
        unknown = [kind for kind in self.kinds if kind not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown} (known: {', '.join(FAULT_KINDS)})")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate must be within [0, 1], got {rate!r}")
        if stall_seconds < 0 or retry_after < 0:
            raise ValueError("stall_seconds and retry_after must not be negative")
        self.rate = rate
        self.seed = seed
        self.stall_seconds = stall_seconds
        self.retry_after = retry_after
        self.injected: Counter[str] = Counter()
        self._seen: Counter[str] = Counter()

    def decide(self, key: str) -> str | None:
        """The fault for this request (key: method, path and sorted query), or None."""
        return self.draw(key)[0]

    def draw(self, key: str) -> tuple[str | None, int]:
        """The fault for this request and the draw's seed, which shapes the corruption served."""
        asked_before = self._seen[key]
        self._seen[key] += 1
        # A cryptographic hash, not random.Random, so each draw is independent of all others.
        digest = hashlib.blake2b(
            f"{self.seed}\0{key}\0{asked_before}".encode(), digest_size=16
        ).digest()
        uniform = int.from_bytes(digest[:8], "big") / 2**64
        pick = int.from_bytes(digest[8:], "big")
        if not self.kinds or uniform >= self.rate:
            return None, pick
        return self.kinds[pick % len(self.kinds)], pick


def request_key(request: web.Request) -> str:
    """The identity of a request for drawing faults: the same URL asked again is the same key."""
    return f"{request.method} {request.path}?{urlencode(sorted(request.query.items()))}"


def bad_json(body: bytes) -> bytes:
    """The body cut short with an HTML fragment after it: never valid JSON."""
    return body[: len(body) // 2] + _HTML_TAIL


def wrong_types(body: bytes, draw: int, endpoints: Endpoints) -> bytes | None:
    """The answer with about a third of its runs mistyped, or None if it has none to spoil. The
    upstream's endpoints say where its runs are and which of their fields may be spoilt, how."""
    try:
        page = json.loads(body)
    except ValueError:
        return None
    items = endpoints.items(page)
    if not items:
        return None
    mistypable = endpoints.mistypable
    rng = random.Random(draw)
    for index in rng.sample(range(len(items)), max(1, round(len(items) / 3))):
        item = items[index]
        fields = [name for name in mistypable if name in item]
        if fields:
            name = rng.choice(fields)
            item[name] = mistypable[name](item[name], rng)
    return json.dumps(page, separators=(",", ":")).encode()


# Mistypings (contract.Mistyping) an upstream's endpoints pick from for their fields.


def mistyped_id(value: object, rng: random.Random) -> object:
    """A string id as a number; a number id as a list, since another number would be another
    run's id, not a wrong type."""
    if isinstance(value, str):
        return rng.randrange(1, 2**31)
    return [value]


def epoch_ms(value: object, rng: random.Random) -> int:
    """A timestamp as epoch milliseconds, the classic wrong type for one."""
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            pass
    return rng.randrange(1_500_000_000_000, 1_800_000_000_000)


def listed(value: object, _rng: random.Random) -> object:
    """The value in a list (a status, say)."""
    return [value]


def body_of(response: web.StreamResponse) -> bytes | None:
    """The complete body of a handler's answer, or None if it streams (nothing to mangle)."""
    if not isinstance(response, web.Response) or response.prepared:
        return None
    return bytes(response.body) if isinstance(response.body, bytes | bytearray) else None


def replaced(response: web.StreamResponse, body: bytes) -> web.Response:
    """The answer with `body` in place of its own, under the same status and content type."""
    return web.Response(
        body=body,
        status=response.status,
        content_type=response.content_type,
        charset=response.charset,
    )


async def truncated(
    request: web.Request, response: web.StreamResponse, body: bytes
) -> web.StreamResponse:
    """Sends the answer's headers and full Content-Length but half its body, then hangs up."""
    cut = web.StreamResponse(status=response.status)
    cut.content_type, cut.charset = response.content_type, response.charset
    cut.content_length = len(body)
    cut.force_close()
    await cut.prepare(request)
    await cut.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()  # close() flushes the half body first, abort() would drop it
    # aiohttp then finds the response prepared and its writer done, so it logs nothing.
    return cut


def reset(request: web.Request) -> web.StreamResponse:
    """Drops the connection without a word; returns a placeholder for the handler to return."""
    if request.transport is not None:
        request.transport.abort()
    # Sending it fails with a ConnectionResetError, which aiohttp takes for a client gone away.
    return web.Response(status=500)
