"""The framework's tables under Alembic, and the drift between models and a database.

Tidings owns its bookkeeping tables (outbox, inbox, command keys, positions, failed positions,
dead letters, event store, per-key sequences) and ships their migrations in
`tidings/domain/migrations/`; its own version table (`tidings_alembic_version`) keeps them
apart from a user's own Alembic history. A user's aggregate and projection tables are theirs:
`create_all` makes the missing ones, and `domain.metadata` is what they hand to their own
Alembic (see `is_framework_table`).

    upgrade(engine)                  # `tidings db upgrade`: the framework tables to the newest revision
    drift(engine, domain.metadata)   # `tidings db check`: one Difference per mismatch, with its fix
"""

from __future__ import annotations

import functools
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from tidings.domain.errors import ConfigurationError
from tidings.domain.tables import define_event_store
from tidings.outbox.ordering import define_key_order
from tidings.outbox.tables import (
    define_command_keys,
    define_dead_letters,
    define_failed_positions,
    define_inbox,
    define_outbox,
    define_positions,
)

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "tidings_alembic_version"
# Concurrent upgrades (API, worker and server starting together) wait for each other on
# PostgreSQL; SQLite's `BEGIN IMMEDIATE` (sql.make_engine) serialises them already.
_LOCK_KEY = zlib.crc32(b"tidings.domain.schema") & 0x7FFFFFFF
_UPGRADE = "`tidings db upgrade`"
_YOURS = "a migration of your own (Alembic on domain.metadata)"


class SchemaError(ConfigurationError):
    """An existing table lacks a column this version of Tidings (or the model) needs."""


def framework_metadata() -> sa.MetaData:
    """Every table Tidings itself defines, as the newest migration must leave them."""
    metadata = sa.MetaData()
    for define in (
        define_outbox,
        define_inbox,
        define_command_keys,
        define_positions,
        define_failed_positions,
        define_dead_letters,
        define_event_store,
        define_key_order,
    ):
        define(metadata)
    return metadata


FRAMEWORK_TABLES = frozenset([*framework_metadata().tables, VERSION_TABLE])


def is_framework_table(name: str | None) -> bool:
    """True for a table Tidings migrates; a user's Alembic `include_name` leaves these out."""
    return name in FRAMEWORK_TABLES


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """The Alembic configuration of the shipped migrations, bound to `connection` if given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


@functools.cache
def head() -> str:
    """The newest revision Tidings ships (read once: the files do not change under a process)."""
    found = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert found is not None  # the baseline revision always exists
    return found


def current(engine: sa.Engine) -> str | None:
    """The revision the database's framework tables are at; None before the first upgrade."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Migrate the framework tables to `revision`, in one transaction.

    A database whose tables `create_all` made before migrations existed is adopted by the
    baseline revision (it creates only what is missing), so no `stamp` is needed.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        at = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
        if revision == "head" and at == head():
            return  # the common case (every process start): no need to load the scripts
        command.upgrade(alembic_config(conn), revision)


def drop_version_table(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))


@dataclass(frozen=True)
class Difference:
    """One way the database differs from the models, and what fixes it."""

    table: str
    problem: str
    fix: str
    missing: bool  # the database lacks a table or column the code writes: every write fails

    def __str__(self) -> str:
        return f"{self.table}: {self.problem}; fix: {self.fix}"


def drift(engine: sa.Engine, metadata: sa.MetaData) -> list[Difference]:
    """Every difference between `metadata`'s tables and the database (tables of the database
    that `metadata` does not define are not looked at), plus framework tables not migrated to
    the newest revision. Empty when they match."""
    owned = set(metadata.tables)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "version_table": VERSION_TABLE,
                "include_name": lambda name, type_, _parent: type_ != "table" or name in owned,
            },
        )
        changes = compare_metadata(context, metadata)
        revision = context.get_current_revision()
    found = []
    behind = bool(owned & FRAMEWORK_TABLES) and revision != head()
    if behind:
        found.append(
            Difference(VERSION_TABLE, f"at revision {revision or 'none'}, not {head()}", _UPGRADE, False)
        )
    return found + [_difference(change, engine.dialect, behind) for change in _flat(changes)]


def missing(engine: sa.Engine, metadata: sa.MetaData) -> list[Difference]:
    """The tables and columns of `metadata` the database lacks — what makes every write fail —
    as `drift` words them; a few reflection queries, cheap enough for every process start
    (`drift` compares everything: ~5x the time)."""
    inspector = sa.inspect(engine)
    present = set(inspector.get_table_names())
    changes: list[tuple[Any, ...]] = []
    for table in metadata.sorted_tables:
        if table.name not in present:
            changes.append(("add_table", table))
            continue
        columns = {column["name"] for column in inspector.get_columns(table.name)}
        changes += [("add_column", None, table.name, c) for c in table.columns if c.name not in columns]
    return [_difference(change, engine.dialect, behind=False) for change in changes]


def _flat(changes: list[Any]) -> list[tuple[Any, ...]]:
    """compare_metadata nests the column modifications of one table in a list."""
    return [item for change in changes for item in (change if isinstance(change, list) else [change])]


def _difference(change: tuple[Any, ...], dialect: sa.Dialect, behind: bool) -> Difference:
    kind = change[0]
    if kind in ("add_table", "remove_table"):
        table = change[1].name
    elif kind in ("add_index", "remove_index", "add_constraint", "remove_constraint"):
        table = change[1].table.name
    else:
        table = change[2]
    framework = is_framework_table(table)
    problem, statement = _describe(change, dialect)
    missing = kind in ("add_table", "add_column")
    if framework and behind:
        fix = _UPGRADE
    elif kind == "add_table" and not framework:
        fix = "`tidings db create`"
    elif statement:
        fix = statement  # at the newest revision already: no migration would bring it back
    else:
        fix = "restore it as the models define it" if framework else _YOURS
    return Difference(table, problem, fix, missing)


def _describe(change: tuple[Any, ...], dialect: sa.Dialect) -> tuple[str, str | None]:
    """What differs, and the statement that makes the database match (if one simply does)."""
    kind = change[0]
    if kind == "add_table":
        # (its indexes come as differences of their own)
        return "table missing", _one_line(sa.schema.CreateTable(change[1]), dialect)
    if kind in ("add_column", "remove_column"):
        column = change[3]
        if kind == "remove_column":
            return f"column {column.name} is not in the models", None
        return f"column {column.name} missing", column_statement(change[2], column, dialect)
    if kind in ("add_index", "remove_index"):
        index = change[1]
        if kind == "remove_index":
            return f"index {index.name} is not in the models", None
        return f"index {index.name} missing", _one_line(sa.schema.CreateIndex(index), dialect)
    if kind in ("add_constraint", "remove_constraint"):
        word = "missing" if kind == "add_constraint" else "is not in the models"
        return f"constraint {change[1].name} {word}", None
    if kind == "modify_type":
        return f"column {change[3]} is {change[5]!r}, the models say {change[6]!r}", None
    if kind == "modify_nullable":
        says = "NULL" if change[6] else "NOT NULL"
        return f"column {change[3]} is {'NULL' if change[5] else 'NOT NULL'}, the models say {says}", None
    return f"{kind} {change[2:]}", None


def _one_line(statement: sa.schema.ExecutableDDLElement, dialect: sa.Dialect) -> str:
    return " ".join(str(statement.compile(dialect=dialect)).split())


def column_statement(table: str, column: sa.Column, dialect: sa.Dialect) -> str:
    """The statement that adds `column` (a NOT NULL column needs a value for existing rows)."""
    kind = column.type.compile(dialect=dialect)
    fill = " NOT NULL DEFAULT '<value for existing rows>'" if not column.nullable else ""
    if table == "tidings_outbox" and column.name == "domain":
        fill = " NOT NULL DEFAULT '<name of the domain that wrote them>'"
    return f"ALTER TABLE {table} ADD COLUMN {column.name} {kind}{fill}"


def new_revision(message: str, url: str | None = None) -> Path:
    """Write the next migration, autogenerated from the models against a scratch database
    (`url`, else a temporary SQLite file) upgraded to the newest revision first. Review it:
    autogenerate sees tables, columns, types and indexes, not sequences or server defaults."""
    from tidings.domain.sql import normalize_uri  # sql imports this module

    with tempfile.TemporaryDirectory() as scratch:
        engine = sa.create_engine(normalize_uri(url or f"sqlite:///{scratch}/scratch.db"))
        try:
            upgrade(engine)
            number = len(list(ScriptDirectory.from_config(alembic_config()).walk_revisions())) + 1
            with engine.begin() as conn:
                made = command.revision(
                    alembic_config(conn), message, autogenerate=True, rev_id=f"{number:04d}"
                )
        finally:
            engine.dispose()
            head.cache_clear()  # the revision just written is the newest now
    assert made is not None and not isinstance(made, list)
    return Path(made.path)
