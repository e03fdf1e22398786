"""GitHub's `workflow_run` webhook deliveries, verified by `X-Hub-Signature-256`: `sha256=` and
the hex HMAC-SHA256 of the raw body keyed with the webhook's secret, compared in constant time.

The run is the payload's `workflow_run` object, whole, observed at its `updated_at` (GitHub sends
no other time; an older delivery, or a redelivery, loses to a newer poll). A `ping` is answered
and stored nothing; so is a run of another repository or workflow than the source's. GitHub
does not retry a failed delivery (a person redelivers it), so the database being away is a 503
that shows as failed in the repository's webhook settings.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from worker import jsontext
from worker.sources.common import MAX_CLOCK_SKEW, ItemError, parse_time
from worker.sources.contract import Delivery, Refused, ignored
from worker.sources.github.config import GitHubConfig
from worker.sources.github.source import read_item

SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADER = "X-GitHub-Event"
DELIVERY_HEADER = "X-GitHub-Delivery"  # the same on a redelivery


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class GitHubHooks:
    upstream = "github"

    def __init__(self, config: GitHubConfig, _client: object = None) -> None:
        self.config = config

    def authenticate(self, headers: Mapping[str, str], body: bytes | None) -> None:
        if body is None:  # the signature covers the whole body, which was not read
            raise Refused(413, "too_large", "the body is larger than this endpoint takes")
        presented = headers.get(SIGNATURE_HEADER)
        secret = self.config.webhook_secret
        if presented is None or secret is None:
            raise Refused(401, "unauthorized", f"missing {SIGNATURE_HEADER} header")
        expected = signature(secret.reveal(), body).encode()
        if not hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), expected):
            raise Refused(401, "unauthorized", f"wrong {SIGNATURE_HEADER} signature")

    async def read(
        self, headers: Mapping[str, str], body: bytes, facts: dict[str, Any]
    ) -> Delivery:
        guid = headers.get(DELIVERY_HEADER)
        event = (headers.get(EVENT_HEADER) or "")[:60]
        facts.update(delivery_id=guid[:100] if guid else None, github_event=event)
        delivery = Delivery()
        if event == "ping":
            delivery.answer = ignored("ignored", "ping: the webhook reaches runsync")
            return delivery
        if event != "workflow_run":
            delivery.answer = ignored("ignored", f"{event or 'an event'} is not workflow_run")
            return delivery
        payload = _payload(body)
        run = payload["workflow_run"]
        facts["action"] = str(payload.get("action"))[:40]
        facts["run_id"] = str(run.get("id"))[:100]
        if not self._in_scope(payload):
            where = (self.config.repository or "") + (
                f" workflow {self.config.workflow}" if self.config.workflow else ""
            )
            delivery.answer = ignored("out_of_scope", f"the run is not one of {where}; not stored")
            return delivery
        delivery.observations.append(read_item(run, _observed_at(run)))
        return delivery

    def _in_scope(self, payload: dict[str, Any]) -> bool:
        """Whether the run is of the source's repository (and workflow, when it has one)."""
        run = payload["workflow_run"]
        repository = payload.get("repository") or run.get("repository")
        name = repository.get("full_name") if isinstance(repository, dict) else None
        wanted = (self.config.repository or "").casefold()
        if not isinstance(name, str) or name.casefold() != wanted:
            return False
        workflow = self.config.workflow
        if not workflow:
            return True
        path = run.get("path")
        return str(run.get("workflow_id")) == workflow or (
            isinstance(path, str) and path.rsplit("/", 1)[-1] == workflow
        )


def _payload(body: bytes) -> dict[str, Any]:
    try:
        payload = jsontext.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Refused(400, "bad_request", "the body is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("workflow_run"), dict):
        raise Refused(400, "bad_request", "workflow_run is not an object")
    return payload


def _observed_at(run: dict[str, Any]) -> datetime:
    """When the delivery's state of the run held: its updated_at, never later than now."""
    now = datetime.now(UTC)
    try:
        updated = parse_time(run.get("updated_at"), "updated_at")
    except ItemError as error:
        raise Refused(400, "bad_request", str(error)) from None
    assert updated is not None
    if updated > now + MAX_CLOCK_SKEW:
        raise Refused(400, "bad_request", f"updated_at {updated.isoformat()} is in the future")
    return min(updated, now)
