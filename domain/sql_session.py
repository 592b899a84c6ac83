"""SQL sessions: one transaction on one connection (the base Message DB shares), and the
aggregate, event-store, outbox, inbox and command-key operations inside it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from tidings.domain.database import Row
from tidings.domain.errors import ExpectedVersionError, IncorrectUsageError, TidingsError
from tidings.domain.ports import CommandKey
from tidings.domain.tables import VERSION_COLUMN

_APPEND_LOCK = 0x7469_6469_6E67_7300  # "tidings" + 0: the event-store append lock key


class DuplicateValueError(TidingsError):
    """A value declared `unique` is already taken."""


class TransactionSession:
    """One connection and its transaction; `commit` or `rollback` ends both."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.conn = db.engine.connect()
        self.trans = self.conn.begin()

    def commit(self) -> None:
        try:
            self.trans.commit()
        finally:
            self.conn.close()

    def rollback(self) -> None:
        try:
            self.trans.rollback()
        finally:
            self.conn.close()


class SqlSession(TransactionSession):
    @staticmethod
    def _row(mapping: Any) -> Row:
        data = dict(mapping)
        version = data.pop(VERSION_COLUMN, 0)
        return data, version

    def get(self, table: str, identity: str) -> Row | None:
        t = self.db.table(table)
        pk = next(iter(t.primary_key.columns))
        row = self.conn.execute(sa.select(t).where(pk == identity)).first()
        return self._row(row._mapping) if row else None

    def find(self, table: str, filters: dict[str, Any]) -> list[Row]:
        t = self.db.table(table)
        query = sa.select(t)
        for key, value in filters.items():
            if key not in t.c:
                raise IncorrectUsageError(f"{table} has no field '{key}' to filter on")
            query = query.where(t.c[key] == value)
        pk = next(iter(t.primary_key.columns))
        return [self._row(r._mapping) for r in self.conn.execute(query.order_by(pk))]

    def save(
        self, table: str, identity: str, data: dict[str, Any], expected_version: int, versioned: bool
    ) -> int:
        t = self.db.table(table)
        pk = next(iter(t.primary_key.columns))
        if versioned and expected_version >= 0:
            result = self.conn.execute(
                sa.update(t)
                .where(pk == identity, t.c[VERSION_COLUMN] == expected_version)
                .values(**data, **{VERSION_COLUMN: expected_version + 1})
            )
            if result.rowcount != 1:
                raise ExpectedVersionError(
                    f"{table} {identity}: expected version {expected_version} is stale"
                )
            return expected_version + 1
        if not versioned:
            result = self.conn.execute(sa.update(t).where(pk == identity).values(**data))
            if result.rowcount == 1:
                return 0
        values = {**data, **({VERSION_COLUMN: 0} if versioned else {})}
        # ON CONFLICT DO NOTHING instead of a savepoint: one round trip instead of three on the
        # write path, and the transaction stays usable to find out which value clashed.
        if self._insert_new(t, values) == 1:
            return 0
        if self.conn.execute(sa.select(pk).where(pk == identity)).first():
            raise ExpectedVersionError(f"{table} {identity} already exists")
        raise DuplicateValueError(f"{table}: a unique value is already taken")

    def _insert_new(self, t: sa.Table, values: dict[str, Any]) -> int:
        """Insert unless a unique key clashes; returns the number of rows inserted (0 or 1)."""
        insert = _INSERT_IGNORING_CONFLICTS.get(self.conn.dialect.name)
        if insert is not None:
            statement = insert(t).values(**values).on_conflict_do_nothing()  # type: ignore[attr-defined]
            return self.conn.execute(statement).rowcount
        try:
            with self.conn.begin_nested():
                self.conn.execute(sa.insert(t).values(**values))
        except IntegrityError:
            return 0
        return 1

    def delete(self, table: str, identity: str) -> bool:
        t = self.db.table(table)
        pk = next(iter(t.primary_key.columns))
        return self.conn.execute(sa.delete(t).where(pk == identity)).rowcount > 0

    def append_events(self, records: list[dict[str, Any]]) -> None:
        t = self.db.event_store_table
        if records and self.conn.dialect.name == "postgresql":
            # Writers take turns until commit, so global positions become visible in order and
            # an event_store subscription never moves its cursor past a position still in flight.
            self.conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_APPEND_LOCK)))
        positions: dict[str, int] = {}
        for record in records:
            stream = record["stream"]
            if stream not in positions:
                last = self.conn.execute(
                    sa.select(sa.func.max(t.c.position)).where(t.c.stream == stream)
                ).scalar()
                positions[stream] = -1 if last is None else last
            positions[stream] += 1
            values = {**record, "position": positions[stream], "time": _as_datetime(record["time"])}
            self.conn.execute(sa.insert(t).values(**values))

    def write_outbox(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.conn.execute(sa.insert(self.db.outbox_table), rows)

    def mark_processed(self, handler: str, message_id: str) -> bool:
        return (
            self._insert_new(
                self.db.inbox_table,
                {"handler": handler, "message_id": message_id, "processed_at": datetime.now(UTC)},
            )
            == 1
        )

    def claim_command_key(self, domain: str, key: str, message_id: str) -> CommandKey | None:
        t = self.db.command_keys_table
        assert t is not None
        values = {"domain": domain, "key": key, "message_id": message_id, "created_at": datetime.now(UTC)}
        # ON CONFLICT DO NOTHING waits (PostgreSQL) for a concurrent claim of the same key to
        # commit or roll back, so the row read below is the first command's, committed
        if self._insert_new(t, values) == 1:
            return None
        row = self.conn.execute(
            sa.select(t.c.message_id, t.c.result).where(t.c.domain == domain, t.c.key == key)
        ).one()
        return CommandKey(row.message_id, row.result)

    def record_command_result(self, domain: str, key: str, result: str) -> None:
        t = self.db.command_keys_table
        assert t is not None
        self.conn.execute(sa.update(t).where(t.c.domain == domain, t.c.key == key).values(result=result))


_INSERT_IGNORING_CONFLICTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def _as_datetime(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value
