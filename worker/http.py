"""One aiohttp session per source: auth, timeouts, request pacing (ratelimit.py), retries with
backoff, and conditional GETs for an upstream whose 304s are free (GitHub)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import aiohttp
import structlog

from worker import __version__, jsontext, ratelimit

log = structlog.get_logger("runsync.http")

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# A page of 1000 Apify runs is about 1 MB. Parsed JSON can take 25 times its size in memory
# (a body of empty objects), so the cap is what bounds memory against a hostile upstream.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# The bodies a conditional client keeps for its next GETs, in all. A GitHub run is 3 to 10 KB, so
# 16 MB holds a pass's first pages (a hundred runs each) and thousands of open runs read again.
REMEMBERED_BYTES = 16 * 1024 * 1024
SECONDARY_WAIT = 60.0  # seconds; GitHub: without Retry-After, wait a minute, then back off
_VALIDATORS = ("ETag", "Last-Modified")


class UpstreamError(Exception):
    """A request failed for good. The message names the request and is safe to log: no secrets."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TooLarge(UpstreamError):
    """An answer over the size cap: refused unread. A smaller page may pass."""


class _Transient(Exception):
    """A failure worth another try. `secondary`: GitHub's secondary rate limit, which asks for a
    minute's wait at least when it gives no Retry-After."""

    def __init__(
        self, reason: str, retry_after: float | None = None, *, secondary: bool = False
    ) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.secondary = secondary


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, bounded per wait and in total."""

    retries: int = 6
    base: float = 0.5
    cap: float = 30.0
    budget: float = 120.0  # seconds of waiting, across all retries of one request

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return max(retry_after, 0.0)  # the upstream knows best; the budget still bounds it
        return random.uniform(0, min(self.cap, self.base * 2**attempt))


@dataclass(frozen=True, slots=True)
class Response:
    body: Any  # the parsed JSON
    observed_at: datetime  # when the attempt that succeeded was sent
    status: int  # 304: the body is the one remembered, which the upstream confirmed is current


@dataclass(frozen=True, slots=True)
class _Validated:
    """A 200's body and the validators a conditional GET sends to ask whether it is current."""

    etag: str | None
    last_modified: str | None
    body: bytes

    def conditions(self) -> dict[str, str]:
        sent = {"If-None-Match": self.etag, "If-Modified-Since": self.last_modified}
        return {name: value for name, value in sent.items() if value is not None}


# A GET as Remembered knows it: its path and its params, sorted.
_Key = tuple[str, tuple[tuple[str, str], ...]]


class Remembered:
    """The last 200 of each GET (by path and params), least recently used out first, bounded in
    bytes. A body over a quarter of the bound is not kept: one large answer must not push out the
    many small ones a pass reads again."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._kept: OrderedDict[_Key, _Validated] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key: _Key) -> _Validated | None:
        found = self._kept.get(key)
        if found is not None:
            self._kept.move_to_end(key)
        return found

    def keep(self, key: _Key, answer: _Validated) -> None:
        self.forget(key)
        if len(answer.body) > self.max_bytes // 4:
            return
        self._kept[key] = answer
        self.size += len(answer.body)
        while self.size > self.max_bytes:
            _, oldest = self._kept.popitem(last=False)
            self.size -= len(oldest.body)

    def forget(self, key: _Key) -> None:
        gone = self._kept.pop(key, None)
        if gone is not None:
            self.size -= len(gone.body)


class Observer(Protocol):
    """Hears what each request attempt met, e.g. to count it; http.py knows nothing of metrics."""

    def answered(self, code: str) -> None:
        """An attempt ended: the HTTP status code as text, or "timeout" or "error" without one."""

    def retried(self) -> None:
        """A transient failure is about to be tried again."""


class _Unobserved:
    def answered(self, code: str) -> None:
        pass

    def retried(self) -> None:
        pass


class RateLimiter:
    """Spaces request starts at most `rate` per second: a source's own cap, fixed."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)


class Client:
    """GETs JSON from one upstream. The token goes in the Authorization header, nowhere else."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        name: str,
        limits: ratelimit.Limits | None = None,
        rate: float | None = None,
        concurrency: int = 8,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        observer: Observer | None = None,
        headers: Mapping[str, str] | None = None,
        conditional: bool = False,
        remembered_bytes: int = REMEMBERED_BYTES,
    ) -> None:
        if any(key.lower() == "authorization" for key in headers or {}):
            raise ValueError(f"{name}: the token goes in Authorization by itself, not in headers")
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.observer: Observer = observer or _Unobserved()  # the daemon sets its metrics here
        self.backoff = backoff or Backoff()
        self.max_response_bytes = max_response_bytes
        # The upstream's limits, shared with the other sources on this token; and this source's
        # own cap (max_requests_per_second), when it has one.
        self.limits = limits or ratelimit.Limits(ratelimit.Published(), name)
        self._cap = RateLimiter(rate) if rate else None
        self._slots = asyncio.Semaphore(concurrency)
        # With `conditional`, a GET asks whether the answer it remembers is still current, and a
        # 304 (which costs no budget on GitHub) gives it back.
        self.remembered = Remembered(remembered_bytes) if conditional else None
        # An upstream's own headers (GitHub's Accept and API version) go over the defaults, whatever
        # their case.
        own = dict(headers or {})
        replaced = {key.lower() for key in own}
        defaults = {"Accept": "application/json", "User-Agent": f"runsync/{__version__}"}
        self._session = aiohttp.ClientSession(
            headers={
                **{key: value for key, value in defaults.items() if key.lower() not in replaced},
                **own,
                "Authorization": f"Bearer {token}",
            },
            timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0)),
            connector=aiohttp.TCPConnector(limit=concurrency),
            raise_for_status=False,
        )

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def get_json(self, path: str, params: Mapping[str, str] | None = None) -> Response:
        """The parsed body of a 2xx answer (or of a 304, remembered); retries what may pass, raises
        UpstreamError otherwise."""
        what = f"GET {path}"
        waited = 0.0
        slowed = 0  # waits for a secondary limit that gave no Retry-After
        failure: ratelimit.Spent | _Transient
        for attempt in range(self.backoff.retries + 1):
            try:
                return await self._attempt(path, params, self.backoff.budget - waited)
            except ratelimit.Spent as spent:
                # Nothing goes before the budget's reset: wait for it, or fail now if this
                # request may not wait that long. Until then, so do the token's other requests.
                delay, failure = spent.wait, spent
                if waited + delay > self.backoff.budget:
                    raise UpstreamError(
                        f"{self.name}: {what}: {spent}, past the {self.backoff.budget:.0f} s "
                        "retry budget"
                    ) from None
            except _Transient as transient:
                delay, failure = self.backoff.delay(attempt, transient.retry_after), transient
                if transient.secondary and transient.retry_after is None:
                    delay = SECONDARY_WAIT * 2**slowed  # as GitHub asks: a minute, then more
                    slowed += 1
            if attempt == self.backoff.retries:
                raise UpstreamError(
                    f"{self.name}: {what} failed after {attempt + 1} attempts: {failure}"
                ) from None
            if waited + delay > self.backoff.budget:
                raise UpstreamError(
                    f"{self.name}: {what} failed after {attempt + 1} attempts: {failure}; "
                    f"waiting {delay:.0f} s more would exceed the {self.backoff.budget:.0f} s "
                    "retry budget"
                ) from None
            log.warning(
                "request retry",
                request=what,
                attempt=attempt + 1,
                reason=str(failure),
                delay_s=round(delay, 3),
            )
            self.observer.retried()
            waited += delay
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _attempt(
        self, path: str, params: Mapping[str, str] | None, patience: float
    ) -> Response:
        key = (path, tuple(sorted((params or {}).items())))
        async with self._slots:
            await self.limits.acquire(path, patience)
            if self._cap is not None:
                await self._cap.wait()
            # Held from the request to its answer, so a 304 finds the body even if it is pushed out
            # of what is remembered meanwhile.
            kept = self.remembered.get(key) if self.remembered is not None else None
            conditions = kept.conditions() if kept is not None else None
            observed_at = datetime.now(UTC)
            code: str | None = "error"  # until a whole answer has been read
            try:
                async with self._session.get(
                    self.base_url + path, params=params, headers=conditions
                ) as response:
                    body = await self._read(response)
                    status = response.status
                    code = str(status)
                    retry_after = _retry_after(response.headers.get("Retry-After"))
                    etag, last_modified = (response.headers.get(h) for h in _VALIDATORS)
                    words = _upstream_message(body) if status >= 400 else ""
                    refused = self.limits.answered(
                        path,
                        status,
                        self._stated(response),
                        headers=response.headers,
                        message=words,
                    )
            except TimeoutError:
                code = "timeout"
                raise _Transient("timed out") from None
            except aiohttp.ClientPayloadError:
                raise _Transient("response body broken off") from None
            except aiohttp.ClientSSLError as error:
                # A certificate that is not trusted stays untrusted: no retry, and no way around it.
                raise UpstreamError(f"{self.name}: GET {path}: TLS failed: {error}") from None
            except aiohttp.ClientError as error:
                raise _Transient(f"connection failed ({type(error).__name__})") from None
            except asyncio.CancelledError:
                code = None  # the walk no longer wants it (a page fetched ahead): not a failure
                raise
            finally:
                if code is not None:
                    self.observer.answered(code)
        if refused is ratelimit.Refused.BUDGET:
            raise self.limits.spent() or _Transient(f"HTTP {status}{words}", retry_after)
        if refused is ratelimit.Refused.SECONDARY:
            raise _Transient(f"HTTP {status}{words}", retry_after, secondary=True)
        if status == 304:
            if kept is None:  # nothing was asked on a condition: no body to give back
                raise _Transient("HTTP 304 to a request without a condition")
            body = kept.body
        if status in RETRY_STATUSES or status >= 500:
            raise _Transient(f"HTTP {status}{words}", retry_after)
        if status >= 400:
            raise UpstreamError(
                f"{self.name}: GET {path} answered HTTP {status}{words}", status=status
            )
        try:
            answer = Response(jsontext.loads(body), observed_at, status)
        except (ValueError, UnicodeDecodeError):
            raise _Transient(f"HTTP {status} with a body that is not JSON") from None
        except RecursionError:
            raise _Transient(f"HTTP {status} with JSON nested too deeply to read") from None
        if self.remembered is not None and status != 304:
            if etag or last_modified:
                self.remembered.keep(key, _Validated(etag, last_modified, body))
            else:
                self.remembered.forget(key)
        return answer

    def _stated(self, response: aiohttp.ClientResponse) -> str | None:
        header = self.limits.published.header
        return response.headers.get(header) if header else None

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        declared = response.content_length
        if declared is not None and declared > self.max_response_bytes:
            raise TooLarge(
                f"{self.name}: response of {declared} bytes exceeds the {self.max_response_bytes}-byte cap"
            )
        chunks, size = [], 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self.max_response_bytes:
                raise TooLarge(
                    f"{self.name}: response exceeds the {self.max_response_bytes}-byte cap"
                )
            chunks.append(chunk)
        return b"".join(chunks)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, from either of its two forms."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - datetime.now(UTC)).total_seconds(), 0.0)


def _upstream_message(body: bytes) -> str:
    """The upstream's own words about an error, short: Apify nests them in `error`, GitHub puts
    them in `message`."""
    try:
        parsed = json.loads(body)
        error = parsed.get("error") or parsed.get("message")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return ""
    if isinstance(error, dict):
        error = error.get("message") or error.get("type")
    if not isinstance(error, str) or not error:
        return ""
    return f": {error[:300]}"
