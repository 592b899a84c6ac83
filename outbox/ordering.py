"""Per-key sequences of `sequential_by` handlers: assigned when the relay publishes, and the
apply guard's bookkeeping (what each key has applied).

Two tables in the domain's database, beside the outbox:

- `tidings_key_heads` (handler, key) -> `assigned` (the last sequence number given to a
  message of that key) and `applied` (the last one the handler is done with: applied,
  skipped, or dead-lettered).
- `tidings_key_sequence` (handler, message id) -> key, sequence number. Assigned once: a
  message published again (a relay retry, the delivery audit) keeps its number, so numbers
  have no gaps and a lost copy is recovered by the next copy of the same message.

A message is applied only when its number is `applied + 1`; later ones wait. The numbers are
committed before the message is sent, so every number belongs to a message that is (or will
again be) published: a key can never wait for a number no message carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

HEADS, SEQUENCES = "tidings_key_heads", "tidings_key_sequence"


def define_key_order(metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    heads = sa.Table(
        HEADS,
        metadata,
        sa.Column("handler", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("assigned", sa.BigInteger, nullable=False),
        sa.Column("applied", sa.BigInteger, nullable=False),
    )
    sequences = sa.Table(
        SEQUENCES,
        metadata,
        sa.Column("handler", sa.String(255), primary_key=True),
        sa.Column("message_id", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    return heads, sequences


@dataclass(frozen=True)
class Sequenced:
    """One message of one sequential handler, to number before it is sent."""

    handler: str  # the handler's inbox key (`tidings.<domain>.<Handler>`)
    key: str
    message_id: str


@dataclass(frozen=True)
class Turn:
    """Where a message stands in its key's order."""

    key: str
    seq: int
    applied: int  # the key's last number the handler is done with

    @property
    def due(self) -> bool:
        return self.seq == self.applied + 1

    @property
    def early(self) -> bool:
        """An earlier message of the key is not done yet: this one waits."""
        return self.seq > self.applied + 1


class HasEngine(Protocol):
    """A SQL database (its engine built lazily, so after a fork) or anything with an engine."""

    @property
    def engine(self) -> sa.Engine: ...


class SqlKeyOrder:
    """The per-key sequences of one database (SQLite or PostgreSQL)."""

    def __init__(self, source: HasEngine, heads: sa.Table, sequences: sa.Table) -> None:
        self.source, self.heads, self.sequences = source, heads, sequences

    @property
    def engine(self) -> sa.Engine:
        return self.source.engine  # looked up per call: the database rebuilds it after dispose()

    def assign(self, items: Sequence[Sequenced]) -> None:
        """Number every item not numbered yet, in the given order, in one transaction."""
        if not items:
            return
        s = self.sequences
        with self.engine.begin() as conn:
            known: set[tuple[str, str]] = set()
            for handler in {i.handler for i in items}:
                ids = [i.message_id for i in items if i.handler == handler]
                rows = conn.execute(
                    sa.select(s.c.message_id).where(s.c.handler == handler, s.c.message_id.in_(ids))
                ).all()
                known.update((handler, r.message_id) for r in rows)
            fresh: dict[tuple[str, str], list[Sequenced]] = {}
            for item in items:
                if (item.handler, item.message_id) not in known:
                    known.add((item.handler, item.message_id))  # a message twice in one batch
                    fresh.setdefault((item.handler, item.key), []).append(item)
            now, rows_out = datetime.now(UTC), []
            # keys in a fixed order: two relays lock the heads rows in the same order (no deadlock)
            for (handler, key), group in sorted(fresh.items()):
                last = self._reserve(conn, handler, key, len(group))
                first = last - len(group) + 1
                rows_out += [
                    {
                        "handler": handler,
                        "message_id": i.message_id,
                        "key": key,
                        "seq": first + n,
                        "created_at": now,
                    }
                    for n, i in enumerate(group)
                ]
            if rows_out:
                conn.execute(sa.insert(s), rows_out)

    def _reserve(self, conn: sa.Connection, handler: str, key: str, count: int) -> int:
        """Add `count` to the key's `assigned` (creating its row); returns the new value."""
        h = self.heads
        insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(h)
        upsert = insert.values(handler=handler, key=key, assigned=count, applied=0).on_conflict_do_update(
            index_elements=[h.c.handler, h.c.key], set_={"assigned": h.c.assigned + count}
        )
        return int(conn.execute(upsert.returning(h.c.assigned)).scalar_one())

    def turn(self, handler: str, message_id: str) -> Turn | None:
        """Where the message stands, or None when it was never numbered (published before its
        handler was sequential, or by a path that does not number: it runs unordered)."""
        s, h = self.sequences, self.heads
        query = (
            sa.select(s.c.key, s.c.seq, h.c.applied)
            .join(h, sa.and_(h.c.handler == s.c.handler, h.c.key == s.c.key))
            .where(s.c.handler == handler, s.c.message_id == message_id)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else Turn(row.key, int(row.seq), int(row.applied))

    def advance(self, handler: str, key: str, seq: int) -> bool:
        """Mark number `seq` of the key done, if it is the next one (idempotent: a second call,
        or a call for a stale number, changes nothing). True when it moved the key on."""
        h = self.heads
        with self.engine.begin() as conn:
            moved = conn.execute(
                sa.update(h)
                .where(h.c.handler == handler, h.c.key == key, h.c.applied == seq - 1)
                .values(applied=seq)
            ).rowcount
        return bool(moved)

    def purge(self, older_than: datetime, prefix: str) -> int:
        """Forget the numbers of `prefix`'s messages numbered before `older_than` (the keys'
        heads stay: they are the order's state)."""
        s = self.sequences
        with self.engine.begin() as conn:
            return conn.execute(
                sa.delete(s).where(
                    s.c.created_at < older_than, s.c.handler.startswith(prefix, autoescape=True)
                )
            ).rowcount
