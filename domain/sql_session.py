"""SQL sessions: one transaction on one connection (the base Message DB shares), and the
aggregate, event-store, outbox, inbox and command-key operations inside it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from tidings.domain import pg_append, pg_prepared
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
        self._conn = db.engine.connect()
        self.trans = self._conn.begin()

    @property
    def conn(self) -> sa.Connection:
        """The transaction's connection, once the writes held back are sent: whoever uses it
        (a read of this session, a handler's own SQL) sees them."""
        self.flush()
        return self._conn

    def flush(self) -> None:
        """Send the writes held back for one round trip (none here)."""

    def commit(self) -> None:
        try:
            self.flush()
            self.trans.commit()
        finally:
            self._conn.close()

    def rollback(self) -> None:
        try:
            self.trans.rollback()
        finally:
            self._conn.close()


class SqlSession(TransactionSession):
    """On PostgreSQL the rows of new aggregates, the events and the outbox rows of a commit are
    held back and sent as one statement by `flush` (see `tidings.domain.pg_append`), before
    anything else uses the connection; SQLite writes them at once."""

    def __init__(self, db: Any) -> None:
        super().__init__(db)
        self.batched = self._conn.dialect.name == "postgresql"
        self.events: list[dict[str, Any]] = []
        self.outbox: list[dict[str, Any]] = []
        self.new_rows: list[tuple[sa.Table, dict[str, Any]]] = []  # versioned rows to insert
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
        if versioned and self.batched:
            self.new_rows.append((t, values))  # sent by `flush`, with the events and outbox rows
            return 0
        # ON CONFLICT DO NOTHING instead of a savepoint: one round trip instead of three on the
        # write path, and the transaction stays usable to find out which value clashed.
        if self._insert_new(t, values) == 1:
            return 0
        self._refuse_insert(t, identity)
        return 0  # unreachable: _refuse_insert raises

    def _refuse_insert(self, t: sa.Table, identity: Any) -> None:
        """A new row was not inserted: its identity, or else a unique value, is taken."""
        pk = _pk(t)
        if self._conn.execute(sa.select(pk).where(pk == identity)).first():
            raise ExpectedVersionError(f"{t.name} {identity} already exists")
        raise DuplicateValueError(f"{t.name}: a unique value is already taken")

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
        """PostgreSQL: insert the held-back new rows, append the events and insert the outbox
        rows in one statement.

        Raises ExpectedVersionError when an event would land out of its stream's order (see
        `tidings.domain.pg_append`), a concurrent transaction took its stream position or a new
        row's identity is taken; DuplicateValueError when a new row's unique value is taken.
        """
        events, rows, new = self.events, self.outbox, self.new_rows
        if not events and not rows and not new:
            return
        self.events, self.outbox, self.new_rows = [], [], []
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
            tuple(self._insert_shape(t, values) for t, values in new),
        )
        params = pg_append.append_parameters(
            events, first, rows, [self._driver_values(t, values) for t, values in new]
        )
        try:
            if self.db.prepared:
                counts = pg_prepared.execute(self._conn, statement, params).one()
            else:
                counts = self._conn.exec_driver_sql(statement, params).one()
        except IntegrityError as exc:
            if _constraint(exc) == STREAM_POSITION_KEY:
                raise ExpectedVersionError(
                    "a concurrent transaction appended to the same stream; run again"
                ) from exc
            raise
        inserted: tuple[int, ...] = tuple(counts[1:])
        for (t, values), count in zip(new, inserted, strict=True):
            if count != 1:
                self._refuse_insert(t, values[_pk(t).name])
        if counts[0] != len(events):
            raise ExpectedVersionError(
                "a newer transaction appended to the same stream first; run again in a new one"
            )

    def _name(self, table: sa.Table | None) -> str:
        assert table is not None
        return self._conn.dialect.identifier_preparer.format_table(table)

    def _insert_shape(self, t: sa.Table, values: dict[str, Any]) -> pg_append.Insert:
        quote = self._conn.dialect.identifier_preparer.quote
        return self._name(t), tuple(quote(c) for c in values)

    def _driver_values(self, t: sa.Table, values: dict[str, Any]) -> tuple[Any, ...]:
        """The values as SQLAlchemy would bind them (JSON columns serialised, ...)."""
        processors = self.db.prebuilt(
            ("bind processors", t.name),
            lambda: {c.name: c.type.bind_processor(self._conn.dialect) for c in t.columns},
        )
        return tuple(
            value if (process := processors[name]) is None else process(value)
            for name, value in values.items()
        )

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
