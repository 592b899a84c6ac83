"""`tidings db upgrade|create|check` on the domain's configured database: the framework
tables through the migrations, the models' tables created, and drift reported line by line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tests.engine.ledger import build_ledger
from tidings.app import cli, cli_common
from tidings.domain import schema

ON_SQL = pytest.mark.parametrize("provider", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def ledger(use_provider, tmp_path, monkeypatch):
    """The ledger domain on an empty database, found by the CLI."""
    domain = use_provider(build_ledger(tmp_path))
    domain.drop_tables()
    monkeypatch.setattr(cli_common, "load_domain", lambda path: domain)
    monkeypatch.setattr(cli_common, "runtime_for", lambda domain: SimpleNamespace(celery=None))
    return domain


def db(*args: str):
    return CliRunner().invoke(cli.main, ["db", *args, "--domain", "ledger"])


def tables(domain) -> set[str]:
    return set(sa.inspect(domain.outbox_database.engine).get_table_names())


def drop_column(domain, table: str, column: str) -> None:
    with domain.outbox_database.engine.begin() as conn:
        conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))


@ON_SQL
def test_upgrade_makes_the_framework_tables_and_create_the_models_tables(ledger):
    upgraded = db("upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert tables(ledger) >= schema.FRAMEWORK_TABLES
    assert not {"entry", "tally"} & tables(ledger)  # the aggregates' tables are not its business
    checked = db("check")
    assert checked.exit_code == 1
    assert "drift in database 'default': entry: table missing; fix: `tidings db create`" in checked.output
    created = db("create")
    assert created.exit_code == 0, created.output
    assert schema.FRAMEWORK_TABLES | {"entry", "tally"} <= tables(ledger)
    assert "match the models" in created.output
    assert db("check").exit_code == 0


@ON_SQL
def test_a_dropped_framework_column_is_reported_by_check_and_create(ledger):
    assert db("create").exit_code == 0
    drop_column(ledger, "tidings_outbox", "last_error")
    checked = db("check")
    assert checked.exit_code == 1
    line = (
        "drift in database 'default': tidings_outbox: column last_error missing; "
        "fix: ALTER TABLE tidings_outbox ADD COLUMN last_error TEXT"
    )
    assert checked.output.splitlines() == [line]
    created = db("create")
    assert created.exit_code == 1
    assert "NOT in place" in created.output and "tidings_outbox: column last_error missing" in created.output


@ON_SQL
def test_a_dropped_model_column_names_the_statement_that_adds_it(ledger):
    assert db("create").exit_code == 0
    drop_column(ledger, "entry", "label")
    checked = db("check")
    assert checked.exit_code == 1
    assert "entry: column label missing; fix: ALTER TABLE entry ADD COLUMN label" in checked.output


@ON_SQL
def test_check_on_a_database_created_before_migrations_names_the_upgrade(ledger):
    assert db("create").exit_code == 0
    schema.drop_version_table(ledger.outbox_database.engine)
    checked = db("check")
    assert checked.exit_code == 1
    assert "tidings_alembic_version: at revision none" in checked.output
    assert "fix: `tidings db upgrade`" in checked.output
    upgraded = db("upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert db("check").exit_code == 0


@pytest.mark.parametrize("provider", ["memory"], indirect=True)
def test_a_domain_in_memory_has_nothing_to_migrate(ledger):
    for command in ("upgrade", "create", "check"):
        result = db(command)
        assert result.exit_code == 0, result.output
        assert "has no SQL database" in result.output


def test_an_event_store_in_a_database_of_its_own_is_migrated_too(tmp_path, monkeypatch):
    domain = build_ledger(tmp_path)
    domain.config["databases"]["default"] = {
        "provider": "sqlite",
        "database_uri": f"sqlite:///{tmp_path}/a.db",
    }
    domain.config["event_store"] = {"provider": "sqlite", "database_uri": f"sqlite:///{tmp_path}/events.db"}
    domain.init()
    monkeypatch.setattr(cli_common, "load_domain", lambda path: domain)
    monkeypatch.setattr(cli_common, "runtime_for", lambda domain: SimpleNamespace(celery=None))
    upgraded = db("upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert "database 'event_store': framework tables at revision" in upgraded.output
    events = domain.storage.event_store.engine
    assert schema.current(events) == schema.head()
    assert "tidings_event_store" in sa.inspect(events).get_table_names()
    assert db("create").exit_code == 0 and db("check").exit_code == 0
    domain.dispose()
