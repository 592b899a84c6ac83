"""The framework tables come from the migrations Tidings ships, and those must build exactly
what the models define: a table changed without a new migration fails here
(`make migration MESSAGE="..."` writes it)."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from tidings.domain import schema
from tidings.domain.sql import make_engine


@pytest.fixture(params=["sqlite", "postgresql"])
def empty(request, tmp_path):
    """An engine on a database with no tables at all (PostgreSQL: one made for this test)."""
    url = f"sqlite:///{tmp_path}/empty.db"
    if request.param == "postgresql":
        url = request.getfixturevalue("own_postgres_url")
    engine = make_engine(url)
    yield engine
    engine.dispose()


def test_upgrading_an_empty_database_builds_exactly_the_tables_the_models_define(empty):
    schema.upgrade(empty)
    assert set(sa.inspect(empty).get_table_names()) == schema.FRAMEWORK_TABLES
    assert schema.current(empty) == schema.head()
    differences = [str(d) for d in schema.drift(empty, schema.framework_metadata())]
    assert differences == [], 'a framework table changed without a migration: make migration MESSAGE="..."'


def test_a_framework_table_changed_without_a_migration_shows_as_drift(empty):
    schema.upgrade(empty)
    changed = schema.framework_metadata()  # what a model edit without a new revision looks like
    changed.tables["tidings_inbox"].append_column(sa.Column("note", sa.String(32)))
    sa.Index("ix_tidings_inbox_time", changed.tables["tidings_inbox"].c.processed_at)
    found = {(d.table, d.problem, d.missing) for d in schema.drift(empty, changed)}
    assert found == {
        ("tidings_inbox", "column note missing", True),
        ("tidings_inbox", "index ix_tidings_inbox_time missing", False),
    }


def test_a_framework_table_lost_at_the_newest_revision_names_the_statements_that_restore_it(empty):
    schema.upgrade(empty)
    with empty.begin() as conn:
        conn.execute(sa.text("DROP TABLE tidings_dead_letters"))
    lost = schema.drift(empty, schema.framework_metadata())
    assert [(d.table, d.problem, d.missing) for d in lost] == [
        ("tidings_dead_letters", "table missing", True),
        ("tidings_dead_letters", "index ix_tidings_dead_letters_key missing", False),
        ("tidings_dead_letters", "index ix_tidings_dead_letters_queue missing", False),
    ]
    with empty.begin() as conn:  # the fixes, run as printed, restore exactly the models' table
        for difference in lost:
            conn.execute(sa.text(difference.fix))
    assert schema.drift(empty, schema.framework_metadata()) == []


def test_upgrade_adopts_the_tables_an_older_db_create_made_and_keeps_their_rows(empty):
    schema.framework_metadata().create_all(empty)  # `db create` before migrations: no version
    now = datetime.now(UTC)
    with empty.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_tidings_dead_letters_queue"))
        conn.execute(
            sa.text("INSERT INTO tidings_inbox (handler, message_id, processed_at) VALUES ('h', 'm', :t)"),
            {"t": now},
        )
    schema.upgrade(empty)
    assert schema.current(empty) == schema.head()
    assert schema.drift(empty, schema.framework_metadata()) == []
    with empty.connect() as conn:
        assert conn.execute(sa.text("SELECT handler, message_id FROM tidings_inbox")).all() == [("h", "m")]


def test_a_database_behind_the_newest_revision_is_drift_naming_the_upgrade(empty):
    schema.framework_metadata().create_all(empty)
    (behind,) = schema.drift(empty, schema.framework_metadata())
    assert str(behind) == f"tidings_alembic_version: at revision none, not {schema.head()}; " + (
        "fix: `tidings db upgrade`"
    )


def test_processes_upgrading_at_once_all_succeed(empty):
    # PostgreSQL: an advisory lock makes them wait for each other; SQLite: BEGIN IMMEDIATE
    errors: list[BaseException] = []

    def run() -> None:
        try:
            schema.upgrade(empty)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert schema.drift(empty, schema.framework_metadata()) == []


def test_a_new_revision_written_by_make_migration_migrates_to_the_changed_models(tmp_path, monkeypatch):
    # the recipe (`make migration` -> new_revision) on a copy of the shipped migrations
    shutil.copytree(schema.MIGRATIONS, tmp_path / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(schema, "MIGRATIONS", tmp_path / "migrations")
    shipped = schema.define_inbox

    def define_inbox(metadata: sa.MetaData) -> sa.Table:  # a model change: one more column
        table = shipped(metadata)
        table.append_column(sa.Column("note", sa.String(32)))
        return table

    monkeypatch.setattr(schema, "define_inbox", define_inbox)
    shipped_head = schema.head()
    schema.head.cache_clear()
    try:
        written = schema.new_revision("inbox: a note")
        following = f"{int(shipped_head) + 1:04d}"  # the revision after the newest shipped one
        assert written.parent == tmp_path / "migrations" / "versions"
        assert written.name == f"{following}_inbox_a_note.py"
        engine = make_engine(f"sqlite:///{tmp_path}/fresh.db")
        schema.upgrade(engine)
        assert schema.current(engine) == schema.head() == following
        assert schema.drift(engine, schema.framework_metadata()) == []
        engine.dispose()
    finally:
        schema.head.cache_clear()  # the shipped revisions again for the tests that follow
