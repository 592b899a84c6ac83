"""Writing a dead letter: the domain's `tidings_dead_letters` row (the record that survives
the broker) and its mirror on the broker queue `<queue>.dlq` (see tasks/dlq.py)."""

from __future__ import annotations

import json
import logging
import traceback as tb
import uuid
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from kombu import Queue

from tidings.tasks.naming import async_handlers, dlq_name, queue_name, task_name

log = logging.getLogger("tidings.dlq")
# The broker mirror is tried briefly: the record that matters is already in the database.
ONCE = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5}


def store_of(celery: Celery) -> Any:
    """The `DeadLetters` store of the app's domain, or None for an app without a domain."""
    domain = getattr(celery, "tidings_domain", None)
    storage = getattr(domain, "storage", None) if domain is not None else None
    return getattr(storage, "dead_letters", None)


def handler_key(celery: Celery, queue: str) -> str | None:
    """The inbox key (`tidings.<domain>.<Handler>`) of the handler consuming `queue`: the key
    the audit reads dead letters by (a pack task's failure counts for its handler)."""
    domain = getattr(celery, "tidings_domain", None)
    if domain is None:
        return None
    for handler in async_handlers(domain):
        if queue_name(domain, handler) == queue:
            return task_name(domain, handler)
    return None


def as_raw_text(raw: bytes | str | None) -> str | None:
    """What arrived on the wire, as text: UTF-8, undecodable bytes as `\\xNN` escapes (a pickle
    stays readable and is never loaded)."""
    if raw is None or isinstance(raw, str):
        return raw
    return bytes(raw).decode("utf-8", errors="backslashreplace")


def entry_for(
    *,
    queue: str,
    task: str | None,
    body: Any,
    error: BaseException | str,
    attempts: int,
    traceback: str | None = None,
    raw_body: bytes | str | None = None,
    error_type: str | None = None,
    headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One DLQ entry (JSON-ready). `error` is the reason: an exception, or a sentence with
    `error_type` naming its kind. `raw_body` is set for poison, what never decoded into a task."""
    if isinstance(error, BaseException):
        error_type, error_message = error_type or type(error).__name__, str(error)
        traceback = traceback or "".join(tb.format_exception(error))
    else:
        error_type, error_message = error_type or "InvalidMessage", error
    entry = {
        "entry_id": uuid.uuid4().hex,  # every entry has an id, also poison without a message id
        "queue": queue,
        "task": task,
        "body": body,
        "message_id": body.get("id") if isinstance(body, dict) else None,
        "error_type": error_type,
        "error_message": error_message,
        "traceback": traceback,
        "attempts": attempts,
        "failed_at": datetime.now(UTC).isoformat(),
    }
    if raw_body is not None:
        entry["raw_body"] = as_raw_text(raw_body)
    if headers:
        entry["headers"] = json.loads(json.dumps(headers, default=str))
    return entry


def dead_letter(
    celery: Celery,
    *,
    queue: str,
    task: str | None,
    body: Any,
    error: BaseException | str,
    attempts: int,
    traceback: str | None = None,
    raw_body: bytes | str | None = None,
    error_type: str | None = None,
    headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record one dead letter (see `entry_for`) in the domain's table, then mirror it to the
    broker queue `<queue>.dlq`; returns it. Raises only when neither took it (the failure
    hooks then log it, and the audit sends the message again after its grace)."""
    entry = entry_for(
        queue=queue,
        task=task,
        body=body,
        error=error,
        attempts=attempts,
        traceback=traceback,
        raw_body=raw_body,
        error_type=error_type,
        headers=headers,
    )
    entry["handler"] = handler_key(celery, queue)
    error_type, error_message = entry["error_type"], entry["error_message"]
    store = store_of(celery)
    recorded = False
    if store is not None:
        try:
            store.record(entry)
            recorded = True
        except Exception:  # noqa: BLE001 - the broker copy below may still take it
            log.exception("%s: could not record dead letter %s in the database", queue, entry["entry_id"])
    dlq = Queue(dlq_name(queue), routing_key=dlq_name(queue))
    try:
        with celery.producer_or_acquire() as producer:
            producer.publish(
                entry,
                routing_key=dlq.routing_key,
                serializer="json",
                declare=[dlq],
                retry=True,
                retry_policy=ONCE,
            )
    except Exception:
        if not recorded:
            raise
        log.warning("%s: dead letter %s recorded, but not mirrored to %s", queue, entry["entry_id"], dlq.name)
    log.error(
        "message %s dead-lettered (%s) after %d attempt(s): %s: %s",
        entry["message_id"] or entry["entry_id"],
        dlq.name,
        attempts,
        error_type,
        error_message,
    )
    return entry
