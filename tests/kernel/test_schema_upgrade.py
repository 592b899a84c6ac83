"""An existing database from before the outbox had an owner: `create_tables` and
`tidings db create` name the missing column and the statement that adds it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from tests.engine.ledger import build_ledger
from tidings.app import cli, cli_common
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
def test_once_the_column_is_added_create_tables_adds_the_pending_index(legacy_domain):
    with legacy_domain.outbox_database.engine.begin() as conn:
        conn.execute(
            sa.text("ALTER TABLE tidings_outbox ADD COLUMN domain VARCHAR(255) NOT NULL DEFAULT 'ledger'")
        )
    with pytest.raises(
        SchemaError, match=r"tidings_outbox\.resent \(ALTER TABLE tidings_outbox ADD COLUMN resent"
    ):
        legacy_domain.create_tables()  # 0.2's delivery-audit columns, nullable: added as named
    with legacy_domain.outbox_database.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE tidings_outbox ADD COLUMN resent INTEGER"))
        for column in ("last_audit_at", "next_audit_at", "confirmed_at"):
            conn.execute(sa.text(f"ALTER TABLE tidings_outbox ADD COLUMN {column} TIMESTAMP"))
    legacy_domain.create_tables()
    indexes = sa.inspect(legacy_domain.outbox_database.engine).get_indexes("tidings_outbox")
    assert {"ix_tidings_outbox_pending", "ix_tidings_outbox_unconfirmed"} <= {i["name"] for i in indexes}
