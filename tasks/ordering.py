"""Per-key ordering on Celery queues (`sequential_by`): routing at publish, the apply guard.

- **Publish** (`OrderedSends`, used by tasks/dispatch.py): a sequential handler's message goes
  to the partition queue of its key (`<queue>.p<i>`, domain/ordering.py), and is numbered in
  its key's order (outbox/ordering.py) in one transaction per relay batch, *before* it is
  sent; a message sent again keeps its number.
- **Apply** (`in_turn`, wrapping the handler's task body): a message runs only when its number
  is the key's next; the key moves on once the handler is done with it (applied, skipped as a
  duplicate, expired, or dead-lettered). An early message — its predecessor is still queued,
  being retried, or held by a killed worker until the broker gives it back — is sent again
  after a short wait without spending a retry. So no redelivery, lease handover or restore at
  the wrong end of a queue can apply a key out of order, and the inbox keeps it exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Reject, Retry

from tidings.domain.ordering import key_of, partition_of, partition_queue, partition_queues
from tidings.outbox.ordering import HEADS, SEQUENCES, Sequenced, SqlKeyOrder

if TYPE_CHECKING:
    from tidings.domain.domain import Domain
    from tidings.domain.envelope import Message
    from tidings.domain.specs import HandlerSpec

log = logging.getLogger("tidings.tasks")

WAIT_HEADER = "tidings_waits"  # {"waits": times waited with the key not moving, "applied": its head then}
FIRST_WAIT, LONGEST_WAIT = 0.05, 1.0  # seconds; doubling per wait


def key_order(domain: Domain) -> SqlKeyOrder | None:
    """The sequences of the domain's default database when it is PostgreSQL; else None, and
    the order rests on the partition queues alone. (Memory: one process. SQLite: the relay's
    claim transaction holds the database's only write lock while it publishes, so numbers
    cannot be committed before the sends.)"""
    default = domain.storage.default
    tables = getattr(default, "metadata", None)
    if tables is None or HEADS not in tables.tables or getattr(default, "provider", None) != "postgresql":
        return None
    return SqlKeyOrder(default, tables.tables[HEADS], tables.tables[SEQUENCES])  # type: ignore[arg-type]


def partition_queues_of(domain: Domain) -> list[str]:
    """Every partition queue of the domain's sequential handlers (what workers must consume
    beside the handlers' own queues: `tidings server` and a plain `celery worker` do)."""
    from tidings.tasks.naming import specs

    return [q for spec in specs(domain) if spec.sequential for q in partition_queues(spec.queue)]


# RabbitMQ delivers a queue declared so to one consumer at a time (the others stand by and
# take over when it goes): a partition's messages then reach one worker. Redis ignores it.
PARTITION_QUEUE_ARGUMENTS = {"x-single-active-consumer": True}


def route(spec: HandlerSpec, message: Message) -> tuple[str, str | None]:
    """(queue, key) of a message for a handler: its partition queue and key when the handler
    is sequential, else its own queue and None."""
    if not spec.sequential or spec.sequential_by is None:
        return spec.queue, None
    key = key_of(spec.sequential_by, message)
    return partition_queue(spec.queue, partition_of(key)), key


class OrderedSends:
    """Sends to sequential handlers, held until `flush()` numbers them (one transaction)."""

    def __init__(self, domain: Domain) -> None:
        self.order = key_order(domain)
        self.held: list[tuple[Sequenced, Callable[[], None]]] = []

    def add(self, handler: str, key: str, message_id: str, send: Callable[[], None]) -> None:
        if self.order is None:
            send()
        else:
            self.held.append((Sequenced(handler, key, message_id), send))

    def flush(self) -> None:
        held, self.held = self.held, []
        if self.order is not None and held:
            self.order.assign([item for item, _ in held])
        for _, send in held:
            send()


def in_turn(domain: Domain, spec: HandlerSpec, body: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a handler's task body: run a numbered message only in its key's turn."""
    order = key_order(domain)
    if order is None:
        return body
    name = spec.task_name

    def run(task: Task, envelope: Any, *args: Any, **kwargs: Any) -> Any:
        message_id = envelope.get("id") if isinstance(envelope, dict) else None
        turn = order.turn(name, str(message_id)) if message_id else None
        if turn is not None and turn.early and not task.request.is_eager:
            # (eager runs follow the publish order already, and cannot wait: no broker)
            wait_for_turn(task, turn.key, turn.seq, turn.applied)
        result = body(task, envelope, *args, **kwargs)
        if turn is not None and turn.due:
            order.advance(name, turn.key, turn.seq)
        return result

    run.__name__ = getattr(body, "__name__", name)
    return run


def release(domain: Domain, spec: HandlerSpec) -> Callable[[Any], None]:
    """What the final-failure hook calls for a sequential handler's message: the key moves on
    past a message that was dead-lettered (or dropped), so its successors run."""
    order = key_order(domain)
    name = spec.task_name

    def release_key(envelope: Any) -> None:
        message_id = envelope.get("id") if isinstance(envelope, dict) else None
        turn = order.turn(name, str(message_id)) if order is not None and message_id else None
        if turn is not None and order is not None and order.advance(name, turn.key, turn.seq):
            log.warning(
                "%s: key %r moves on past message %s (seq %d), which failed",
                name,
                turn.key,
                message_id,
                turn.seq,
            )

    return release_key


def purge_sequences(domain: Domain, older_than: datetime) -> int:
    """Forget the numbers given before `older_than` (with the inbox rows: a copy of such a
    message arriving later runs unordered, and the inbox still absorbs it until its own
    retention). The keys' heads stay."""
    order = key_order(domain)
    return order.purge(older_than, prefix=f"tidings.{domain.name}.") if order is not None else 0


def wait_for_turn(task: Task, key: str, seq: int, applied: int) -> None:
    """Send the running message again after a short wait, Celery's `retries` unchanged, and
    raise `Retry` (the worker then acknowledges the original).

    The wait grows with the distance to the key's next number (the predecessor is most likely
    running: 0.05 s per message ahead) and doubles only while the key does not move (its
    predecessor is held by a killed worker, or being retried), up to 1 s: a busy key is
    followed closely, a stuck one is not polled hard."""
    request = task.request
    last = _wait_state(request)
    stalled = last["waits"] + 1 if last["applied"] == applied else 0
    delay = min(FIRST_WAIT * (seq - applied - 1) * 2**stalled, LONGEST_WAIT)
    headers = {**(request.headers or {}), WAIT_HEADER: {"waits": stalled, "applied": applied}}
    signature = task.signature_from_request(
        request, countdown=delay, retries=request.retries, headers=headers
    )
    log.debug(
        "%s: key %r at %d, message seq %d waits %.2fs for its turn", task.name, key, applied, seq, delay
    )
    try:
        signature.apply_async()
    except Exception as exc:  # noqa: BLE001 - the broker is down: give the message back
        raise Reject(exc, requeue=True) from exc
    raise Retry(f"waits for key {key!r} at {applied}", when=delay, sig=signature)


def _wait_state(request: Any) -> dict[str, int]:
    state = (request.headers or {}).get(WAIT_HEADER) or getattr(request, WAIT_HEADER, None)
    if not isinstance(state, dict):
        return {"waits": 0, "applied": -1}
    return {"waits": int(state.get("waits") or 0), "applied": int(state.get("applied", -1))}
