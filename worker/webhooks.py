"""Apify webhooks: a run lands in the table the moment it changes; polling stays the safety net.

`POST /webhooks/apify/{source}` takes Apify's default payload (`userId`, `createdAt`,
`eventType`, `eventData`, and `resource`: the run as `GET /v2/actor-runs/{id}` gives it). The run
is read by the same reader as a polled one and written by the same merge, observed at the
payload's `createdAt`: a delivery sent again changes nothing, and one that arrives after a newer
poll loses to it. So no stream lease is taken, and a pass holding one never delays a delivery.

Answers: 200 whenever sending the delivery again would not help (stored, unchanged, quarantined,
out of the source's scope, not a run event); 400 for a body that is not the default payload; 401
for a missing or wrong secret; 404 for a source that takes no webhooks; 413 past the size cap;
503 while the database (or, to check a scope given by name, Apify) cannot answer: Apify retries.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from worker import http, jsontext, store
from worker.config import SourceConfig
from worker.model import Run
from worker.sources import apify
from worker.sources.common import MAX_CLOCK_SKEW, ItemError, parse_time

if TYPE_CHECKING:
    from worker.metrics import Metrics

log = structlog.get_logger("runsync.webhooks")

SECRET_HEADER = "X-Runsync-Webhook-Secret"  # set through the webhook's headers template
DISPATCH_HEADER = "X-Apify-Webhook-Dispatch-Id"  # Apify's id of one delivery, kept on retries
RUN_EVENTS = "ACTOR.RUN."
UNKNOWN_SOURCE = "(unknown)"  # the metrics label for a path naming no source: names are unbounded
WEBHOOK_STREAM = "webhook"


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


class _Refused(Exception):
    def __init__(self, status: int, outcome: str, message: str) -> None:
        super().__init__(message)
        self.answer = Answer(status, {"outcome": outcome, "error": message})


class Receiver:
    """Takes the deliveries for the Apify sources that have a webhook secret."""

    def __init__(
        self,
        sources: Sequence[SourceConfig],
        db: store.Store,
        clients: Mapping[str, http.Client],
        metrics: Metrics | None = None,
    ) -> None:
        self._sources = {s.name: s for s in sources if s.kind == "apify" and s.webhook_secret}
        self._db = db
        self._clients = clients  # per source: to learn the id of an actor or task given by name
        self._metrics = metrics
        self._scope_ids: dict[str, str] = {}

    async def receive(self, name: str, headers: Mapping[str, str], body: bytes | None) -> Answer:
        """The answer to one delivery; `body` is None when it was larger than the server takes.

        One log line per delivery, without the secret or the payload.
        """
        dispatch = headers.get(DISPATCH_HEADER)
        facts: dict[str, Any] = {"dispatch_id": dispatch[:100]} if dispatch else {}
        config = self._sources.get(name)
        try:
            if config is None:
                raise _Refused(404, "not_found", f"no source {name[:100]!r} takes webhooks")
            _authenticate(config, headers)
            if body is None:
                raise _Refused(413, "too_large", "the body is larger than this endpoint takes")
            answer = await self._deliver(config, body, facts)
        except _Refused as refusal:
            answer = refusal.answer
        outcome = answer.body["outcome"]
        if self._metrics is not None:
            self._metrics.webhook(name if config else UNKNOWN_SOURCE, outcome)
        detail = answer.body.get("error") or answer.body.get("message")
        log.info(
            "webhook received",
            source=name[:100],
            outcome=outcome,
            status=answer.status,
            **facts,
            **({"detail": detail} if detail else {}),
        )
        return answer

    async def _deliver(self, config: SourceConfig, body: bytes, facts: dict[str, Any]) -> Answer:
        payload = _payload(body)
        event_type = facts["event_type"] = payload["eventType"][:60]
        if not event_type.startswith(RUN_EVENTS):  # a build event, or the Console's test
            return _answer("ignored", f"{event_type} is not an actor run event; not stored")
        resource, observed_at = _run_event(payload)
        run_id = resource.get("id")
        facts["run_id"] = run_id[:100] if isinstance(run_id, str) else None
        if not await self._in_scope(config, resource, payload.get("eventData")):
            scope = f"actor {config.actor}" if config.actor else f"task {config.task}"
            return _answer("out_of_scope", f"the run is not one of {scope}'s; not stored")
        observation = apify.read_item(resource, observed_at)
        runs, rejected = (
            ([observation], []) if isinstance(observation, Run) else ([], [observation])
        )
        try:
            written = await self._db.save_runs(
                config.name, apify.ApifySource.upstream, runs, rejected
            )
        except (*store.DatabaseError, TimeoutError) as error:
            raise _Refused(
                503,
                "unavailable",
                f"the database cannot answer ({type(error).__name__}); try again",
            ) from None
        if self._metrics is not None:
            self._metrics.written(config.name, WEBHOOK_STREAM, written)
        if rejected:
            return _answer("quarantined", rejected[0].reason)
        outcome = "stored" if written.inserted else "updated" if written.updated else "unchanged"
        return _answer(outcome, None, run_id=run_id, status=observation.status)

    async def _in_scope(self, config: SourceConfig, resource: dict, event_data: Any) -> bool:
        """Whether the run belongs to the source's actor or task (always, for all runs)."""
        if not config.actor and not config.task:
            return True
        run_key, event_key = ("actorTaskId", "actorTaskId") if config.task else ("actId", "actorId")
        event_data = event_data if isinstance(event_data, dict) else {}
        owner = resource.get(run_key) or event_data.get(event_key)
        return isinstance(owner, str) and owner == await self._scope_id(config)

    async def _scope_id(self, config: SourceConfig) -> str:
        """The id of the source's actor or task: as configured, or asked of Apify once by name."""
        ref = config.task or config.actor
        if "~" not in ref:
            return ref
        if config.name not in self._scope_ids:
            request = apify.scope_request(config)
            try:
                answer = await self._clients[config.name].get_json(request.path, request.params)
            except http.UpstreamError as error:
                raise _Refused(503, "unavailable", f"cannot look up {ref}: {error}") from None
            data = answer.body.get("data") if isinstance(answer.body, dict) else None
            if not isinstance(data, dict) or not isinstance(data.get("id"), str):
                raise _Refused(503, "unavailable", f"Apify's answer about {ref} has no data.id")
            self._scope_ids[config.name] = data["id"]
        return self._scope_ids[config.name]


def _authenticate(config: SourceConfig, headers: Mapping[str, str]) -> None:
    presented = headers.get(SECRET_HEADER)
    if presented is None:
        scheme, _, credentials = (headers.get("Authorization") or "").partition(" ")
        presented = credentials.strip() if scheme.lower() == "bearer" else None
    expected = config.webhook_secret.reveal().encode()
    # Bytes: compare_digest refuses non-ASCII text, and a header can carry anything.
    if presented is None or not hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), expected
    ):
        raise _Refused(401, "unauthorized", f"missing or wrong {SECRET_HEADER} header")


def _payload(body: bytes) -> dict[str, Any]:
    """The payload, if it is a JSON object with an eventType."""
    try:
        payload = jsontext.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _Refused(400, "bad_request", "the body is not JSON") from None
    if not isinstance(payload, dict):
        raise _Refused(400, "bad_request", "the body is not a JSON object")
    event_type = payload.get("eventType")
    if not isinstance(event_type, str) or not event_type:
        raise _Refused(400, "bad_request", "eventType is missing (send the default payload)")
    return payload


def _run_event(payload: dict[str, Any]) -> tuple[dict[str, Any], datetime]:
    """A run event's run, and when it was observed: its createdAt."""
    if not isinstance(payload.get("resource"), dict):
        raise _Refused(
            400, "bad_request", "resource is not an object (send the default payload: the run)"
        )
    try:
        created_at = parse_time(payload.get("createdAt"), "createdAt")
    except ItemError as error:
        raise _Refused(400, "bad_request", str(error)) from None
    now = datetime.now(UTC)
    if created_at > now + MAX_CLOCK_SKEW:
        raise _Refused(400, "bad_request", f"createdAt {created_at.isoformat()} is in the future")
    # Within the drift allowed, the arrival is the later bound: no observation is from the future.
    return payload["resource"], min(created_at, now)


def _answer(outcome: str, message: str | None, **facts: Any) -> Answer:
    body = {"outcome": outcome, **facts}
    if message:
        body["message"] = message
    return Answer(200, body)
