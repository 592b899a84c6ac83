"""SQL sessions: one transaction on one connection (the base Message DB shares), and the
aggregate, event-store, outbox, inbox and command-key operations inside it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from tidings.domain import pg_append
from tidings.domain.database import Row
from tidings.domain.errors import ExpectedVersionError, IncorrectUsageError, TidingsError
from tidings.domain.ports import CommandKey
from tidings.domain.tables import STREAM_POSITION_KEY, VERSION_COLUMN

_IDENTITY, _EXPECTED = "tidings_identity", "tidings_expected"  # bound parameters of prebuilt UPDATEs


class DuplicateValueError(TidingsError):
    """A value declared `unique` is already taken."""


class TransactionSession:
    """One connection and its transaction; `commit` or `rollback` ends both."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.conn = db.engine.connect()
        self.trans = self.conn.begin()

    def flush(self) -> None:
        """Send the writes held back for one round trip (none here)."""

    def commit(self) -> None:
        try:
            self.flush()
            self.trans.commit()
        finally:
            self.conn.close()

    def rollback(self) -> None:
        try:
            self.trans.rollback()
        finally:
            self.conn.close()


class SqlSession(TransactionSession):
    """On PostgreSQL the events and outbox rows of a commit are held back and sent as one
    statement by `flush` (see `tidings.domain.pg_append`); SQLite writes them at once."""

    def __init__(self, db: Any) -> None:
        super().__init__(db)
        self.batched = self.conn.dialect.name == "postgresql"
        self.events: list[dict[str, Any]] = []
        self.outbox: list[dict[str, Any]] = []
        self.ranked = 0  # events this transaction appended so far (their rank in it)

    @staticmethod
    def _row(mapping: Any) -> Row:
        data = dict(mapping)
        version = data.pop(VERSION_COLUMN, 0)
        return data, version

    def get(self, table: str, identity: str) -> Row | None:
        t = self.db.table(table)
        query = self.db.prebuilt(
            ("get", table), lambda: sa.select(t).where(_pk(t) == sa.bindparam(_IDENTITY))
        )
        row = self.conn.execute(query, {_IDENTITY: identity}).first()
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
        pk = _pk(t)
        if versioned and expected_version >= 0:
            update = self.db.prebuilt(
                ("update versioned", table),
                lambda: sa.update(t).where(
                    pk == sa.bindparam(_IDENTITY), t.c[VERSION_COLUMN] == sa.bindparam(_EXPECTED)
                ),
            )
            params = {**data, VERSION_COLUMN: expected_version + 1}
            result = self.conn.execute(update, {**params, _IDENTITY: identity, _EXPECTED: expected_version})
            if result.rowcount != 1:
                raise ExpectedVersionError(
                    f"{table} {identity}: expected version {expected_version} is stale"
                )
            return expected_version + 1
        if not versioned:
            update = self.db.prebuilt(
                ("update", table), lambda: sa.update(t).where(pk == sa.bindparam(_IDENTITY))
            )
            if self.conn.execute(update, {**data, _IDENTITY: identity}).rowcount == 1:
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
            statement = self.db.prebuilt(
                ("insert new", t.name),
                lambda: insert(t).on_conflict_do_nothing(),  # type: ignore[attr-defined]
            )
            return self.conn.execute(statement, values).rowcount
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
        if self.batched:
            self.events.extend(records)  # sent by `flush`, with the outbox rows
            return
        # SQLite: one writer at a time (BEGIN IMMEDIATE), so the next position is the last + 1
        t = self.db.event_store_table
        last = self.db.prebuilt(
            ("last position", t.name),
            lambda: sa.select(sa.func.max(t.c.position)).where(t.c.stream == sa.bindparam("stream")),
        )
        positions: dict[str, int] = {}
        for record in records:
            stream = record["stream"]
            if stream not in positions:
                found = self.conn.execute(last, {"stream": stream}).scalar()
                positions[stream] = -1 if found is None else found
            positions[stream] += 1
            values = {**record, "position": positions[stream], "time": _as_datetime(record["time"])}
            self.conn.execute(self.db.prebuilt(("append", t.name), lambda: sa.insert(t)), values)

    def write_outbox(self, rows: list[dict[str, Any]]) -> None:
        if self.batched:
            self.outbox.extend(rows)
        elif rows:
            self.conn.execute(sa.insert(self.db.outbox_table), rows)

    def flush(self) -> None:
        """PostgreSQL: append the held-back events and insert the outbox rows in one statement.

        Raises ExpectedVersionError when an event would land out of its stream's order (see
        `tidings.domain.pg_append`) or a concurrent transaction took its stream position.
        """
        events, rows = self.events, self.outbox
        if not events and not rows:
            return
        self.events, self.outbox = [], []
        first = self.ranked
        self.ranked += len(events)
        if self.ranked > pg_append.MAX_RANK:
            raise IncorrectUsageError(
                f"one transaction may append at most {pg_append.MAX_RANK} events; split the work"
            )
        statement = pg_append.append_statement(
            self._name(self.db.event_store_table) if events else "",
            self._name(self.db.outbox_table) if rows else "",
            len(events),
            len(rows),
        )
        try:
            appended = self.conn.exec_driver_sql(
                statement, pg_append.append_parameters(events, first, rows)
            ).scalar_one()
        except IntegrityError as exc:
            if _constraint(exc) == STREAM_POSITION_KEY:
                raise ExpectedVersionError(
                    "a concurrent transaction appended to the same stream; run again"
                ) from exc
            raise
        if appended != len(events):
            raise ExpectedVersionError(
                "a newer transaction appended to the same stream first; run again in a new one"
            )

    def _name(self, table: sa.Table | None) -> str:
        assert table is not None
        return self.conn.dialect.identifier_preparer.format_table(table)

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


def _pk(table: sa.Table) -> sa.Column:
    return next(iter(table.primary_key.columns))


def _constraint(exc: IntegrityError) -> str | None:
    """The name of the constraint a PostgreSQL integrity error broke (psycopg2's diagnostics)."""
    return getattr(getattr(exc.orig, "diag", None), "constraint_name", None)


def _as_datetime(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value
