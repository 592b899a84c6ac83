"""Dead letters: write a failed message with its reason; list, show, replay and purge.

The record is a row of the domain's `tidings_dead_letters` table (the `DeadLetters` port,
outbox/dead_letters.py), committed in the default database: it survives the broker, and the
delivery audit reads it to tell a dead-lettered delivery from a missing one. Each entry is
also published to the broker queue `<queue>.dlq` (no worker consumes it) for Celery and
Flower conventions; that copy is a mirror, and a broker that forgets it loses nothing.
Listing, showing, replaying and purging work on the table, by entry id (or message id).

Two kinds of entries: a task that failed (its decoded `body`, the envelope), and poison, a
message that never was a valid task (`body` is None, `raw_body` holds what arrived, as text).
Listing never fails on an entry it cannot decode: it shows it as `UndecodableEntry`, and a
replay skips it, and any entry that is not a task of this app, and says why.

A Celery app without a domain (`celery.tidings_domain` unset) has no table: these functions
then work on the broker queue alone, as before 0.2.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from kombu import Queue

from tidings.tasks.dead_letter import as_raw_text, dead_letter, store_of
from tidings.tasks.naming import dlq_name

log = logging.getLogger("tidings.dlq")

__all__ = ["dead_letter", "depth", "list_entries", "purge", "replay", "replay_entries"]


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


def from_table(entry: dict[str, Any]) -> dict[str, Any]:
    """A table entry whose body no longer decodes, shown as an `UndecodableEntry`."""
    if "undecodable" not in entry:
        return entry
    return {**entry, "error_type": UNDECODABLE, "error_message": entry["undecodable"]}


def list_entries(celery: Celery, queue: str, limit: int = 100) -> list[dict[str, Any]]:
    """The dead letters of `queue`, oldest first (the table's; the broker's without a domain)."""
    store = store_of(celery)
    if store is None:
        with _held(celery, queue, limit) as held:
            return [decoded(m, queue) for m in held]
    entries = [from_table(e) for e in store.entries(queue, limit)]
    # A raw list item that never became a message is dead-lettered by the Redis transport
    # (app/redis_transport.py), which has no database: it is in the broker mirror only.
    known = {e["entry_id"] for e in entries}
    try:
        with _held(celery, queue, limit) as held:
            mirror_only = [e for e in (decoded(m, queue) for m in held) if e.get("entry_id") not in known]
    except Exception:  # noqa: BLE001 - the table is the record: list it even without a broker
        log.warning("%s: the broker mirror %s could not be read", queue, dlq_name(queue), exc_info=True)
        mirror_only = []
    return (entries + [e for e in mirror_only if e.get("body") is None])[:limit]


def depth(celery: Celery, queue: str) -> int:
    """How many dead letters `queue` has (the table's count; the broker's without a domain)."""
    store = store_of(celery)
    if store is not None:
        return int(store.count(queue))
    return broker_depth(celery, queue)


def broker_depth(celery: Celery, queue: str) -> int:
    """The depth of the broker mirror `<queue>.dlq`."""
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
    if entry.get("error_type") == UNDECODABLE or "undecodable" in entry:
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
    store = store_of(celery)
    if store is not None:
        return _replay_table(celery, store, queue, message_id, limit)
    outcome = Replayed()
    with _held(celery, queue, limit) as held, celery.producer_or_acquire() as producer:
        for message in held:
            entry = decoded(message, queue)
            if not matches(entry, message_id):
                continue
            if not _republish(celery, producer, queue, entry, outcome):
                continue
            message.ack()
            outcome.replayed += 1
    return outcome


def _replay_table(celery: Celery, store: Any, queue: str, message_id: str | None, limit: int) -> Replayed:
    """Replay from the table: each entry is deleted once its re-publish succeeded; then its
    broker mirror copies are removed (best effort: the mirror is not the record)."""
    outcome = Replayed()
    gone: list[str] = []
    with celery.producer_or_acquire() as producer:
        for entry in list_entries(celery, queue, limit):
            if not matches(entry, message_id):
                continue
            if not _republish(celery, producer, queue, entry, outcome):
                continue
            store.delete([entry["entry_id"]])
            gone.append(entry["entry_id"])
            outcome.replayed += 1
    if gone:
        _drop_mirrored(celery, queue, set(gone))
    return outcome


def _drop_mirrored(celery: Celery, queue: str, entry_ids: set[str], limit: int = 10_000) -> None:
    """Remove the broker mirror copies of these entries from `<queue>.dlq`."""
    try:
        with _held(celery, queue, limit) as held:
            for message in held:
                if decoded(message, queue).get("entry_id") in entry_ids:
                    message.ack()
    except Exception:  # noqa: BLE001 - the table is the record; a stale mirror copy is harmless
        log.warning("%s: could not remove replayed entries from the broker mirror", queue, exc_info=True)


def replay(celery: Celery, queue: str, message_id: str | None = None, limit: int = 1000) -> int:
    """`replay_entries`, counting only the entries replayed."""
    return replay_entries(celery, queue, message_id, limit).replayed


def purge(celery: Celery, queue: str) -> int:
    """Delete every dead letter of `queue` (the table's and the broker mirror); returns how
    many records went (the table's; the broker's without a domain)."""
    store = store_of(celery)
    try:
        with celery.connection_for_write() as conn:
            mirrored = Queue(dlq_name(queue), routing_key=dlq_name(queue))(conn.default_channel).purge() or 0
    except Exception:
        if store is None:
            raise
        log.warning("%s: could not purge the broker mirror %s", queue, dlq_name(queue), exc_info=True)
        mirrored = 0
    return int(store.purge(queue)) if store is not None else mirrored


def as_text(entry: dict[str, Any]) -> str:
    return json.dumps(entry, indent=2, default=str)


def _republish(celery: Celery, producer: Any, queue: str, entry: dict[str, Any], outcome: Replayed) -> bool:
    """Send one entry back to its handler with the retry count reset; False (recorded in
    `outcome.skipped`, logged) when it cannot be replayed. The caller then removes it."""
    reason = unreplayable(celery, entry)
    if reason:
        outcome.skipped.append((entry.get("entry_id"), reason))
        log.warning("%s: DLQ entry %s not replayed: %s", queue, entry.get("entry_id"), reason)
        return False
    celery.send_task(entry["task"], args=[entry["body"]], queue=entry["queue"], producer=producer, retries=0)
    return True
