"""Counting deliveries: how many handler runs the relayed messages call for, and how many are
done. `due == done` with nothing pending is quiescence, exactly, whatever the broker."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tidings.domain.envelope import Message
from tidings.outbox.writer import external_dispatch
from tidings.tasks.naming import async_handlers, task_name


@dataclass(frozen=True)
class Deliveries:
    pending_rows: int  # outbox rows not relayed yet
    due: int  # handler runs called for by relayed messages (+ external messages sent)
    done: int  # inbox rows: handler runs applied

    def settled(self, dead_lettered: int = 0) -> bool:
        return self.pending_rows == 0 and self.done + dead_lettered >= self.due


def _rows(domain: Any) -> tuple[list[str], int, list[tuple[str, datetime]]]:
    """(published envelopes, pending count, inbox (message id, processed_at)) of this domain,
    read in one snapshot by the provider's delivery log."""
    handlers = [task_name(domain, h) for h in async_handlers(domain)]
    snapshot = domain.storage.deliveries.snapshot(handlers)
    return snapshot.published, snapshot.pending, snapshot.applied


def deliveries(domain: Any, external: int = 0) -> Deliveries:
    published, pending, inbox = _rows(domain)
    # rows for external brokers call for no handler run here
    own = [e for e in published if external_dispatch(e) is None]
    due = sum(len(domain.handlers_for(Message.from_dict(e))) for e in own) + external
    return Deliveries(pending, due, len(inbox))


def latencies(domain: Any) -> dict[str, float]:
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
