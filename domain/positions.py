"""The positions port's providers: cursors, ownership and failed positions of event_store
subscriptions, in the default database.

A subscription is owned by one consumer at a time (`PositionStore.owned`): PostgreSQL by a
session advisory lock on a key derived from the subscription name, SQLite by a lease row with a
fencing token, memory by a process lock. Cursor saves carry the token, so a consumer that lost
its lease cannot move the cursor.
"""

from __future__ import annotations

import hashlib
import threading
import time
import traceback as tb
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from tidings.domain.errors import TidingsError
from tidings.domain.ports import Lease, Positions

if TYPE_CHECKING:
    from tidings.domain.memory import MemoryDatabase
    from tidings.domain.sql import SqlDatabase

RETRYING, FAILED = "retrying", "failed"
LEASE_SECONDS = 60.0  # renewed by every cursor save; outlives any one batch


class LeaseLostError(TidingsError):
    """Another consumer took this subscription over; this one must stop."""


PositionStore = Positions  # the port's name before tidings.domain.ports
__all__ = [
    "FAILED",
    "RETRYING",
    "Lease",
    "LeaseLostError",
    "MemoryPositions",
    "PositionStore",
    "SqlPositions",
]


def failure_row(
    name: str, record: dict[str, Any], error: BaseException, attempts: int, final: bool
) -> dict[str, Any]:
    return {
        "handler": name,
        "global_position": record["global_position"],
        "message_id": record["message_id"],
        "type": record["type"],
        "status": FAILED if final else RETRYING,
        "error_type": type(error).__name__,
        "error_message": str(error),
        "traceback": "".join(tb.format_exception(error)),
        "attempts": attempts,
        "failed_at": datetime.now(UTC),
    }


class _MemoryLease:
    def __init__(self, db: MemoryDatabase, name: str) -> None:
        self.db, self.name = db, name

    def position(self) -> int:
        with self.db.lock:
            return self.db.positions.get(self.name, 0)

    def save(self, position: int) -> None:
        with self.db.lock:
            self.db.positions[self.name] = position


class MemoryPositions:
    def __init__(self, db: MemoryDatabase) -> None:
        self.db = db

    @contextmanager
    def owned(self, name: str) -> Iterator[_MemoryLease | None]:
        with self.db.lock:
            lock = self.db.subscription_locks.setdefault(name, threading.Lock())
        if not lock.acquire(blocking=False):
            yield None
            return
        try:
            yield _MemoryLease(self.db, name)
        finally:
            lock.release()

    def reset(self, name: str, position: int = 0) -> None:
        with self.db.lock:
            self.db.positions[name] = position

    def failures(self, name: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        with self.db.lock:
            rows = [
                dict(r)
                for (n, _), r in sorted(self.db.failed_positions.items())
                if (name is None or n == name) and (status is None or r["status"] == status)
            ]
        return rows

    def record_failure(self, name: str, record: dict[str, Any], error: BaseException, final: bool) -> int:
        key = (name, record["global_position"])
        with self.db.lock:
            attempts = self.db.failed_positions.get(key, {}).get("attempts", 0) + 1
            self.db.failed_positions[key] = failure_row(name, record, error, attempts, final)
        return attempts

    def resolve(self, name: str, global_position: int) -> None:
        with self.db.lock:
            self.db.failed_positions.pop((name, global_position), None)

    def purge(self, name: str) -> int:
        with self.db.lock:
            keys = [k for k, r in self.db.failed_positions.items() if k[0] == name and r["status"] == FAILED]
            for key in keys:
                del self.db.failed_positions[key]
        return len(keys)

    def forget(self, name: str) -> None:
        """Drop the cursor, the failed positions and the inbox rows of `name` (for a rebuild)."""
        with self.db.lock:
            self.db.positions.pop(name, None)
            for key in [k for k in self.db.failed_positions if k[0] == name]:
                del self.db.failed_positions[key]
            for inbox_key in [k for k in self.db.inbox if k[0] == name]:
                del self.db.inbox[inbox_key]  # in place: the inbox and delivery log share this dict


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for `pg_try_advisory_lock`, derived from the name."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


class _SqlLease:
    def __init__(self, store: SqlPositions, name: str, token: str) -> None:
        self.store, self.name, self.token = store, name, token

    def position(self) -> int:
        t = self.store.positions
        with self.store.engine.connect() as conn:
            return conn.execute(sa.select(t.c.position).where(t.c.handler == self.name)).scalar() or 0

    def save(self, position: int) -> None:
        t = self.store.positions
        with self.store.engine.begin() as conn:
            saved = conn.execute(
                sa.update(t)
                .where(t.c.handler == self.name, t.c.owner == self.token)
                .values(
                    position=position, updated_at=datetime.now(UTC), lease_until=time.time() + LEASE_SECONDS
                )
            ).rowcount
        if saved != 1:
            raise LeaseLostError(f"{self.name}: the subscription lease was taken over")


class SqlPositions:
    def __init__(self, db: SqlDatabase) -> None:
        self.db = db
        assert db.positions_table is not None and db.failed_positions_table is not None
        self.positions: sa.Table = db.positions_table
        self.failed: sa.Table = db.failed_positions_table

    @property
    def engine(self) -> sa.Engine:
        return self.db.engine  # looked up per call: built lazily, rebuilt after dispose()

    @contextmanager
    def owned(self, name: str) -> Iterator[_SqlLease | None]:
        if self.engine.dialect.name != "postgresql":
            yield from self._leased(name, exclusive=False)
            return
        # The advisory lock lives as long as this connection's session: exactly the batch.
        conn = self.engine.connect()
        try:
            got = conn.execute(sa.select(sa.func.pg_try_advisory_lock(advisory_key(name)))).scalar()
            conn.commit()
            if not got:
                yield None
                return
            try:
                yield from self._leased(name, exclusive=True)
            finally:
                try:
                    conn.execute(sa.select(sa.func.pg_advisory_unlock(advisory_key(name))))
                    conn.commit()
                except Exception:
                    conn.invalidate()  # closing the session is what releases the lock then
                    raise
        finally:
            conn.close()

    def _leased(self, name: str, exclusive: bool) -> Iterator[_SqlLease | None]:
        """Claim the lease row (free, expired, or ours under the advisory lock); release after."""
        t, token, now = self.positions, uuid.uuid4().hex, time.time()
        self._ensure_row(name)
        claim = sa.update(t).where(t.c.handler == name)
        if not exclusive:
            claim = claim.where(sa.or_(t.c.owner.is_(None), t.c.lease_until < now))
        with self.engine.begin() as conn:
            claimed = conn.execute(claim.values(owner=token, lease_until=now + LEASE_SECONDS)).rowcount
        if claimed != 1:
            yield None
            return
        try:
            yield _SqlLease(self, name, token)
        finally:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.update(t)
                    .where(t.c.handler == name, t.c.owner == token)
                    .values(owner=None, lease_until=None)
                )

    def _ensure_row(self, name: str) -> None:
        t = self.positions
        with self.engine.begin() as conn:
            if conn.execute(sa.select(t.c.handler).where(t.c.handler == name)).first():
                return
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(t).values(handler=name, position=0, updated_at=datetime.now(UTC)))
            except IntegrityError:
                pass  # another consumer created it first

    def reset(self, name: str, position: int = 0) -> None:
        self._ensure_row(name)
        t = self.positions
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(t)
                .where(t.c.handler == name)
                .values(position=position, updated_at=datetime.now(UTC))
            )

    def failures(self, name: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        t = self.failed
        query = sa.select(t).order_by(t.c.handler, t.c.global_position)
        if name is not None:
            query = query.where(t.c.handler == name)
        if status is not None:
            query = query.where(t.c.status == status)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def record_failure(self, name: str, record: dict[str, Any], error: BaseException, final: bool) -> int:
        t = self.failed
        where = (t.c.handler == name) & (t.c.global_position == record["global_position"])
        with self.engine.begin() as conn:
            attempts = (conn.execute(sa.select(t.c.attempts).where(where)).scalar() or 0) + 1
            row = failure_row(name, record, error, attempts, final)
            if attempts == 1:
                conn.execute(sa.insert(t).values(**row))
            else:
                conn.execute(sa.update(t).where(where).values(**row))
        return attempts

    def resolve(self, name: str, global_position: int) -> None:
        t = self.failed
        with self.engine.begin() as conn:
            conn.execute(sa.delete(t).where(t.c.handler == name, t.c.global_position == global_position))

    def purge(self, name: str) -> int:
        t = self.failed
        with self.engine.begin() as conn:
            return conn.execute(sa.delete(t).where(t.c.handler == name, t.c.status == FAILED)).rowcount

    def forget(self, name: str) -> None:
        """Drop the cursor, the failed positions and the inbox rows of `name` (for a rebuild)."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(self.positions)
                .where(self.positions.c.handler == name)
                .values(position=0, updated_at=datetime.now(UTC))
            )
            conn.execute(sa.delete(self.failed).where(self.failed.c.handler == name))
            inbox = self.db.inbox_table
            assert inbox is not None
            conn.execute(sa.delete(inbox).where(inbox.c.handler == name))
