"""`tidings status` as data: per handler its queue, lag, dead letters, breaker and workers;
the outbox; the delivery audit. Rendered by app/cli_status.py, exported by app/metrics.py.

One reading costs, whatever the number of handlers: four SQL statements (the pending outbox
rows, the per-handler backlog, the dead letters per queue, the audit's lag), none of which
reads the published rows kept for `retention` or the confirmed ones; one broker round trip
on Redis (a pipeline), one per queue on RabbitMQ and the SQLAlchemy transport; and with
`workers=True` one `inspect active_queues` broadcast, which waits its whole timeout.
`SystemStatus.cost` says what a reading took.

Lag in messages is what a handler has not handled of what was committed for it: the outbox
rows of its message types still pending, plus those published and neither applied (its inbox
row) nor dead-lettered by it, the delivery audit's own selection (outbox/progress.py). Lag
in seconds is the age of the oldest of them, from its commit. Both include what sits in its
queue and what it is running.
"""

from __future__ import annotations

import importlib
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from celery import Celery

from tidings.app.broker_queues import (
    AMQP_TRANSPORTS,
    REDIS_TRANSPORTS,
    QueueReading,
    read_queues,
    transport_of,
)
from tidings.domain.ports import Backlog
from tidings.tasks.audit import audit_lag, audit_routes
from tidings.tasks.naming import handler_queues, relay_queue, specs

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

INSPECT_TIMEOUT = 1.0  # seconds the workers have to answer `inspect active_queues`


@dataclass(frozen=True)
class HandlerStatus:
    """One handler. None: not known here (not measurable on this transport, or not asked)."""

    handler: str
    kind: str  # command_handler, event_handler, projector, subscriber
    subscription: str  # stream or event_store
    queue: str
    queue_depth: int | None  # messages waiting in its queue (all priorities)
    in_flight: int | None  # delivered, not acknowledged (Redis); running (RabbitMQ, when asked)
    lag_messages: int | None  # committed for it and not handled yet (None: event_store, subscriber)
    lag_seconds: float | None  # age of the oldest of those, from its commit
    dead_letters: int
    breaker: str | None  # its circuit breaker's state, where there is one
    workers: int | None  # workers consuming its queue


@dataclass(frozen=True)
class OutboxReading:
    pending: int
    failing: int  # pending rows whose last publish failed
    oldest_pending_age: float  # seconds
    relay_queue_depth: int | None  # relay kicks and audit rounds waiting


@dataclass(frozen=True)
class AuditReading:
    lag: float  # seconds past `audit_grace` the oldest unconfirmed delivery waited (0: none)
    grace: float


@dataclass(frozen=True)
class WorkersReading:
    checked: bool
    names: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Cost:
    statements: int  # SQL statements on the default database
    database_ms: float
    broker_ms: float
    workers_ms: float


@dataclass(frozen=True)
class SystemStatus:
    domain: str
    taken_at: datetime
    transport: str
    handlers: tuple[HandlerStatus, ...]
    outbox: OutboxReading
    audit: AuditReading
    workers: WorkersReading
    cost: Cost
    errors: tuple[str, ...] = field(default=())  # what could not be read, one line each

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["taken_at"] = self.taken_at.isoformat()
        data["workers"]["names"] = list(self.workers.names)
        data["handlers"] = [asdict(h) for h in self.handlers]
        data["errors"] = list(self.errors)
        return data


def read_status(
    domain: Domain, celery: Celery, workers: bool = True, timeout: float = INSPECT_TIMEOUT
) -> SystemStatus:
    """One reading of `domain` on `celery`'s broker (see the module docstring for its cost).
    What cannot be read (a broker down) is reported in `errors`, the rest still is."""
    now = datetime.now(UTC)
    errors: list[str] = []
    handlers = specs(domain)
    # a handler's queues: its own, its backfill queue, its partition queues (tasks/naming.py)
    own = {s.name: handler_queues(domain, s) for s in handlers}
    queues = [*dict.fromkeys(q for s in handlers for q in own[s.name])]
    with _statements(domain) as counted:
        started = time.perf_counter()
        outbox = domain.storage.deliveries.pending_summary()
        window = now - timedelta(seconds=domain.settings.outbox.audit_window)
        backlog = domain.storage.deliveries.backlog(audit_routes(domain), window)
        dead = domain.storage.dead_letters.counts()
        audit = AuditReading(round(audit_lag(domain, now=now), 1), domain.settings.outbox.audit_grace)
        database_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    try:
        readings = read_queues(celery, [*queues, relay_queue(domain)])
    except Exception as exc:  # noqa: BLE001 - reported, the database part still shows
        errors.append(f"broker: {type(exc).__name__}: {exc}")
        readings = {}
    broker_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    consuming, seen, running = _workers(celery, workers and not errors, timeout, errors)
    workers_ms = (time.perf_counter() - started) * 1000
    breakers = _breakers(domain, errors)
    rows = []
    for spec in handlers:
        reading = _summed([readings.get(q, QueueReading(depth=None)) for q in own[spec.name]])
        lag = backlog.get(spec.task_name, Backlog())
        measured = not spec.polled and spec.kind.value != "subscriber"
        rows.append(
            HandlerStatus(
                handler=spec.name,
                kind=spec.kind.value,
                subscription=str(spec.subscription.subscription_type),
                queue=spec.queue,
                queue_depth=reading.depth,
                in_flight=reading.in_flight if running is None else running.get(spec.queue, 0),
                lag_messages=lag.messages if measured else None,
                lag_seconds=_age(lag.oldest, now) if measured else None,
                dead_letters=dead.get(spec.queue, 0),
                breaker=_breaker_of(breakers, spec.name, spec.queue, spec.task_name),
                workers=reading.consumers if consuming is None else consuming.get(spec.queue, 0),
            )
        )
    return SystemStatus(
        domain=domain.name,
        taken_at=now,
        transport=transport_of(celery),
        handlers=tuple(rows),
        outbox=OutboxReading(
            pending=outbox.pending,
            failing=outbox.failing,
            oldest_pending_age=_age(outbox.oldest, now),
            relay_queue_depth=readings.get(relay_queue(domain), QueueReading(None)).depth,
        ),
        audit=audit,
        workers=seen,
        cost=Cost(counted(), round(database_ms, 2), round(broker_ms, 2), round(workers_ms, 2)),
        errors=tuple(errors),
    )


def _age(oldest: datetime | None, now: datetime) -> float:
    if oldest is None:
        return 0.0
    if oldest.tzinfo is None:  # SQLite returns naive datetimes
        oldest = oldest.replace(tzinfo=UTC)
    return max(0.0, (now - oldest).total_seconds())  # rounded where it is shown


@contextmanager
def _statements(domain: Domain) -> Iterator[Callable[[], int]]:
    """Counts the SQL statements run on the default database inside the block (not the
    `BEGIN IMMEDIATE` SQLite opens each connection's transaction with)."""
    engine = getattr(domain.storage.default, "engine", None)
    count = [0]

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        count[0] += not statement.startswith("BEGIN")

    if engine is not None:
        sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        yield lambda: count[0]
    finally:
        if engine is not None:
            sa.event.remove(engine, "before_cursor_execute", seen)


def _workers(
    celery: Celery, ask: bool, timeout: float, errors: list[str]
) -> tuple[dict[str, int] | None, WorkersReading, dict[str, int] | None]:
    """Workers per queue from their answers to `inspect active_queues` (Redis and RabbitMQ;
    the SQLAlchemy transport has no broadcast), and on RabbitMQ, where the broker does not say
    what is unacknowledged, the tasks running per queue (`inspect active`)."""
    transport = transport_of(celery)
    if transport not in (*REDIS_TRANSPORTS, *AMQP_TRANSPORTS) or celery.conf.task_always_eager:
        note = f"the {transport} transport has no broadcast to ask workers"
        return None, WorkersReading(False, note=note), None
    if not ask:
        return None, WorkersReading(False, note="not asked"), None
    try:
        answers = celery.control.inspect(timeout=timeout).active_queues() or {}
        # the workers that answered are all there are: the second broadcast returns as soon as
        # they answered again, not after its timeout (the two cannot run at once: they share
        # the app's reply queue)
        running = (
            celery.control.inspect(timeout=timeout, limit=len(answers)).active() or {}
            if transport in AMQP_TRANSPORTS and answers
            else None
        )
    except Exception as exc:  # noqa: BLE001 - reported
        errors.append(f"workers: {type(exc).__name__}: {exc}")
        return None, WorkersReading(False, note="the broadcast failed"), None
    per_queue: Counter[str] = Counter()
    for queues in answers.values():
        per_queue.update({str(q.get("name")) for q in queues or ()})
    return dict(per_queue), WorkersReading(True, tuple(sorted(answers))), _per_queue(running)


def _per_queue(running: Mapping[str, Any] | None) -> dict[str, int] | None:
    """`inspect active` answers as tasks running per queue (their delivery routing key)."""
    if running is None:
        return None
    found: Counter[str] = Counter()
    for tasks in running.values():
        found.update(str((t.get("delivery_info") or {}).get("routing_key")) for t in tasks or ())
    return dict(found)


def _breakers(domain: Domain, errors: list[str]) -> Mapping[str, str] | None:
    """`tidings.tasks.breaker.breaker_states(domain)` where that module exists, else None."""
    try:
        module = importlib.import_module("tidings.tasks.breaker")
    except ImportError:
        return None
    states = getattr(module, "breaker_states", None)
    if states is None:
        return None
    try:
        return dict(states(domain))
    except Exception as exc:  # noqa: BLE001 - reported
        errors.append(f"breakers: {type(exc).__name__}: {exc}")
        return None


def _breaker_of(states: Mapping[str, str] | None, *keys: str) -> str | None:
    if states is None:
        return None
    return next((str(states[k]) for k in keys if k in states), None)


def _summed(readings: list[QueueReading]) -> QueueReading:
    """One handler's queues read as one: the sums, None where any part cannot tell."""

    def total(values: list[int | None]) -> int | None:
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    if len(readings) == 1:
        return readings[0]
    return QueueReading(
        depth=total([r.depth for r in readings]),
        in_flight=total([r.in_flight for r in readings]),
        consumers=max((r.consumers for r in readings if r.consumers is not None), default=None),
    )
