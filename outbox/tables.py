"""The outbox and inbox tables: message bookkeeping that commits with the business data."""

from __future__ import annotations

import sqlalchemy as sa

# Execution options of a transaction that only reads (`tidings status`, the metrics' gauges):
# on SQLite it begins DEFERRED instead of IMMEDIATE, so a reading never waits for the write
# lock a running handler or relay round holds (WAL readers do not block). Other databases
# ignore it.
READ_ONLY = {"tidings_read_only": True}

PENDING, PUBLISHED = "pending", "published"


def define_outbox(metadata: sa.MetaData) -> sa.Table:
    """One row per message to relay; `envelope` is the JSON envelope, published as is.

    `domain` names the domain that wrote the row: domains may share a database, and a relay
    claims only its own domain's rows (another domain's row has no handler here).
    """
    table = sa.Table(
        "tidings_outbox",
        metadata,
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("message_id", sa.String(64), nullable=False, unique=True),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.Column("stream", sa.String(255), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("envelope", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, default=PENDING),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.Text),
        # The delivery audit's bookkeeping (tasks/audit.py), NULL until it looks at the row:
        # times it re-sent the row, when it last did, when it may next, and when it found every
        # queued handler done with a row it had selected (so it never selects it again).
        sa.Column("resent", sa.Integer, default=0),
        sa.Column("last_audit_at", sa.DateTime(timezone=True)),
        sa.Column("next_audit_at", sa.DateTime(timezone=True)),
        sa.Column("confirmed_at", sa.DateTime(timezone=True)),
        sa.Index("ix_tidings_outbox_due", "status", "next_attempt_at"),
    )
    # The claim walks this index in id order: it holds only pending rows, so the published rows
    # kept for `retention` (a million of them took a claim to 250-440 ms) are never scanned.
    pending = table.c.status == PENDING
    sa.Index(
        "ix_tidings_outbox_pending",
        table.c.domain,
        table.c.id,
        postgresql_where=pending,
        sqlite_where=pending,
    )
    # The audit walks the published rows it has not confirmed in publish order, in a window
    # of time: this index holds only those, so a round costs the unconfirmed rows it reads
    # (each probed in the inbox and dead-letter keys), not the rows kept for `retention`.
    unconfirmed = sa.and_(table.c.status == PUBLISHED, table.c.confirmed_at.is_(None))
    sa.Index(
        "ix_tidings_outbox_unconfirmed",
        table.c.domain,
        table.c.published_at,
        table.c.id,
        postgresql_where=unconfirmed,
        sqlite_where=unconfirmed,
    )
    return table


def define_dead_letters(metadata: sa.MetaData) -> sa.Table:
    """One row per dead-lettered delivery: what failed, where, why, and what arrived.

    `handler` is the handler's inbox key (`tidings.<domain>.<Handler>`), so the audit tells a
    dead-lettered delivery from a missing one with the same key it reads the inbox with.
    `body` is the JSON of the decoded task argument (the envelope), `raw_body` what arrived as
    text when it never decoded (poison); `headers` the JSON of the task headers, if any.
    """
    return sa.Table(
        "tidings_dead_letters",
        metadata,
        sa.Column("entry_id", sa.String(64), primary_key=True),
        sa.Column("domain", sa.String(255), nullable=False),
        sa.Column("handler", sa.String(255)),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("task", sa.String(255)),
        sa.Column("message_id", sa.String(64)),
        sa.Column("body", sa.Text),
        sa.Column("raw_body", sa.Text),
        sa.Column("headers", sa.Text),
        sa.Column("error_type", sa.String(255), nullable=False),
        sa.Column("error_message", sa.Text, nullable=False),
        sa.Column("traceback", sa.Text),
        sa.Column("attempts", sa.Integer),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Index("ix_tidings_dead_letters_key", "handler", "message_id"),
        sa.Index("ix_tidings_dead_letters_queue", "domain", "queue", "failed_at"),
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


def define_command_keys(metadata: sa.MetaData) -> sa.Table:
    """One row per (domain, idempotency key) of `domain.process`: the first command's message id
    and its JSON result. It commits with that command's effects (sync) or its outbox row
    (async), so a key is taken exactly when the command it stands for happened."""
    return sa.Table(
        "tidings_command_keys",
        metadata,
        sa.Column("domain", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("result", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def define_positions(metadata: sa.MetaData) -> sa.Table:
    """The cursor of each event_store subscription: the last global position it processed.

    `owner` and `lease_until` (unix seconds) make the row a lease with a fencing token: a
    cursor save succeeds only for the current owner.
    """
    return sa.Table(
        "tidings_positions",
        metadata,
        sa.Column("handler", sa.String(255), primary_key=True),
        sa.Column("position", sa.BigInteger, nullable=False, default=0),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("owner", sa.String(64)),
        sa.Column("lease_until", sa.Float),
    )


def define_failed_positions(metadata: sa.MetaData) -> sa.Table:
    """Messages an event_store subscription could not handle: `retrying`, then `failed`."""
    return sa.Table(
        "tidings_failed_positions",
        metadata,
        sa.Column("handler", sa.String(255), primary_key=True),
        sa.Column("global_position", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_type", sa.String(255), nullable=False),
        sa.Column("error_message", sa.Text, nullable=False),
        sa.Column("traceback", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
    )
