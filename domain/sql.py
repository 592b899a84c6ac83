"""The SQL provider (PostgreSQL and SQLite, through SQLAlchemy 2)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from tidings.domain.database import Row
from tidings.domain.errors import ConfigurationError, ExpectedVersionError, IncorrectUsageError, TidingsError
from tidings.domain.ports import CommandKey
from tidings.domain.tables import VERSION_COLUMN, define_event_store, define_model_table
from tidings.outbox.tables import (
    define_command_keys,
    define_dead_letters,
    define_failed_positions,
    define_inbox,
    define_outbox,
    define_positions,
)

_APPEND_LOCK = 0x7469_6469_6E67_7300  # "tidings" + 0: the event-store append lock key


class DuplicateValueError(TidingsError):
    """A value declared `unique` is already taken."""


class SchemaError(ConfigurationError):
    """An existing table lacks a column this version of Tidings (or the model) needs."""


def _fix(table: sa.Table, column: sa.Column, dialect: sa.Dialect) -> str:
    """The statement that adds `column` (a NOT NULL column needs a value for existing rows)."""
    kind = column.type.compile(dialect=dialect)
    fill = " NOT NULL DEFAULT '<value for existing rows>'" if not column.nullable else ""
    if table.name == "tidings_outbox" and column.name == "domain":
        fill = " NOT NULL DEFAULT '<name of the domain that wrote them>'"
    return f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}{fill}"


def normalize_uri(uri: str) -> str:
    """Plain `postgresql://` URLs use psycopg2 (SQLAlchemy 2.1 would pick psycopg 3)."""
    for scheme in ("postgresql://", "postgres://"):
        if uri.startswith(scheme):
            return "postgresql+psycopg2://" + uri[len(scheme) :]
    return uri


def make_engine(uri: str) -> sa.Engine:
    """An engine; SQLite gets WAL, a busy timeout and `BEGIN IMMEDIATE` transactions."""
    uri = normalize_uri(uri)
    if not uri.startswith("sqlite"):
        return sa.create_engine(uri, pool_pre_ping=True)
    path = uri.removeprefix("sqlite:///")
    if path and path != uri and not path.startswith(":memory:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # SQLite creates files, not folders
    engine = sa.create_engine(uri, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below be the only one
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):
        # SQLite has no row locks: taking the write lock up front serialises writers safely
        # (a deferred transaction that upgrades later can fail at once with SQLITE_BUSY).
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class SqlDatabase:
    """Tables for the models it stores, plus the event store, outbox and inbox when asked."""

    def __init__(self, name: str, uri: str, metadata: sa.MetaData | None = None) -> None:
        self.name = name
        self.uri = uri
        self.metadata = metadata or sa.MetaData()
        self._engine: sa.Engine | None = None
        self.event_store_table: sa.Table | None = None
        self.outbox_table: sa.Table | None = None
        self.inbox_table: sa.Table | None = None
        self.command_keys_table: sa.Table | None = None
        self.positions_table: sa.Table | None = None
        self.failed_positions_table: sa.Table | None = None
        self.dead_letters_table: sa.Table | None = None

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:  # built on first use, so nothing is shared across a fork
            self._engine = make_engine(self.uri)
        return self._engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def provider(self) -> str:
        """ "sqlite" or "postgresql" (read from the URI, so without connecting)."""
        return normalize_uri(self.uri).split(":", 1)[0].split("+", 1)[0]

    def add_model(self, model: type, versioned: bool) -> None:
        define_model_table(self.metadata, model, versioned)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def truncate(self, table: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(self.table(table)))

    def last_position(self, categories: list[str]) -> int | None:
        t = self.event_store_table
        if t is None:
            raise IncorrectUsageError(f"database '{self.name}' holds no event store")
        query = sa.select(sa.func.max(t.c.global_position)).where(t.c.category.in_(categories))
        with self.engine.connect() as conn:
            return conn.execute(query).scalar() or 0

    def add_event_store(self) -> None:
        if self.event_store_table is None:
            self.event_store_table = define_event_store(self.metadata)

    def add_message_tables(self) -> None:
        if self.outbox_table is None:
            self.outbox_table = define_outbox(self.metadata)
            self.inbox_table = define_inbox(self.metadata)
            self.command_keys_table = define_command_keys(self.metadata)
            self.positions_table = define_positions(self.metadata)
            self.failed_positions_table = define_failed_positions(self.metadata)
            self.dead_letters_table = define_dead_letters(self.metadata)

    def session(self) -> SqlSession:
        return SqlSession(self)

    def create_tables(self) -> None:
        """Create the missing tables and indexes; an existing table that lacks a column is a
        SchemaError naming the column and the statement that adds it (no data is guessed)."""
        self.metadata.create_all(self.engine)
        missing = self.missing_columns()
        if missing:
            raise SchemaError(
                f"database '{self.name}' predates columns Tidings needs: "
                + "; ".join(f"{t}.{c} ({fix})" for t, c, fix in missing)
            )
        with self.engine.begin() as conn:  # create_all adds indexes only with their table
            for table in self.metadata.sorted_tables:
                for index in table.indexes:
                    index.create(conn, checkfirst=True)

    def missing_columns(self) -> list[tuple[str, str, str]]:
        """(table, column, the fix) for each column of an existing table the database lacks."""
        inspector = sa.inspect(self.engine)
        found = []
        for table in self.metadata.sorted_tables:
            if not inspector.has_table(table.name):
                continue
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    found.append((table.name, column.name, _fix(table, column, self.engine.dialect)))
        return found

    def drop_tables(self) -> None:
        self.metadata.drop_all(self.engine)

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def read_events(self, stream_or_category: str, from_position: int = 0, limit: int = 1000) -> list[dict]:
        t = self.event_store_table
        if t is None:
            raise IncorrectUsageError(f"database '{self.name}' holds no event store")
        is_stream = "-" in stream_or_category
        query = sa.select(t).order_by(t.c.global_position).limit(limit)
        if is_stream:
            query = query.where(t.c.stream == stream_or_category, t.c.position >= from_position)
        else:
            query = query.where(t.c.category == stream_or_category, t.c.global_position >= from_position)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def read_categories(self, categories: list[str], from_position: int, limit: int) -> list[dict]:
        t = self.event_store_table
        if t is None:
            raise IncorrectUsageError(f"database '{self.name}' holds no event store")
        query = (
            sa.select(t)
            .where(t.c.category.in_(categories), t.c.global_position >= from_position)
            .order_by(t.c.global_position)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def table(self, name: str) -> sa.Table:
        try:
            return self.metadata.tables[name]
        except KeyError:
            raise IncorrectUsageError(f"no table '{name}' in database '{self.name}'") from None


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
            return self.conn.execute(insert(t).values(**values).on_conflict_do_nothing()).rowcount
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
