"""The delivery audit: a delivery is done when its handler confirmed it, not when the broker
took it.

A published outbox row is done for a handler when that handler applied it (its inbox row,
`tidings.<domain>.<Handler>`) or dead-lettered it (its `tidings_dead_letters` row). A round,
run by beat every `[outbox] audit_interval` seconds (and so by `tidings server`, which embeds
beat):

1. confirms the rows no queued handler lacks (they leave the audit's index for good);
2. selects, oldest first and at most `audit_batch`, the rows published more than
   `audit_grace` and less than `audit_window` seconds ago that some handler lacks, whose
   per-row backoff has passed (`next_audit_at`) and that were re-sent fewer than
   `audit_max_resends` times;
3. checks each against the relay's own routing (`queued_handlers`: event_store handlers read
   the store themselves and are never audited) and sends it again to the queues of the
   handlers that lack it, and only those; the inbox absorbs a duplicate;
4. counts the re-send on the row (`resent`, `last_audit_at`) and backs it off:
   `next_audit_at = now + min(audit_backoff_max, audit_grace * 2**resent)`.

This recovers what a broker forgets: a Redis restarted without persistence, a purged queue,
the message kombu's Redis transport pops before it records it as unacknowledged.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from celery import Celery, Task

from tidings.domain.envelope import Message
from tidings.domain.ports import AuditRoutes, AuditWindow
from tidings.domain.settings import OutboxSettings
from tidings.tasks.breaker import HALF_OPEN, OPEN, breaker_states
from tidings.tasks.dispatch import priority_router, queued_handlers
from tidings.tasks.naming import async_handlers, event_store_handlers, queue_name, relay_queue, task_name

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

log = logging.getLogger("tidings.audit")

CONFIRM_PER_BATCH = 10  # rows confirmed per round: this many times `audit_batch`


def audit_task_name(domain: Domain) -> str:
    return f"tidings.{domain.name}.audit_deliveries"


def audit_routes(domain: Domain) -> AuditRoutes:
    """Message type -> inbox keys of the queued handlers with a method for it: a superset of
    the relay's routing (stream category and `source_stream` are checked per row)."""
    polled = set(event_store_handlers(domain))
    routes = domain.bus.routes
    handlers = [
        h for h in async_handlers(domain) if h not in polled and h.element_kind != "subscriber"
    ]  # subscribers receive external payloads, never outbox rows
    found: dict[str, list[str]] = {}
    for type_string in routes.types:
        for handler in handlers:
            if routes.methods_for(handler, type_string):
                found.setdefault(type_string, []).append(task_name(domain, handler))
    return found


@dataclass
class AuditOutcome:
    """What one round did."""

    confirmed: int = 0  # rows found complete
    selected: int = 0  # rows some handler lacked
    resent: int = 0  # rows sent again
    deliveries: int = 0  # task messages sent (a row may go to several handlers)
    handlers: Counter[str] = field(default_factory=Counter)  # deliveries per handler key


def next_look(settings: OutboxSettings, resent: int, now: datetime) -> datetime:
    """When the audit may look at a row again after its `resent`-th re-send."""
    return now + timedelta(seconds=min(settings.audit_backoff_max, settings.audit_grace * 2**resent))


def audit_deliveries(
    celery: Celery, domain: Domain, settings: OutboxSettings | None = None, now: datetime | None = None
) -> AuditOutcome:
    """One audit round (see the module docstring); raises when the broker refuses a send
    (the rows stay unmarked: the next round sends them again)."""
    settings = settings or domain.settings.outbox
    now = now or datetime.now(UTC)
    deliveries = domain.storage.deliveries
    routes = audit_routes(domain)
    after = now - timedelta(seconds=settings.audit_window)
    outcome = AuditOutcome()
    outcome.confirmed = deliveries.confirm(routes, after, now, settings.audit_batch * CONFIRM_PER_BATCH)
    window = AuditWindow(
        now=now,
        before=now - timedelta(seconds=settings.audit_grace),
        after=after,
        max_resends=settings.audit_max_resends,
    )
    rows = deliveries.unconfirmed(routes, window, settings.audit_batch)
    outcome.selected = len(rows)
    if not rows:
        return outcome
    polled = set(event_store_handlers(domain))
    resent: dict[int, datetime] = {}
    complete: list[int] = []
    eager = bool(celery.conf.task_always_eager)
    deferred: list[tuple[str, str, Any]] = []
    route = priority_router(domain)  # a backfill message goes back to its backfill queue
    # A handler whose circuit breaker is open holds its messages in its queue on purpose
    # (tasks/breaker.py): re-sending them would only pile copies up behind them.
    held = {name for name, state in breaker_states(domain).items() if state in (OPEN, HALF_OPEN)}
    with celery.producer_or_acquire() as producer:
        for row in rows:
            try:
                message = Message.from_dict(row.envelope)
            except Exception as exc:  # noqa: BLE001 - the relay could not route it either
                log.error("audit: outbox row %s does not decode (%s); not audited again", row.id, exc)
                complete.append(row.id)
                continue
            exact = {task_name(domain, h): h for h in queued_handlers(domain, message, polled)}
            lacking = [exact[key] for key in row.missing if key in exact]
            if not lacking:  # a candidate of the superset only: nothing lacks it
                complete.append(row.id)
                continue
            lacking = [h for h in lacking if h.__name__ not in held]
            if not lacking:  # looked at again next round, once the breaker has closed
                continue
            payload = message.to_dict()
            for handler in lacking:
                name, queue = task_name(domain, handler), route(queue_name(domain, handler), message)
                if eager:
                    deferred.append((name, queue, payload))
                else:
                    celery.send_task(
                        name,
                        args=[payload],
                        queue=queue,
                        producer=producer,
                        task_id=f"{message.id}:{queue}:audit{row.resent + 1}",
                        kwargsrepr="{}",
                        argsrepr=f"({message.type} {message.id}, audit)",
                    )
                outcome.handlers[name] += 1
                outcome.deliveries += 1
            resent[row.id] = next_look(settings, row.resent + 1, now)
            if row.resent + 1 >= settings.audit_max_resends:
                log.error(
                    "audit: message %s re-sent %d times and still not confirmed by %s; the audit "
                    "stops re-sending it (see `tidings health`)",
                    message.id,
                    row.resent + 1,
                    ", ".join(h.__name__ for h in lacking),
                )
    deliveries.mark_audited(resent, complete, now)
    outcome.resent = len(resent)
    outcome.confirmed += len(complete)
    if outcome.resent:
        log.warning(
            "audit: re-sent %d message(s) unconfirmed after %gs (%s)",
            outcome.resent,
            settings.audit_grace,
            ", ".join(f"{k.rsplit('.', 1)[-1]}={n}" for k, n in sorted(outcome.handlers.items())),
        )
    for name, queue, arg in deferred:  # eager: after the rows are marked, as the relay does
        celery.tasks[name].apply_async(args=[arg], queue=queue)
    return outcome


def audit_lag(domain: Domain, settings: OutboxSettings | None = None, now: datetime | None = None) -> float:
    """Seconds past `audit_grace` the oldest delivery still unconfirmed has waited (0: none)."""
    settings = settings or domain.settings.outbox
    now = now or datetime.now(UTC)
    oldest = domain.storage.deliveries.oldest_unconfirmed(
        audit_routes(domain),
        before=now - timedelta(seconds=settings.audit_grace),
        after=now - timedelta(seconds=settings.audit_window),
    )
    if oldest is None:
        return 0.0
    if oldest.tzinfo is None:  # SQLite returns naive datetimes
        oldest = oldest.replace(tzinfo=UTC)
    return max(0.0, (now - oldest).total_seconds() - settings.audit_grace)


def register_audit_task(celery: Celery, domain: Domain, stats: Counter[Any]) -> Task:
    """The audit task (on the relay's queue), run by beat; `stats` counts what it re-sent."""

    @celery.task(name=audit_task_name(domain), ignore_result=True, shared=False, acks_late=False)
    def audit_deliveries_task() -> int:
        outcome = audit_deliveries(celery, domain)
        stats["audit_rounds"] += 1
        stats["audit_resent"] += outcome.resent
        stats["audit_deliveries"] += outcome.deliveries
        return outcome.resent

    return audit_deliveries_task


def audit_schedule(domain: Domain, task: Task) -> dict[str, dict[str, Any]]:
    """The beat entry: every `audit_interval` seconds on the relay's queue; a round that could
    not run in time expires (the next one does the same work)."""
    interval = domain.settings.outbox.audit_interval
    return {
        task.name: {
            "task": task.name,
            "schedule": interval,
            "options": {"queue": relay_queue(domain), "expires": max(interval * 2, 1.0)},
        }
    }
