"""The event_store subscription type: a handler reads the event store itself, in global order.

One Celery task per handler (`tidings.<domain>.<Handler>.poll`, on the handler's queue) polls
one batch: own the subscription (single active consumer) -> read `messages_per_tick` records
after the cursor -> run each wanted one through `domain.run_handler` (own unit of work, inbox
row) -> save the cursor every `position_update_interval` records and at the end. A failing
message stops the batch and is retried by a later poll `retry_delay_seconds` on; after
`max_retries` it is recorded as a failed position and the cursor moves past it.

What drives it: the after-commit kick of the categories just written, the task re-scheduling
itself while batches come back full (or records arrived meanwhile), and beat every
SAFETY_NET_SECONDS. An idle poller does not re-schedule itself.
"""

from __future__ import annotations

import logging
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Celery, Task

from tidings.domain.bus import SKIPPED
from tidings.domain.envelope import Message
from tidings.tasks.dead_letter import entry_for
from tidings.tasks.handlers import NOT_RETRIED
from tidings.tasks.naming import event_store_handlers, poll_task_name, queue_name, task_name
from tidings.tasks.positions import FAILED, RETRYING, Lease, LeaseLostError, PositionStore, position_store

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

log = logging.getLogger("tidings.poller")
SAFETY_NET_SECONDS = 5.0  # beat period: catches kicks lost to a crash or a busy owner
SETTLE_DELAY_SECONDS = 0.02  # records committed but not yet settled: poll again this soon


@dataclass
class Batch:
    """What one poll did."""

    read: int = 0
    handled: int = 0
    failed: int = 0
    cursor: int = 0
    full: bool = False
    retry_in: float | None = None  # a message waits for its next attempt
    busy: bool = False  # another consumer owns the subscription


def message_of(record: dict[str, Any]) -> Message:
    """The envelope of an event-store record (its metadata is the envelope without data)."""
    return Message.from_dict({**record["metadata"], "data": record["data"]})


def poll(domain: Domain, handler: type, store: PositionStore | None = None) -> Batch:
    """Process one batch of `handler`'s event_store subscription, if no one else owns it."""
    store = store or position_store(domain)
    with store.owned(task_name(domain, handler)) as lease:
        if lease is None:
            return Batch(busy=True)
        return run_batch(domain, handler, store, lease)


def run_batch(domain: Domain, handler: type, store: PositionStore, lease: Lease) -> Batch:
    settings = domain.subscription_settings(handler)
    cursor = lease.position()
    records = domain.event_store_database.read_categories(
        domain.names.handler_categories(handler), cursor + 1, settings.messages_per_tick, settled=True
    )
    retrying = {r["global_position"]: r["attempts"] for r in store.failures(lease.name, RETRYING)}
    batch = Batch(read=len(records), full=len(records) >= settings.messages_per_tick)
    unsaved = 0
    for record in records:
        message = message_of(record)
        # Sync messages were handled inline when they were raised.
        if not domain.bus.processing.is_sync(message) and domain.bus.routes.receives(handler, message):
            outcome = _apply(
                domain,
                handler,
                store,
                lease.name,
                record,
                message,
                retrying.get(record["global_position"], 0),
                settings.max_retries,
            )
            if outcome == "retry":
                batch.full, batch.retry_in = False, float(settings.retry_delay_seconds)
                break
            batch.handled += outcome == "handled"
            batch.failed += outcome == "failed"
        cursor, unsaved = record["global_position"], unsaved + 1
        if unsaved >= settings.position_update_interval:
            lease.save(cursor)
            unsaved = 0
    if unsaved:
        lease.save(cursor)
    batch.cursor = cursor
    return batch


def _apply(
    domain: Domain,
    handler: type,
    store: PositionStore,
    name: str,
    record: dict[str, Any],
    message: Message,
    attempts_before: int,
    max_retries: int,
) -> str:
    """Run the handler once: 'handled', 'duplicate', 'retry' (try later) or 'failed' (given up)."""
    try:
        result = domain.run_handler(handler, message, idempotency_key=name)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, none stops the poller
        final = isinstance(exc, NOT_RETRIED) or attempts_before >= max_retries
        attempts = store.record_failure(name, record, exc, final)
        if final:
            _dead_letter(domain, handler, message, exc, attempts)
        log.log(
            logging.ERROR if final else logging.WARNING,
            "%s: message %s at position %d failed (attempt %d%s): %s: %s",
            name,
            message.id,
            record["global_position"],
            attempts,
            ", recorded as failed" if final else "",
            type(exc).__name__,
            exc,
        )
        return "failed" if final else "retry"
    if attempts_before:
        store.resolve(name, record["global_position"])
    return "duplicate" if result is SKIPPED else "handled"


def next_poll_in(domain: Domain, handler: type, batch: Batch) -> float | None:
    """Seconds until this poller should run again, or None when it is idle (or not the owner).

    Checked after the ownership was released: a kick that found the subscription busy was
    for records committed before this check, so they are seen here and not left waiting.
    """
    if batch.busy:
        return None
    if batch.retry_in is not None:
        return batch.retry_in
    if batch.full:
        return 0.0
    store, categories = domain.event_store_database, domain.names.handler_categories(handler)
    if store.read_categories(categories, batch.cursor + 1, 1, settled=True):
        return 0.0
    # records of a transaction that committed while an older one still runs: they become
    # readable when it ends (see tidings.domain.pg_append), so look again shortly
    return SETTLE_DELAY_SECONDS if store.read_categories(categories, batch.cursor + 1, 1) else None


def register_poller_tasks(celery: Celery, domain: Domain, stats: Counter[Any]) -> dict[type, Task]:
    """One poll task per event_store handler, routed to the handler's own queue; `stats`
    counts (poll task name, outcome) for this runtime."""
    return {h: _poller_task(celery, domain, h, stats) for h in event_store_handlers(domain)}


def _poller_task(celery: Celery, domain: Domain, handler: type, stats: Counter[Any]) -> Task:
    name, queue = poll_task_name(domain, handler), queue_name(domain, handler)

    @celery.task(name=name, bind=True, ignore_result=True, shared=False, acks_late=False)
    def poll_subscription(task: Task) -> dict[str, Any]:
        stats[(name, "polls")] += 1
        try:
            batch = poll(domain, handler)
        except LeaseLostError as exc:
            log.warning("%s", exc)
            return {"lease_lost": True}
        delay = next_poll_in(domain, handler, batch)
        stats[(name, "busy" if batch.busy else "idle" if delay is None else "rescheduled")] += 1
        if delay is not None:
            task.apply_async(queue=queue, countdown=delay or None, expires=delay + 60)
        return {
            "read": batch.read,
            "handled": batch.handled,
            "failed": batch.failed,
            "cursor": batch.cursor,
            "busy": batch.busy,
            "next_in": delay,
        }

    return poll_subscription


Pollers = dict[str, list[tuple[Task, str]]]  # category -> (poll task, queue)


def pollers_by_category(domain: Domain, tasks: dict[type, Task]) -> Pollers:
    by_category: Pollers = {}
    for handler, poller in tasks.items():
        for category in domain.names.handler_categories(handler):
            by_category.setdefault(category, []).append((poller, queue_name(domain, handler)))
    return by_category


def kick(pollers: Pollers, categories: set[str]) -> None:
    """Ask the pollers of the categories just written to poll now."""
    due = {entry for category in categories for entry in pollers.get(category, [])}
    for poller, queue in sorted(due, key=lambda entry: entry[1]):
        poller.apply_async(queue=queue, expires=60)


def poll_all(celery: Celery, domain: Domain) -> None:
    """Send every event_store handler's poller once (what beat does every few seconds)."""
    for handler in event_store_handlers(domain):
        celery.tasks[poll_task_name(domain, handler)].apply_async(
            queue=queue_name(domain, handler), expires=60
        )


def failed_count(domain: Domain) -> int:
    """Failed positions of every event_store handler (their dead letters)."""
    store = position_store(domain)  # other domains may share it: count this domain's only
    return sum(len(store.failures(task_name(domain, h), FAILED)) for h in event_store_handlers(domain))


def replay_failed(domain: Domain, handler: type, message_id: str | None = None) -> tuple[int, int]:
    """Re-run the handler for its failed positions (or one message); a success removes the row.

    Returns (replayed, still failing).
    """
    store, name = position_store(domain), task_name(domain, handler)
    categories = domain.names.handler_categories(handler)
    ok = failing = 0
    for row in store.failures(name, FAILED):
        if message_id and row["message_id"] != message_id:
            continue
        found = domain.event_store_database.read_categories(categories, row["global_position"], 1)
        if not found or found[0]["global_position"] != row["global_position"]:
            log.error("%s: position %d is no longer in the event store", name, row["global_position"])
            failing += 1
            continue
        try:
            domain.run_handler(handler, message_of(found[0]), idempotency_key=name)
        except Exception as exc:  # noqa: BLE001 - recorded again, with the new reason
            store.record_failure(name, found[0], exc, final=True)
            failing += 1
            continue
        store.resolve(name, row["global_position"])
        _forget_dead_letter(domain, handler, row["message_id"])
        ok += 1
    return ok, failing


def _dead_letter(domain: Domain, handler: type, message: Message, exc: BaseException, attempts: int) -> None:
    """A position given up on is a dead letter like any other: the same table, the same
    `tidings dlq` (its replay re-runs the position, see `replay_failed`). The failed position
    stays too: it is what moves the cursor past the message and what a replay re-reads."""
    entry = entry_for(
        queue=queue_name(domain, handler),
        task=task_name(domain, handler),
        body=message.to_dict(),
        error=exc,
        attempts=attempts,
        traceback="".join(traceback.format_exception(exc)),
    )
    try:
        domain.storage.dead_letters.record({**entry, "handler": task_name(domain, handler)})
    except Exception:  # noqa: BLE001 - the failed position holds the failure either way
        log.exception("%s: could not record the dead letter of %s", task_name(domain, handler), message.id)


def _forget_dead_letter(domain: Domain, handler: type, message_id: str) -> None:
    """A replayed position succeeded: its dead letter goes (the position row already went)."""
    letters = domain.storage.dead_letters
    name = task_name(domain, handler)
    done = [
        e["entry_id"]
        for e in letters.entries(queue_name(domain, handler), limit=10_000)
        if e.get("message_id") == message_id and e.get("handler") in (name, None)
    ]
    if done:
        letters.delete(done)
