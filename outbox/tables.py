"""The outbox and inbox tables: message bookkeeping that commits with the business data."""

from __future__ import annotations

import sqlalchemy as sa

PENDING, PUBLISHED = "pending", "published"


def define_outbox(metadata: sa.MetaData) -> sa.Table:
    """One row per message to relay; `envelope` is the JSON envelope, published as is."""
    return sa.Table(
        "tidings_outbox",
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("message_id", sa.String(64), nullable=False, unique=True),
        sa.Column("stream", sa.String(255), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("envelope", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, default=PENDING),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        sa.Index("ix_tidings_outbox_due", "status", "next_attempt_at"),
    )


def define_inbox(metadata: sa.MetaData) -> sa.Table:
    """One row per (handler, message) applied: the unique key makes delivery effectively once."""
    return sa.Table(
        "tidings_inbox",
        metadata,
        sa.Column("handler", sa.String(255), primary_key=True),
        sa.Column("message_id", sa.String(64), primary_key=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    )
