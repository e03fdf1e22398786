"""`workflow_run` webhook deliveries built from a GitHubWorld, signed as GitHub signs them.

A delivery is what GitHub POSTs to a webhook URL: the headers (X-GitHub-Event, X-GitHub-Delivery,
X-Hub-Signature-256 and the legacy SHA-1 X-Hub-Signature, ...) and the exact body bytes the
signatures cover. Tests POST it to runsync; nothing here sends anything.

GitHub sends `requested` when a run is triggered, `in_progress` when a runner starts it and
`completed` when it finishes, whatever the outcome; nothing for queued/waiting changes or for a
deletion. A re-run is expected to send them again with the same id and a higher run_attempt
(unconfirmed). Failed deliveries are not retried automatically; a redelivery keeps its GUID.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from worker.sources.github.simulator.world import GitHubWorld

WORKFLOW_RUN_ACTIONS = ("requested", "in_progress", "completed")
HOOK_ID = 480_112_233  # X-GitHub-Hook-ID of the simulated repository webhook


@dataclass(frozen=True)
class Delivery:
    """One webhook delivery: headers and the exact body the signatures were computed over."""

    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = json.loads(self.body)
        return payload

    @property
    def guid(self) -> str:
        return self.headers["X-GitHub-Delivery"]


def signature_256(secret: str | bytes, body: bytes) -> str:
    """X-Hub-Signature-256: "sha256=" and the hex HMAC-SHA256 of the raw body, keyed with the
    webhook secret."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def signature_1(secret: str | bytes, body: bytes) -> str:
    """The legacy X-Hub-Signature: "sha1=" and the hex HMAC-SHA1 of the raw body."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha1=" + hmac.new(key, body, hashlib.sha1).hexdigest()


def action_for(status: str | None) -> str:
    """The action a run's current status is announced with: completed, in_progress, or (for
    every other, still-waiting status) requested."""
    if status in ("completed", "in_progress"):
        return status
    return "requested"


def workflow_run_delivery(
    world: GitHubWorld,
    repo: str,
    run_id: int,
    *,
    secret: str | bytes,
    action: str | None = None,
    delivery_id: str | None = None,
) -> Delivery:
    """The `workflow_run` delivery for the run as it is now.

    action defaults to the one the run's status implies (action_for); another of
    requested/in_progress/completed can be forced, to simulate late or out-of-order deliveries.
    delivery_id repeats an earlier GUID, as a redelivery does (default: a fresh, seeded one). The
    run object is complete (no seeded omissions).
    """
    run = world.get(repo, run_id, complete=True)
    if run is None:
        raise KeyError(f"repository {repo!r} has no run {run_id!r}")
    chosen = action or action_for(run["status"])
    if chosen not in WORKFLOW_RUN_ACTIONS:
        raise ValueError(f"workflow_run actions are {WORKFLOW_RUN_ACTIONS}, got {chosen!r}")
    repository = world.repository(repo)
    payload = {
        "action": chosen,
        "workflow_run": run,
        "workflow": world.workflow(repo, run["workflow_id"]),
        "repository": repository,
        "sender": run["triggering_actor"],
    }
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Delivery(_headers(body, secret, delivery_id or world.delivery_guid(), repository), body)


def _headers(
    body: bytes, secret: str | bytes, guid: str, repository: dict[str, Any]
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/5b6e1c4",
        "X-GitHub-Event": "workflow_run",
        "X-GitHub-Delivery": guid,
        "X-GitHub-Hook-ID": str(HOOK_ID),
        "X-GitHub-Hook-Installation-Target-ID": str(repository["id"]),
        "X-GitHub-Hook-Installation-Target-Type": "repository",
        "X-Hub-Signature": signature_1(secret, body),
        "X-Hub-Signature-256": signature_256(secret, body),
    }
