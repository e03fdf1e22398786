"""Webhooks: a run lands in the table the moment it changes; polling stays the safety net.

`POST /webhooks/{kind}/{source}` takes a delivery for one configured source that has a webhook
secret. The source's upstream reads it (`Hooks`, in its package): it authenticates the delivery,
and turns it into runs, read by the same reader as a polled one and observed at the delivery's
own time. They are written by the same merge as a pass's pages: a delivery sent again changes
nothing, and one that arrives after a newer poll loses to it. So no stream lease is taken, and a
pass holding one never delays a delivery.

Answers: 200 whenever sending the delivery again would not help (stored, unchanged, quarantined,
out of the source's scope, not a run event); 400 for a body the upstream does not send; 401 for a
missing or wrong secret or signature; 404 for a source that takes no webhooks of that kind; 413
past the size cap; 503 while the database (or the upstream, to check a scope given by name)
cannot answer: the sender retries, or a person redelivers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from worker import http, sources, store
from worker.config import SourceConfig
from worker.model import Rejected, Run
from worker.sources.contract import Answer, Delivery, Hooks, Refused

if TYPE_CHECKING:
    from worker.metrics import Metrics

log = structlog.get_logger("runsync.webhooks")

UNKNOWN_SOURCE = "(unknown)"  # the metrics label for a path naming no source: names are unbounded
WEBHOOK_STREAM = "webhook"


def receiver(
    configs: Sequence[SourceConfig],
    db: store.Store,
    clients: Mapping[str, http.Client],
    metrics: Metrics | None = None,
) -> Receiver:
    """The receiver of the configured sources that take webhooks (`clients`: per source name,
    its upstream client, for an upstream that asks it about a delivery)."""
    hooks = {}
    for config in configs:
        found = sources.webhooks(config, clients.get(config.name))
        if found is not None:
            hooks[config.name] = found
    return Receiver(hooks, db, metrics)


class Receiver:
    """Takes the deliveries for the sources that have a webhook secret."""

    def __init__(
        self, hooks: Mapping[str, Hooks], db: store.Store, metrics: Metrics | None = None
    ) -> None:
        self._hooks = dict(hooks)  # by source name
        self._db = db
        self._metrics = metrics

    async def receive(
        self, kind: str, name: str, headers: Mapping[str, str], body: bytes | None
    ) -> Answer:
        """The answer to one delivery; `body` is None when it was larger than the server takes.

        One log line per delivery, without the secret or the payload.
        """
        hooks = self._hooks.get(name)
        if hooks is not None and hooks.upstream != kind:
            hooks = None
        facts: dict[str, Any] = {}
        try:
            if hooks is None:
                raise Refused(
                    404, "not_found", f"no {kind[:40]} source {name[:100]!r} takes webhooks"
                )
            hooks.authenticate(headers, body)
            if body is None:
                raise Refused(413, "too_large", "the body is larger than this endpoint takes")
            delivery = await hooks.read(headers, body, facts)
            answer = delivery.answer or await self._store(name, hooks.upstream, delivery)
        except Refused as refusal:
            answer = refusal.answer
        outcome = answer.body["outcome"]
        if self._metrics is not None:
            self._metrics.webhook(name if hooks else UNKNOWN_SOURCE, outcome)
        detail = answer.body.get("error") or answer.body.get("message")
        log.info(
            "webhook received",
            source=name[:100],
            upstream=kind[:40],
            outcome=outcome,
            status=answer.status,
            **facts,
            **({"detail": detail} if detail else {}),
        )
        return answer

    async def _store(self, name: str, upstream: str, delivery: Delivery) -> Answer:
        runs = [o for o in delivery.observations if isinstance(o, Run)]
        rejected = [o for o in delivery.observations if isinstance(o, Rejected)]
        try:
            written = await self._db.save_runs(name, upstream, runs, rejected)
        except (*store.DatabaseError, TimeoutError) as error:
            raise Refused(
                503,
                "unavailable",
                f"the database cannot answer ({type(error).__name__}); try again",
            ) from None
        if self._metrics is not None:
            self._metrics.written(name, WEBHOOK_STREAM, written)
        if rejected:
            return Answer(200, {"outcome": "quarantined", "message": rejected[0].reason})
        outcome = "stored" if written.inserted else "updated" if written.updated else "unchanged"
        facts: dict[str, Any] = {"outcome": outcome}
        if len(runs) == 1:
            facts.update(run_id=runs[0].run_id, status=runs[0].status)
        return Answer(200, facts)
