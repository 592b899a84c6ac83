"""The SQL provider (PostgreSQL and SQLite, through SQLAlchemy 2)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg2.extras  # type: ignore[import-untyped]  # noqa: F401 - see below
import sqlalchemy as sa

from tidings.domain import pg_append, schema
from tidings.domain.errors import IncorrectUsageError
from tidings.domain.schema import Difference, SchemaError
from tidings.domain.sql_session import DuplicateValueError, SqlSession, TransactionSession
from tidings.domain.tables import define_event_store, define_model_table
from tidings.outbox.ordering import define_key_order
from tidings.outbox.tables import (
    define_command_keys,
    define_dead_letters,
    define_failed_positions,
    define_inbox,
    define_outbox,
    define_positions,
)

Statement = TypeVar("Statement")

# psycopg2.extras is imported above, at start-up, instead of lazily by SQLAlchemy when a
# process builds its first PostgreSQL engine: in a worker, that may happen on a thread (the
# metrics server answering a scrape, the relay loop) while the prefork pool forks a child,
# and the child is then born holding that module's import lock and hangs on its first
# connection until the task's time limit kills it (seen as a 30 s stall, then dead letters).


def normalize_uri(uri: str) -> str:
    """Plain `postgresql://` URLs use psycopg2 (SQLAlchemy 2.1 would pick psycopg 3)."""
    for scheme in ("postgresql://", "postgres://"):
        if uri.startswith(scheme):
            return "postgresql+psycopg2://" + uri[len(scheme) :]
    return uri


def make_engine(uri: str) -> sa.Engine:
    """An engine; SQLite gets WAL, a busy timeout and `BEGIN IMMEDIATE` transactions.

    No pre-ping: it would cost a round trip per checkout. A connection that died in the pool
    fails its first statement as a disconnect; SQLAlchemy then invalidates the pool and the
    caller's retry (tasks/retrying.py: a transient fault) runs on a fresh connection.
    """
    uri = normalize_uri(uri)
    if not uri.startswith("sqlite"):
        return sa.create_engine(uri)
    path = uri.removeprefix("sqlite:///")
    if path and path != uri and not path.startswith(":memory:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # SQLite creates files, not folders
    engine = sa.create_engine(uri, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below be the only one
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # SQLite has no row locks: taking the write lock up front serialises writers safely
        # (a deferred transaction that upgrades later can fail at once with SQLITE_BUSY).
        # ... except a transaction that only reads (outbox.tables.READ_ONLY)
        reading = conn.get_execution_options().get("tidings_read_only", False)
        conn.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")

    return engine


class SqlDatabase:
    """Tables for the models it stores, plus the event store, outbox and inbox when asked."""

    def __init__(
        self, name: str, uri: str, metadata: sa.MetaData | None = None, prepared: bool = True
    ) -> None:
        self.name = name
        self.uri = uri
        self.prepared = prepared  # PostgreSQL: the write path's statements prepared once per connection
        self.metadata = metadata or sa.MetaData()
        self._engine: sa.Engine | None = None
        self.event_store_table: sa.Table | None = None
        self.outbox_table: sa.Table | None = None
        self.inbox_table: sa.Table | None = None
        self.command_keys_table: sa.Table | None = None
        self.positions_table: sa.Table | None = None
        self.failed_positions_table: sa.Table | None = None
        self.dead_letters_table: sa.Table | None = None
        self.statements: dict[tuple[str, str], Any] = {}  # built once, so compiled once

    def prebuilt(self, key: tuple[str, str], build: Callable[[], Statement]) -> Statement:
        """The statement `key` names, built on first use: SQLAlchemy then finds its compiled
        form in the cache instead of rebuilding and cache-keying a new statement per call."""
        if key not in self.statements:
            self.statements[key] = build()
        return self.statements[key]

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
            define_key_order(self.metadata)  # `sequential_by` handlers' sequences (outbox/ordering.py)

    def session(self) -> SqlSession:
        return SqlSession(self)

    def create_tables(self) -> None:
        """Migrate the framework tables (if this database holds any), create the missing tables
        and indexes of the models; a table that lacks a column is a SchemaError naming the
        column and the statement that adds it (no data is guessed)."""
        if self.holds_framework_tables:
            schema.upgrade(self.engine)
        own = [t for t in self.metadata.sorted_tables if not schema.is_framework_table(t.name)]
        self.metadata.create_all(self.engine, tables=own)
        missing = schema.missing(self.engine, self.metadata)
        if missing:
            raise SchemaError(
                f"database '{self.name}' lacks what Tidings needs: " + "; ".join(map(str, missing))
            )
        with self.engine.begin() as conn:  # create_all adds indexes only with their table
            for table in own:
                for index in table.indexes:
                    index.create(conn, checkfirst=True)

    @property
    def holds_framework_tables(self) -> bool:
        return any(schema.is_framework_table(name) for name in self.metadata.tables)

    def upgrade(self) -> None:
        """Migrate the framework tables to the newest revision (`tidings db upgrade`)."""
        schema.upgrade(self.engine)

    def drift(self) -> list[Difference]:
        """How the database differs from the models (empty when it matches them)."""
        return schema.drift(self.engine, self.metadata)

    def drop_tables(self) -> None:
        self.metadata.drop_all(self.engine)
        if self.holds_framework_tables:  # and every table the migrations made, with their version
            schema.framework_metadata().drop_all(self.engine)
            schema.drop_version_table(self.engine)

    def dispose(self, close: bool = True) -> None:
        # close=False after a fork: drop the pool without closing the connections, which
        # belong to the parent (closing one from a child ends the parent's session too)
        if self._engine is not None:
            self._engine.dispose(close=close)
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

    def read_categories(
        self, categories: list[str], from_position: int, limit: int, settled: bool = False
    ) -> list[dict]:
        t = self.event_store_table
        if t is None:
            raise IncorrectUsageError(f"database '{self.name}' holds no event store")
        query = (
            sa.select(t)
            .where(t.c.category.in_(categories), t.c.global_position >= from_position)
            .order_by(t.c.global_position)
            .limit(limit)
        )
        if settled and self.dialect == "postgresql":
            # only what no transaction still running can precede (see tidings.domain.pg_append)
            query = query.where(t.c.global_position < sa.literal_column(pg_append.SETTLED_BELOW))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def table(self, name: str) -> sa.Table:
        try:
            return self.metadata.tables[name]
        except KeyError:
            raise IncorrectUsageError(f"no table '{name}' in database '{self.name}'") from None


__all__ = [
    "Difference",
    "DuplicateValueError",
    "SchemaError",
    "SqlDatabase",
    "SqlSession",
    "TransactionSession",
]
