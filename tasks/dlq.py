"""The dead-letter queue `<queue>.dlq`: write a failed message with its reason; list, show,
replay and purge. A plain broker queue that no worker consumes, so it works the same on
Redis, RabbitMQ and the embedded SQLAlchemy transport."""

from __future__ import annotations

import json
import logging
import traceback as tb
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from kombu import Queue

from tidings.tasks.naming import dlq_name

log = logging.getLogger("tidings.dlq")


def dead_letter(
    celery: Celery,
    *,
    queue: str,
    task: str,
    body: Any,
    error: BaseException | str,
    attempts: int,
    traceback: str | None = None,
) -> dict[str, Any]:
    """Publish one DLQ entry; returns it."""
    if isinstance(error, BaseException):
        error_type, error_message = type(error).__name__, str(error)
        traceback = traceback or "".join(tb.format_exception(error))
    else:
        error_type, error_message = "InvalidMessage", error
    entry = {
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
    with celery.producer_or_acquire() as producer:
        dlq = Queue(dlq_name(queue), routing_key=dlq_name(queue))
        producer.publish(entry, routing_key=dlq.routing_key, serializer="json", declare=[dlq], retry=True)
    log.error(
        "message %s moved to %s after %d attempt(s): %s: %s",
        entry["message_id"],
        dlq.name,
        attempts,
        error_type,
        error_message,
    )
    return entry


@contextmanager
def _held(celery: Celery, queue: str, limit: int) -> Iterator[list[Any]]:
    """Fetch up to `limit` DLQ messages without acknowledging them; the caller acks what it
    removes, and whatever is left goes back to the queue when the connection closes."""
    with celery.connection_for_write() as conn:
        simple = conn.SimpleQueue(Queue(dlq_name(queue), routing_key=dlq_name(queue)), serializer="json")
        held = []
        try:
            for _ in range(limit):
                try:
                    held.append(simple.get(block=False))
                except simple.Empty:
                    break
            yield held
        finally:
            for message in held:
                if not message.acknowledged:
                    message.requeue()
            simple.close()


def list_entries(celery: Celery, queue: str, limit: int = 100) -> list[dict[str, Any]]:
    with _held(celery, queue, limit) as held:
        return [m.payload for m in held]


def depth(celery: Celery, queue: str) -> int:
    with celery.connection_for_write() as conn:
        try:
            _, count, _ = Queue(dlq_name(queue), routing_key=dlq_name(queue))(
                conn.default_channel
            ).queue_declare(passive=False)
        except Exception:  # noqa: BLE001 - a transport that cannot count reports 0
            return 0
        return count or 0


def replay(celery: Celery, queue: str, message_id: str | None = None, limit: int = 1000) -> int:
    """Send entries back to their handler with the retry count reset. An entry leaves the DLQ
    only after its re-publish succeeded."""
    replayed = 0
    with _held(celery, queue, limit) as held, celery.producer_or_acquire() as producer:
        for message in held:
            entry = message.payload
            if message_id and entry.get("message_id") != message_id:
                continue
            celery.send_task(
                entry["task"], args=[entry["body"]], queue=entry["queue"], producer=producer, retries=0
            )
            message.ack()
            replayed += 1
    return replayed


def purge(celery: Celery, queue: str) -> int:
    with celery.connection_for_write() as conn:
        return Queue(dlq_name(queue), routing_key=dlq_name(queue))(conn.default_channel).purge() or 0


def as_text(entry: dict[str, Any]) -> str:
    return json.dumps(entry, indent=2, default=str)
