"""The relay: claim due outbox rows, publish them, mark them published — in one transaction.

A relay claims only the rows its own domain wrote (the `domain` column): domains may share
a database, and a row of another domain has no handler here.

Two relays never publish the same row: PostgreSQL claims with `FOR UPDATE SKIP LOCKED`;
SQLite transactions begin IMMEDIATE (one writer at a time); the memory store holds a lock.
A failed publish leaves that row and the rest of its batch pending with `attempts`,
`last_error` and an exponential backoff in `next_attempt_at`, in their order; nothing is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from tidings.outbox.tables import PENDING, PUBLISHED

log = logging.getLogger("tidings.outbox")

# Takes one envelope (JSON text); raises when it cannot publish. May buffer: then it has a
# `flush()` that sends the buffer (and raises when it cannot), called before rows are marked.
Publish = Callable[[str], None]


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0
    maximum: float = 60.0

    def delay(self, attempts: int) -> timedelta:
        return timedelta(seconds=min(self.maximum, self.base * 2 ** max(attempts - 1, 0)))


@dataclass(frozen=True)
class OutboxStatus:
    pending: int
    published: int
    failing: int  # pending rows whose last publish failed
    oldest_pending_age: float  # seconds; 0 when nothing is pending


class OutboxStore(Protocol):
    """The outbox port: relay one domain's rows, purge them, report on them."""

    def relay_batch(self, publish: Publish, batch_size: int, backoff: Backoff) -> int:
        """Claim up to `batch_size` due rows of this domain in id order, publish them, mark
        the published ones; back the failed row and the rest of its batch off. Returns how
        many were published."""
        ...

    def purge_published(self, older_than: datetime) -> int:
        """Delete this domain's rows published before `older_than`; returns how many."""
        ...

    def status(self) -> OutboxStatus:
        """Counts and lag of this domain's rows."""
        ...


class HasEngine(Protocol):
    """Anything with an engine: a SQL database (built lazily, so after a fork) or an Engine."""

    @property
    def engine(self) -> sa.Engine: ...


def _now() -> datetime:
    return datetime.now(UTC)


class SqlOutbox:
    """The outbox of one domain in a SQL table that other domains may share."""

    def __init__(self, source: HasEngine, table: sa.Table, domain: str) -> None:
        self.source = source
        self.table = table
        self.domain = domain

    @property
    def engine(self) -> sa.Engine:
        return self.source.engine  # looked up per call: the database rebuilds it after dispose()

    def relay_batch(self, publish: Publish, batch_size: int, backoff: Backoff) -> int:
        t, now = self.table, _now()
        claim = (
            sa.select(t.c.id, t.c.envelope, t.c.attempts)
            .where(t.c.domain == self.domain, t.c.status == PENDING, t.c.next_attempt_at <= now)
            .order_by(t.c.id)
            .limit(batch_size)
        )
        if self.engine.dialect.name == "postgresql":
            claim = claim.with_for_update(skip_locked=True)
        with self.engine.begin() as conn:
            rows = conn.execute(claim).all()
            done, error = _publish_all(rows, publish)
            if done:
                conn.execute(
                    sa.update(t)
                    .where(t.c.id.in_(done))
                    .values(status=PUBLISHED, published_at=now, last_error=None)
                )
            for row in rows[len(done) :] if error is not None else ():
                # the whole rest of the batch waits: publishing them now could overtake the
                # failed row of the same stream, and the broker is likely down for all of them
                conn.execute(
                    sa.update(t)
                    .where(t.c.id == row.id)
                    .values(
                        attempts=row.attempts + 1,
                        last_error=error,
                        next_attempt_at=now + backoff.delay(row.attempts + 1),
                    )
                )
        return len(done)

    def purge_published(self, older_than: datetime) -> int:
        t = self.table
        with self.engine.begin() as conn:
            return conn.execute(
                sa.delete(t).where(
                    t.c.domain == self.domain, t.c.status == PUBLISHED, t.c.published_at < older_than
                )
            ).rowcount

    def status(self) -> OutboxStatus:
        t = self.table
        own = t.c.domain == self.domain
        with self.engine.connect() as conn:
            counts: dict[str, int] = dict(
                conn.execute(sa.select(t.c.status, sa.func.count()).where(own).group_by(t.c.status)).all()
            )
            failing = conn.execute(
                sa.select(sa.func.count()).where(own, t.c.status == PENDING, t.c.attempts > 0)
            ).scalar()
            oldest = conn.execute(
                sa.select(sa.func.min(t.c.created_at)).where(own, t.c.status == PENDING)
            ).scalar()
        return OutboxStatus(counts.get(PENDING, 0), counts.get(PUBLISHED, 0), failing or 0, _age(oldest))


def _age(created: datetime | None) -> float:
    if created is None:
        return 0.0
    if created.tzinfo is None:  # SQLite returns naive datetimes
        created = created.replace(tzinfo=UTC)
    return max(0.0, (_now() - created).total_seconds())


def _publish_all(rows: Sequence[Any], publish: Publish) -> tuple[list[int], str | None]:
    """Publish rows in order; stop at the first failure and report it.

    A publisher that buffers (a Redis pipeline) has a `flush()`: it runs before anything is
    reported done, and if it fails no row of the batch counts as published (some may have
    reached the broker: a duplicate, which the inbox absorbs, never a loss).
    """
    done: list[int] = []
    error: str | None = None
    for row in rows:
        try:
            publish(row.envelope if hasattr(row, "envelope") else row["envelope"])
        except Exception as exc:  # noqa: BLE001 - any broker failure leaves the row pending
            log.warning("outbox publish failed after %d of %d: %s", len(done), len(rows), exc)
            error = f"{type(exc).__name__}: {exc}"
            break
        done.append(row.id if hasattr(row, "id") else row["id"])
    flush = getattr(publish, "flush", None)
    if done and flush is not None:
        try:
            flush()
        except Exception as exc:  # noqa: BLE001 - the whole batch stays pending
            log.warning("outbox publish of %d message(s) failed at flush: %s", len(done), exc)
            return [], f"{type(exc).__name__}: {exc}"
    return done, error


class MemoryOutbox:
    """The outbox of the memory provider: rows in a list, claimed under the database lock."""

    def __init__(self, rows: list[dict], lock: Any, domain: str) -> None:
        self.rows = rows
        self.lock = lock
        self.domain = domain

    def _own(self) -> list[dict]:
        return [r for r in self.rows if r["domain"] == self.domain]

    def relay_batch(self, publish: Publish, batch_size: int, backoff: Backoff) -> int:
        now = _now()
        with self.lock:
            due = [r for r in self._own() if r["status"] == PENDING and r["next_attempt_at"] <= now][
                :batch_size
            ]
            done, error = _publish_all(due, publish)
            for row in due[: len(done)]:
                row.update(status=PUBLISHED, published_at=now, last_error=None)
            for row in due[len(done) :] if error is not None else ():
                row["attempts"] += 1
                row.update(last_error=error, next_attempt_at=now + backoff.delay(row["attempts"]))
        return len(done)

    def purge_published(self, older_than: datetime) -> int:
        with self.lock:
            keep = [
                r
                for r in self.rows
                if not (
                    r["domain"] == self.domain and r["status"] == PUBLISHED and r["published_at"] < older_than
                )
            ]
            removed = len(self.rows) - len(keep)
            self.rows[:] = keep
        return removed

    def status(self) -> OutboxStatus:
        with self.lock:
            own = self._own()
            pending = [r for r in own if r["status"] == PENDING]
            published = sum(r["status"] == PUBLISHED for r in own)
            oldest = min((r["created_at"] for r in pending), default=None)
            failing = sum(r["attempts"] > 0 for r in pending)
        return OutboxStatus(len(pending), published, failing, _age(oldest))


def relay_pending_messages(
    store: OutboxStore, publish: Publish, batch_size: int, backoff: Backoff, max_rounds: int = 1000
) -> int:
    """Relay rounds while they come back full; returns how many messages were published."""
    total = 0
    for _ in range(max_rounds):
        published = store.relay_batch(publish, batch_size, backoff)
        total += published
        if published < batch_size:
            break
    return total
