"""The framework tables as Tidings 0.2 defines them; adopts a database `create_all` made.

Before migrations, `tidings db create` made these tables with `create_all`. On such a database
this revision creates only the missing tables and indexes and adds the missing nullable
columns; a missing NOT NULL column (0.1's outbox had no `domain`) needs a value for the
existing rows, which only the operator knows: the upgrade stops, naming the statement.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tidings.domain.schema import SchemaError, column_statement

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen here (not imported from the models): later revisions change the models, not this.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_WHEN = sa.DateTime(timezone=True)


def _tables(metadata: sa.MetaData) -> None:
    sa.Table(
        "tidings_outbox",
        metadata,
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(64), nullable=False, unique=True),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.Column("stream", sa.String(255), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("envelope", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _WHEN, nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("published_at", _WHEN),
        sa.Column("last_error", sa.Text()),
        sa.Column("resent", sa.Integer()),
        sa.Column("last_audit_at", _WHEN),
        sa.Column("next_audit_at", _WHEN),
        sa.Column("confirmed_at", _WHEN),
        sa.Index("ix_tidings_outbox_due", "status", "next_attempt_at"),
        sa.Index(
            "ix_tidings_outbox_pending",
            "domain",
            "id",
            postgresql_where=sa.text("status = 'pending'"),
            sqlite_where=sa.text("status = 'pending'"),
        ),
        sa.Index(
            "ix_tidings_outbox_unconfirmed",
            "domain",
            "published_at",
            "id",
            postgresql_where=sa.text("status = 'published' AND confirmed_at IS NULL"),
            sqlite_where=sa.text("status = 'published' AND confirmed_at IS NULL"),
        ),
    )
    sa.Table(
        "tidings_inbox",
        metadata,
        sa.Column("handler", sa.String(255), primary_key=True),
        sa.Column("message_id", sa.String(64), primary_key=True),
        sa.Column("processed_at", _WHEN, nullable=False),
    )
    sa.Table(
        "tidings_command_keys",
        metadata,
        sa.Column("domain", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("result", sa.Text()),
        sa.Column("created_at", _WHEN, nullable=False),
    )
    sa.Table(
        "tidings_positions",
        metadata,
        sa.Column("handler", sa.String(255), primary_key=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _WHEN, nullable=False),
        sa.Column("owner", sa.String(64)),
        sa.Column("lease_until", sa.Float()),
    )
    sa.Table(
        "tidings_failed_positions",
        metadata,
        sa.Column("handler", sa.String(255), primary_key=True),
        sa.Column("global_position", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_type", sa.String(255), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("traceback", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failed_at", _WHEN, nullable=False),
    )
    sa.Table(
        "tidings_dead_letters",
        metadata,
        sa.Column("entry_id", sa.String(64), primary_key=True),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.Column("handler", sa.String(255)),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("task", sa.String(255)),
        sa.Column("message_id", sa.String(64)),
        sa.Column("body", sa.Text()),
        sa.Column("raw_body", sa.Text()),
        sa.Column("headers", sa.Text()),
        sa.Column("error_type", sa.String(255), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("traceback", sa.Text()),
        sa.Column("attempts", sa.Integer()),
        sa.Column("failed_at", _WHEN, nullable=False),
        sa.Index("ix_tidings_dead_letters_key", "handler", "message_id"),
        sa.Index("ix_tidings_dead_letters_queue", "domain", "queue", "failed_at"),
    )
    sa.Table(
        "tidings_event_store",
        metadata,
        sa.Column("global_position", _ID, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(64), nullable=False, unique=True),
        sa.Column("stream", sa.String(255), nullable=False),
        sa.Column("category", sa.String(255), nullable=False, index=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("time", _WHEN, nullable=False),
        sa.UniqueConstraint("stream", "position", name="uq_tidings_event_stream_position"),
    )


def upgrade() -> None:
    bind = op.get_bind()
    baseline = sa.MetaData()
    _tables(baseline)
    present = set(sa.inspect(bind).get_table_names())
    for table in baseline.sorted_tables:
        if table.name in present:
            _adopt(bind, table)
        else:
            table.create(bind)


def _adopt(bind: sa.Connection, table: sa.Table) -> None:
    """Bring a table `create_all` made by an older Tidings up to this revision."""
    inspector = sa.inspect(bind)
    columns = {c["name"] for c in inspector.get_columns(table.name)}
    missing = [c for c in table.columns if c.name not in columns]
    required = [c for c in missing if not c.nullable]
    if required:
        raise SchemaError(
            "database predates columns Tidings needs: "
            + "; ".join(
                f"{table.name}.{c.name} ({column_statement(table.name, c, bind.dialect)})" for c in required
            )
            + "; run the statement with the right value, then `tidings db upgrade` again"
        )
    for column in missing:
        op.add_column(table.name, sa.Column(column.name, column.type, nullable=True))
    for index in table.indexes:
        index.create(bind, checkfirst=True)


def downgrade() -> None:
    baseline = sa.MetaData()
    _tables(baseline)
    baseline.drop_all(op.get_bind())
