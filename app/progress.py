"""Counting deliveries: how many handler runs the relayed messages call for, and how many are
done. `due == done` with nothing pending is quiescence, exactly, whatever the broker."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tidings.domain.envelope import Message
from tidings.outbox.writer import external_dispatch
from tidings.tasks.naming import async_handlers, task_name

if TYPE_CHECKING:
    from tidings.domain.domain import Domain


@dataclass(frozen=True)
class Deliveries:
    pending_rows: int  # outbox rows not relayed yet
    due: int  # handler runs called for by relayed messages (+ external messages sent)
    done: int  # inbox rows: handler runs applied

    def settled(self, dead_lettered: int = 0) -> bool:
        return self.pending_rows == 0 and self.done + dead_lettered >= self.due


def _rows(domain: Domain) -> tuple[list[str], int, list[tuple[str, datetime]]]:
    """(published envelopes, pending count, inbox (message id, processed_at)) of this domain,
    read in one snapshot by the provider's delivery log."""
    handlers = [task_name(domain, h) for h in async_handlers(domain)]
    snapshot = domain.storage.deliveries.snapshot(handlers)
    return snapshot.published, snapshot.pending, snapshot.applied


def deliveries(domain: Domain, external: int = 0) -> Deliveries:
    published, pending, inbox = _rows(domain)
    # rows for external brokers call for no handler run here
    own = [e for e in published if external_dispatch(e) is None]
    due = sum(len(domain.handlers_for(Message.from_dict(e))) for e in own) + external
    return Deliveries(pending, due, len(inbox))


def latencies(domain: Domain) -> dict[str, float]:
    """Commit -> handled, per handler run, from the event store's time and the inbox's."""
    _, _, inbox = _rows(domain)
    committed: dict[str, datetime] = {}
    for category in {domain.names.category(a) for a in domain.registry["aggregate"].values()}:
        for suffix in ("", ":command"):
            for record in domain.event_store_database.read_events(category + suffix, 0, 100_000):
                committed[record["message_id"]] = _aware(record["time"])
    gaps = sorted((_aware(done) - committed[m]).total_seconds() * 1000 for m, done in inbox if m in committed)
    if not gaps:
        return {}
    span = (max(_aware(d) for _, d in inbox) - min(committed.values())).total_seconds()
    return {
        "handled": len(gaps),
        "p50_ms": round(statistics.median(gaps), 1),
        "p95_ms": round(gaps[int(0.95 * (len(gaps) - 1))], 1),
        "max_ms": round(gaps[-1], 1),
        "per_second": round(len(gaps) / span, 1) if span > 0 else 0.0,
    }


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class RunProgress:
    """Quiescence of one test-mode run, judged per message over the messages of this run.

    A run owes one handler run per (handler task, message id) for:
    - every outbox message of this domain not yet published when the run started (pending
      then, or committed since), for each handler subscribed to it;
    - every message sent to a handler's queue from this process during the run (external
      broker messages handed to subscribers, pumps, retries) or started by the run's worker
      (a message that was already waiting in a queue).

    A debt is paid when the handler applied the message (its inbox row) or when the message
    failed for good in this run (dead-lettered or dropped, seen by the run's own failure
    hook, so purging the DLQ changes nothing), or for an event_store handler, when its
    position failed. A message with a retry due is neither, so the run is never quiescent
    while a retry is pending; every handler queue must also be empty.
    """

    def __init__(self, celery: Any, domain: Domain) -> None:
        self.celery, self.domain = celery, domain
        self.tasks = {task_name(domain, h): h for h in async_handlers(domain)}
        self.owed: set[tuple[str, str]] = set()  # from the signals: (task name, message id)
        self.failed: set[tuple[str, str]] = set()  # final failures of this run
        self.baseline = {_message_id(e) for e in domain.storage.deliveries.snapshot([]).published}
        self._receivers: list[tuple[Any, Any]] = []

    # ---- what the run's signals say ---------------------------------------------------------
    def connect(self) -> None:
        from celery import signals

        for signal, receiver in (
            (signals.before_task_publish, self._published),
            (signals.task_prerun, self._started),
            (signals.task_failure, self._failed),
            (signals.task_postrun, self._finished),
        ):
            signal.connect(receiver, weak=False)
            self._receivers.append((signal, receiver))

    def disconnect(self) -> None:
        for signal, receiver in self._receivers:
            signal.disconnect(receiver)
        self._receivers.clear()

    def _key(self, name: Any, args: Any) -> tuple[str, str] | None:
        if name not in self.tasks or not args or not isinstance(args[0], dict):
            return None
        message_id = args[0].get("id")
        return (name, str(message_id)) if message_id else None

    def _published(self, sender: Any = None, body: Any = None, **_: Any) -> None:
        args = body[0] if isinstance(body, list | tuple) and body else None
        key = self._key(sender, args)
        if key:
            self.owed.add(key)

    def _started(self, sender: Any = None, args: Any = None, **_: Any) -> None:
        key = self._key(getattr(sender, "name", None), args)
        if key and getattr(sender, "app", None) is self.celery:
            self.owed.add(key)

    def _failed(self, sender: Any = None, args: Any = None, **_: Any) -> None:
        key = self._key(getattr(sender, "name", None), args)
        if key and getattr(sender, "app", None) is self.celery:
            self.failed.add(key)

    def _finished(self, sender: Any = None, args: Any = None, retval: Any = None, **_: Any) -> None:
        if retval == "dead-lettered":  # poison, dead-lettered by the task body itself
            key = self._key(getattr(sender, "name", None), args)
            if key:
                self.failed.add(key)

    # ---- the judgement ----------------------------------------------------------------------
    def outstanding(self) -> tuple[int, set[tuple[str, str]]]:
        """(outbox rows still pending, the (task, message id) runs owed and not yet done)."""
        from tidings.tasks.positions import FAILED

        owed = set(self.owed)
        done = set(self.failed)
        pending = 0
        for name, handler in self.tasks.items():
            snapshot = self.domain.storage.deliveries.snapshot([name])
            pending = snapshot.pending
            done |= {(name, message_id) for message_id, _ in snapshot.applied}
            for envelope in snapshot.published:
                message = Message.from_dict(envelope)
                if message.id not in self.baseline and handler in self.domain.handlers_for(message):
                    owed.add((name, message.id))
        # an event_store handler's final failure is a failed position, not a DLQ entry
        done |= {
            (r["handler"], r["message_id"]) for r in self.domain.storage.positions.failures(None, FAILED)
        }
        return pending, owed - done

    def settled(self, queued: int) -> bool:
        pending, owed = self.outstanding()
        return pending == 0 and not owed and queued == 0


def _message_id(envelope: Any) -> str:
    if isinstance(envelope, str):
        import json

        envelope = json.loads(envelope)
    return str(envelope.get("id"))
