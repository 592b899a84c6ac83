"""The per-key sequences of `sequential_by` handlers (outbox/ordering.py).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    present = set(sa.inspect(op.get_bind()).get_table_names())
    if "tidings_key_heads" not in present:  # a database `create_all` made may have it already
        op.create_table(
            "tidings_key_heads",
            sa.Column("handler", sa.String(255), primary_key=True),
            sa.Column("key", sa.String(255), primary_key=True),
            sa.Column("assigned", sa.BigInteger(), nullable=False),
            sa.Column("applied", sa.BigInteger(), nullable=False),
        )
    if "tidings_key_sequence" not in present:
        op.create_table(
            "tidings_key_sequence",
            sa.Column("handler", sa.String(255), primary_key=True),
            sa.Column("message_id", sa.String(64), primary_key=True),
            sa.Column("key", sa.String(255), nullable=False),
            sa.Column("seq", sa.BigInteger(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        )


def downgrade() -> None:
    op.drop_table("tidings_key_sequence")
    op.drop_table("tidings_key_heads")
