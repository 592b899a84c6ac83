"""The dead-letter queue `<queue>.dlq`: write a failed message with its reason; list, show,
replay and purge. A plain broker queue that no worker consumes, so it works the same on
Redis, RabbitMQ and the embedded SQLAlchemy transport.

Two kinds of entries: a task that failed (its decoded `body`, the envelope), and poison, a
message that never was a valid task (`body` is None, `raw_body` holds what arrived, as text).
Listing never fails on an entry it cannot decode: it shows it as `UndecodableEntry`, and a
replay skips it, and any entry that is not a task of this app, and says why.
"""

from __future__ import annotations

import json
import logging
import traceback as tb
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from kombu import Queue

from tidings.tasks.naming import dlq_name

log = logging.getLogger("tidings.dlq")


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
    """Publish one DLQ entry (see `entry_for`); returns it."""
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
    error_type, error_message = entry["error_type"], entry["error_message"]
    with celery.producer_or_acquire() as producer:
        dlq = Queue(dlq_name(queue), routing_key=dlq_name(queue))
        producer.publish(entry, routing_key=dlq.routing_key, serializer="json", declare=[dlq], retry=True)
    log.error(
        "message %s moved to %s after %d attempt(s): %s: %s",
        entry["message_id"] or entry["entry_id"],
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
        # accept JSON only: a consumer without `accept` would load any content type, pickle too.
        simple = conn.SimpleQueue(
            Queue(dlq_name(queue), routing_key=dlq_name(queue)), serializer="json", accept=["json"]
        )
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


UNDECODABLE = "UndecodableEntry"


def decoded(message: Any, queue: str) -> dict[str, Any]:
    """A held DLQ message as its entry; one that does not decode to an entry (its body is not
    JSON, a refused content type, not an object) becomes an `UndecodableEntry` with the reason
    and its raw body as text, so one bad entry never hides the others."""
    try:
        payload = message.payload
        if not isinstance(payload, dict):
            raise ValueError(f"a DLQ entry is a JSON object, got {type(payload).__name__}")
        return payload
    except Exception as exc:  # noqa: BLE001 - whatever the decoder raised is the reason
        return {
            "entry_id": None,
            "queue": queue,
            "task": None,
            "body": None,
            "message_id": None,
            "error_type": UNDECODABLE,
            "error_message": f"{type(exc).__name__}: {exc}",
            "raw_body": as_raw_text(getattr(message, "body", None)),
            "content_type": getattr(message, "content_type", None),
            "attempts": None,
            "failed_at": None,
        }


def list_entries(celery: Celery, queue: str, limit: int = 100) -> list[dict[str, Any]]:
    with _held(celery, queue, limit) as held:
        return [decoded(m, queue) for m in held]


def depth(celery: Celery, queue: str) -> int:
    with celery.connection_for_write() as conn:
        try:
            _, count, _ = Queue(dlq_name(queue), routing_key=dlq_name(queue))(
                conn.default_channel
            ).queue_declare(passive=False)
        except Exception:  # noqa: BLE001 - a transport that cannot count reports 0
            return 0
        return count or 0


@dataclass
class Replayed:
    """What a replay did: how many entries went back to their handler, and the entries it
    left in the DLQ because they cannot be replayed, with why (entry id or None, reason)."""

    replayed: int = 0
    skipped: list[tuple[str | None, str]] = field(default_factory=list)


def unreplayable(celery: Celery, entry: dict[str, Any]) -> str | None:
    """Why `entry` cannot go back to a handler, or None when it can."""
    if entry.get("error_type") == UNDECODABLE:
        return f"undecodable entry ({entry.get('error_message')})"
    if entry.get("body") is None and "raw_body" in entry:
        return f"never was a valid task ({entry.get('error_type')}: {entry.get('error_message')})"
    if entry.get("task") not in celery.tasks:
        return f"no task named {entry.get('task')!r} in this app"
    return None


def matches(entry: dict[str, Any], wanted: str | None) -> bool:
    """An entry is named by its message id or its entry id."""
    return wanted is None or wanted in (entry.get("message_id"), entry.get("entry_id"))


def replay_entries(celery: Celery, queue: str, message_id: str | None = None, limit: int = 1000) -> Replayed:
    """Send entries back to their handler with the retry count reset. An entry leaves the DLQ
    only after its re-publish succeeded; one that cannot be replayed stays, and is reported."""
    outcome = Replayed()
    with _held(celery, queue, limit) as held, celery.producer_or_acquire() as producer:
        for message in held:
            entry = decoded(message, queue)
            if not matches(entry, message_id):
                continue
            reason = unreplayable(celery, entry)
            if reason:
                outcome.skipped.append((entry.get("entry_id"), reason))
                log.warning("%s: DLQ entry %s not replayed: %s", queue, entry.get("entry_id"), reason)
                continue
            celery.send_task(
                entry["task"], args=[entry["body"]], queue=entry["queue"], producer=producer, retries=0
            )
            message.ack()
            outcome.replayed += 1
    return outcome


def replay(celery: Celery, queue: str, message_id: str | None = None, limit: int = 1000) -> int:
    """`replay_entries`, counting only the entries replayed."""
    return replay_entries(celery, queue, message_id, limit).replayed


def purge(celery: Celery, queue: str) -> int:
    with celery.connection_for_write() as conn:
        return Queue(dlq_name(queue), routing_key=dlq_name(queue))(conn.default_channel).purge() or 0


def as_text(entry: dict[str, Any]) -> str:
    return json.dumps(entry, indent=2, default=str)
