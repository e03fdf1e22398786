"""Apify's webhook deliveries: its default payload (`userId`, `createdAt`, `eventType`,
`eventData`, and `resource`: the run as `GET /v2/actor-runs/{id}` gives it), authenticated by a
secret header set through the webhook's headers template (or a bearer token).

The run is observed at the payload's `createdAt`. A run of an actor or task other than the
source's is answered out_of_scope and not stored.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from worker import http, jsontext
from worker.sources.apify.config import ApifyConfig
from worker.sources.apify.source import read_item, scope_request
from worker.sources.common import MAX_CLOCK_SKEW, ItemError, parse_time
from worker.sources.contract import Delivery, Refused, ignored

SECRET_HEADER = "X-Runsync-Webhook-Secret"  # set through the webhook's headers template
DISPATCH_HEADER = "X-Apify-Webhook-Dispatch-Id"  # Apify's id of one delivery, kept on retries
RUN_EVENTS = "ACTOR.RUN."


class ApifyHooks:
    upstream = "apify"

    def __init__(self, config: ApifyConfig, client: http.Client | None) -> None:
        self.config = config
        self._client = client  # to learn the id of an actor or task given by name
        self._scope_id: str | None = None

    def authenticate(self, headers: Mapping[str, str], body: bytes | None) -> None:
        presented = headers.get(SECRET_HEADER)
        if presented is None:
            scheme, _, credentials = (headers.get("Authorization") or "").partition(" ")
            presented = credentials.strip() if scheme.lower() == "bearer" else None
        secret = self.config.webhook_secret
        expected = secret.reveal().encode() if secret is not None else None
        # Bytes: compare_digest refuses non-ASCII text, and a header can carry anything.
        if (
            presented is None
            or expected is None
            or not hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), expected)
        ):
            raise Refused(401, "unauthorized", f"missing or wrong {SECRET_HEADER} header")

    async def read(
        self, headers: Mapping[str, str], body: bytes, facts: dict[str, Any]
    ) -> Delivery:
        dispatch = headers.get(DISPATCH_HEADER)
        if dispatch:
            facts["dispatch_id"] = dispatch[:100]
        delivery = Delivery()
        payload = _payload(body)
        event_type = facts["event_type"] = payload["eventType"][:60]
        if not event_type.startswith(RUN_EVENTS):  # a build event, or the Console's test
            delivery.answer = ignored(
                "ignored", f"{event_type} is not an actor run event; not stored"
            )
            return delivery
        resource, observed_at = _run_event(payload)
        run_id = resource.get("id")
        facts["run_id"] = run_id[:100] if isinstance(run_id, str) else None
        if not await self._in_scope(resource, payload.get("eventData")):
            config = self.config
            scope = f"actor {config.actor}" if config.actor else f"task {config.task}"
            delivery.answer = ignored(
                "out_of_scope", f"the run is not one of {scope}'s; not stored"
            )
            return delivery
        delivery.observations.append(read_item(resource, observed_at))
        return delivery

    async def _in_scope(self, resource: dict[str, Any], event_data: Any) -> bool:
        """Whether the run belongs to the source's actor or task (always, for all runs)."""
        config = self.config
        if not config.actor and not config.task:
            return True
        run_key, event_key = ("actorTaskId", "actorTaskId") if config.task else ("actId", "actorId")
        event_data = event_data if isinstance(event_data, dict) else {}
        owner = resource.get(run_key) or event_data.get(event_key)
        return isinstance(owner, str) and owner == await self._scope()

    async def _scope(self) -> str:
        """The id of the source's actor or task: as configured, or asked of Apify once by name."""
        ref = self.config.task or self.config.actor or ""
        if "~" not in ref:
            return ref
        if self._scope_id is None:
            if self._client is None:
                raise Refused(503, "unavailable", f"cannot look up {ref}: no client")
            request = scope_request(self.config)
            try:
                answer = await self._client.get_json(request.path, request.params)
            except http.UpstreamError as error:
                raise Refused(503, "unavailable", f"cannot look up {ref}: {error}") from None
            data = answer.body.get("data") if isinstance(answer.body, dict) else None
            if not isinstance(data, dict) or not isinstance(data.get("id"), str):
                raise Refused(503, "unavailable", f"Apify's answer about {ref} has no data.id")
            self._scope_id = data["id"]
        return self._scope_id


def _payload(body: bytes) -> dict[str, Any]:
    """The payload, if it is a JSON object with an eventType."""
    try:
        payload = jsontext.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refused(400, "bad_request", "the body is not JSON") from None
    if not isinstance(payload, dict):
        raise Refused(400, "bad_request", "the body is not a JSON object")
    event_type = payload.get("eventType")
    if not isinstance(event_type, str) or not event_type:
        raise Refused(400, "bad_request", "eventType is missing (send the default payload)")
    return payload


def _run_event(payload: dict[str, Any]) -> tuple[dict[str, Any], datetime]:
    """A run event's run, and when it was observed: its createdAt."""
    if not isinstance(payload.get("resource"), dict):
        raise Refused(
            400, "bad_request", "resource is not an object (send the default payload: the run)"
        )
    try:
        created_at = parse_time(payload.get("createdAt"), "createdAt")
    except ItemError as error:
        raise Refused(400, "bad_request", str(error)) from None
    assert created_at is not None
    now = datetime.now(UTC)
    if created_at > now + MAX_CLOCK_SKEW:
        raise Refused(400, "bad_request", f"createdAt {created_at.isoformat()} is in the future")
    # Within the drift allowed, the arrival is the later bound: no observation is from the future.
    return payload["resource"], min(created_at, now)
