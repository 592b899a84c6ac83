"""The storage ports: small protocols every provider (memory, SQL, Message DB) implements.

Two kinds of operation, two kinds of object:

- inside the caller's transaction, on a *session* (one per database per unit of work):
  aggregate rows (`AggregateSession`), event appends (`EventStoreSession`), outbox rows
  (`OutboxSession`) and inbox rows (`InboxSession`) commit or roll back together;
- on their own, on a *store* built once by `tidings.domain.providers.load_storage`:
  reading the event store, relaying the outbox, auditing deliveries (`DeliveryLog`), purging
  the inbox, owning a subscription, keeping dead letters (`DeadLetters`).

Each port has a contract suite in `tests/ports/` that every provider runs.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa

from tidings.outbox.dead_letters import DeadLetters
from tidings.outbox.progress import (
    AuditRoutes,
    AuditWindow,
    Backlog,
    DeliveryLog,
    DeliverySnapshot,
    Unconfirmed,
)
from tidings.outbox.relay import Backoff, OutboxStatus, OutboxStore, Publish

if TYPE_CHECKING:
    from tidings.domain.elements import StoredModel

Row = tuple[dict[str, Any], int]  # (field values, stored version)
Record = dict[str, Any]  # an event-store record (see `tidings.domain.database.event_record`)

__all__ = [
    "AggregateSession",
    "AuditRoutes",
    "AuditWindow",
    "CommandKey",
    "CommandKeySession",
    "Backoff",
    "Database",
    "Backlog",
    "DeadLetters",
    "DeliveryLog",
    "DeliverySnapshot",
    "EventStore",
    "EventStoreSession",
    "Inbox",
    "InboxSession",
    "Lease",
    "Outbox",
    "OutboxSession",
    "OutboxStatus",
    "Positions",
    "Publish",
    "Row",
    "Session",
    "Store",
    "Transaction",
    "Unconfirmed",
]


# ---- in the caller's transaction ---------------------------------------------------------------
class Transaction(Protocol):
    def flush(self) -> None:
        """Send writes held back to save round trips; raise their conflicts (before any of the
        unit of work's databases commits)."""
        ...

    def commit(self) -> None: ...
    def rollback(self) -> None: ...


class AggregateSession(Transaction, Protocol):
    """Rows of aggregates (versioned) and projections (upserted), by table and identity."""

    def get(self, table: str, identity: str) -> Row | None: ...
    def find(self, table: str, filters: dict[str, Any]) -> list[Row]: ...
    def save(
        self, table: str, identity: str, data: dict[str, Any], expected_version: int, versioned: bool
    ) -> int:
        """Write a row; a versioned row must be at `expected_version` (-1: new), else
        ExpectedVersionError. Returns the stored version."""
        ...

    def delete(self, table: str, identity: str) -> bool: ...


class EventStoreSession(Transaction, Protocol):
    def append_events(self, records: list[Record]) -> None:
        """Append records; positions are the store's. An aggregate's events (a `sequence` in
        their metadata) expect their stream's current version, else ExpectedVersionError."""
        ...


class OutboxSession(Transaction, Protocol):
    def write_outbox(self, rows: list[dict[str, Any]]) -> None:
        """Insert outbox rows (`tidings.outbox.writer.outbox_rows`), relayed after commit."""
        ...


class InboxSession(Transaction, Protocol):
    def mark_processed(self, handler: str, message_id: str) -> bool:
        """Record that `handler` applied `message_id` in this transaction: False when it already
        did (committed, or earlier in this transaction). The row rolls back with the rest."""
        ...


@dataclass(frozen=True)
class CommandKey:
    """What an idempotency key recorded: the first command's message id and its JSON result."""

    message_id: str
    result: str | None


class CommandKeySession(Transaction, Protocol):
    """The idempotency keys of `domain.process`, in the default database's transaction."""

    def claim_command_key(self, domain: str, key: str, message_id: str) -> CommandKey | None:
        """Take `key` for `message_id` in this transaction: None when it is new, else what the
        command that took it first recorded (the caller then does not process again)."""
        ...

    def record_command_result(self, domain: str, key: str, result: str) -> None:
        """The JSON result of the command that took `key` in this transaction."""
        ...


class Session(AggregateSession, EventStoreSession, OutboxSession, InboxSession, CommandKeySession, Protocol):
    """A session of the default database, where all of the above share one transaction."""


# ---- stores -------------------------------------------------------------------------------------
class Store(Protocol):
    """What every provider object has: a name (its session key in a unit of work), sessions
    and the lifecycle of its schema and connections."""

    name: str

    def session(self) -> Any: ...
    def create_tables(self) -> None: ...
    def drop_tables(self) -> None: ...
    def dispose(self, close: bool = True) -> None: ...


class Database(Store, Protocol):
    """The aggregates port: a database of aggregate and projection tables."""

    @property
    def provider(self) -> str: ...  # "memory", "sqlite", "postgresql"

    metadata: sa.MetaData  # the SQL tables its models have (hand it to Alembic)

    def session(self) -> Session: ...
    def add_model(self, model: StoredModel, versioned: bool) -> None:
        """Store `model` here (a SQL table named after it; nothing in memory)."""
        ...

    def truncate(self, table: str) -> None:
        """Delete every row of one model's table (a projection rebuild)."""
        ...

    def ping(self) -> None:
        """Raise when the database does not answer."""
        ...


class EventStore(Store, Protocol):
    """The event store: append through a session, read on its own."""

    def session(self) -> Any: ...  # an EventStoreSession
    def read_events(self, stream_or_category: str, from_position: int = 0, limit: int = 1000) -> list[Record]:
        """A stream from its own position, or a category from a global position, in order."""
        ...

    def read_categories(
        self, categories: list[str], from_position: int, limit: int, settled: bool = False
    ) -> list[Record]:
        """Records of these categories with `global_position >= from_position`, in global order.

        `settled`: only records no transaction still running can come before, so a reader that
        moves a cursor over them sees every record exactly once (a subscription's read). A store
        whose positions follow commit order (memory, SQLite) has nothing to hold back.
        """
        ...

    def last_position(self, categories: list[str]) -> int | None:
        """The highest global position in these categories (0 if none; None: cannot say)."""
        ...


Outbox = OutboxStore  # relay_batch, purge_published, status: see tidings.outbox.relay


class Inbox(Protocol):
    """The inbox beyond the transaction: its rows are written by `InboxSession.mark_processed`."""

    def purge(self, older_than: datetime, prefix: str | None = None) -> int:
        """Delete rows processed before `older_than` (only handler keys starting with `prefix`,
        e.g. one domain's `tidings.<domain>.`); returns how many. A message redelivered after
        that is applied again, so keep them longer than any redelivery can take (the relay
        purges after `[outbox] inbox_retention`, which exceeds the audit's window)."""
        ...

    def forget(self, handler: str) -> int:
        """Delete every row of `handler` (a projection rebuild replays its messages)."""
        ...


class Lease(Protocol):
    """Ownership of one subscription, with its cursor."""

    name: str

    def position(self) -> int: ...
    def save(self, position: int) -> None:
        """Move the cursor; LeaseLostError when another consumer took the subscription over."""
        ...


class Positions(Protocol):
    """Cursors, single-consumer ownership and failed positions of event_store subscriptions."""

    def owned(self, name: str) -> AbstractContextManager[Lease | None]:
        """Own the subscription for the block (None: another consumer owns it)."""
        ...

    def reset(self, name: str, position: int = 0) -> None: ...
    def failures(self, name: str | None = None, status: str | None = None) -> list[dict[str, Any]]: ...
    def record_failure(self, name: str, record: Record, error: BaseException, final: bool) -> int:
        """Record (or count again) a message `name` failed on; returns the attempts so far."""
        ...

    def resolve(self, name: str, global_position: int) -> None: ...
    def purge(self, name: str) -> int:
        """Delete the `failed` positions of `name`; returns how many."""
        ...

    def forget(self, name: str) -> None:
        """Drop the cursor, the failed positions and the inbox rows of `name` (for a rebuild)."""
        ...
