"""An existing database from before the outbox had an owner (and before migrations): the
baseline migration that `create_tables` and `tidings db create` run names the missing column
and the statement that adds it, and adds the nullable columns itself."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tests.engine.ledger import build_ledger
from tidings.app import cli, cli_common
from tidings.domain import schema
from tidings.domain.sql import SchemaError

LEGACY_OUTBOX = """CREATE TABLE tidings_outbox (
    id INTEGER PRIMARY KEY, message_id VARCHAR(64) NOT NULL UNIQUE, stream VARCHAR(255) NOT NULL,
    type VARCHAR(255) NOT NULL, envelope TEXT NOT NULL, status VARCHAR(16) NOT NULL,
    attempts INTEGER NOT NULL, next_attempt_at TIMESTAMP NOT NULL, created_at TIMESTAMP NOT NULL,
    published_at TIMESTAMP, last_error TEXT)"""


@pytest.fixture
def legacy_domain(use_provider, tmp_path):
    domain = use_provider(build_ledger(tmp_path))
    outbox = domain.outbox_database
    with outbox.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE tidings_outbox"))
        conn.execute(sa.text(LEGACY_OUTBOX))
    schema.drop_version_table(outbox.engine)  # create_all made these tables, not the migrations
    return domain


@pytest.mark.parametrize("provider", ["sqlite", "postgresql"], indirect=True)
def test_create_tables_names_the_missing_owner_column_and_its_fix(legacy_domain):
    with pytest.raises(
        SchemaError, match=r"tidings_outbox\.domain \(ALTER TABLE tidings_outbox ADD COLUMN domain"
    ):
        legacy_domain.create_tables()


@pytest.mark.parametrize("provider", ["sqlite", "postgresql"], indirect=True)
def test_db_create_does_not_claim_the_tables_are_in_place_when_a_column_is_missing(
    legacy_domain, monkeypatch
):
    monkeypatch.setattr(cli_common, "load_domain", lambda path: legacy_domain)
    monkeypatch.setattr(cli_common, "runtime_for", lambda domain: SimpleNamespace(celery=None))
    result = CliRunner().invoke(cli.main, ["db", "create", "--domain", "ledger"])
    assert result.exit_code == 1
    assert "NOT in place" in result.output and "ADD COLUMN domain" in result.output


@pytest.mark.parametrize("provider", ["sqlite", "postgresql"], indirect=True)
def test_once_the_column_is_added_the_migration_adds_the_audit_columns_and_indexes(legacy_domain):
    engine = legacy_domain.outbox_database.engine
    with engine.begin() as conn:
        conn.execute(
            sa.text("ALTER TABLE tidings_outbox ADD COLUMN domain VARCHAR(255) NOT NULL DEFAULT 'ledger'")
        )
    legacy_domain.create_tables()  # 0.2's delivery-audit columns are nullable: the baseline adds them
    columns = {c["name"] for c in sa.inspect(engine).get_columns("tidings_outbox")}
    assert {"resent", "last_audit_at", "next_audit_at", "confirmed_at"} <= columns
    indexes = sa.inspect(engine).get_indexes("tidings_outbox")
    assert {"ix_tidings_outbox_pending", "ix_tidings_outbox_unconfirmed"} <= {i["name"] for i in indexes}
    assert schema.current(engine) == schema.head()
