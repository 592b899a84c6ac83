"""The loader: builds a domain's storage once from its settings — the only place that picks a
provider class by name. Everyone else asks the ports on `Storage`.

Providers, one per backend:

- memory: every port in one `MemoryDatabase` (the event store too, unless configured apart);
- SQL (SQLite, PostgreSQL): aggregates, outbox, inbox and positions in the default database's
  tables, the event store there too or in a SQL database of its own;
- Message DB: the event store only (`event_store.provider = "message_db"`).

    storage = load_storage("shop", {"default": {"provider": "memory"}}, {"provider": "memory"})
    storage.outbox.relay_batch(publish, 100, Backoff())
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tidings.domain.errors import ConfigurationError
from tidings.domain.inbox import MemoryInbox, SqlInbox
from tidings.domain.memory import MemoryDatabase
from tidings.domain.message_db import MessageDbDatabase
from tidings.domain.ports import (
    Database,
    DeadLetters,
    DeliveryLog,
    EventStore,
    Inbox,
    Outbox,
    Positions,
    Store,
)
from tidings.domain.positions import MemoryPositions, SqlPositions
from tidings.domain.settings import DatabaseSettings, EventStoreSettings
from tidings.domain.sql import SqlDatabase
from tidings.outbox.dead_letters import MemoryDeadLetters, SqlDeadLetters
from tidings.outbox.progress import MemoryDeliveryLog, SqlDeliveryLog
from tidings.outbox.relay import MemoryOutbox, SqlOutbox

SQL_PROVIDERS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Storage:
    """A domain's ports, built once by `load_storage` and never changed afterwards.

    `databases` are the configured databases (aggregates and projections, by name); the
    outbox, inbox, positions, delivery log and dead letters live in `databases["default"]`.
    """

    databases: Mapping[str, Database]
    event_store: EventStore
    outbox: Outbox
    inbox: Inbox
    positions: Positions
    deliveries: DeliveryLog
    dead_letters: DeadLetters
    is_persistent: bool  # the default database outlives the process: its tables are created

    @property
    def default(self) -> Database:
        return self.databases["default"]

    @property
    def stores(self) -> dict[str, Store]:
        """Every store once, by name: the databases, then the event store when it is apart."""
        return {**self.databases, self.event_store.name: self.event_store, **self.databases}

    def create_tables(self) -> None:
        for store in self.stores.values():
            store.create_tables()

    def drop_tables(self) -> None:
        for store in self.stores.values():
            store.drop_tables()

    def dispose(self, close: bool = True) -> None:
        """Close every connection pool (at shutdown; `close=False` after a fork: forget the
        parent's connections without closing them); they reopen on use."""
        for store in self.stores.values():
            store.dispose(close)


def load_storage(
    domain: str, databases: Mapping[str, DatabaseSettings], event_store: EventStoreSettings
) -> Storage:
    """The storage of domain `domain` for its `[databases.*]` and `[event_store]` settings.

    Raises ConfigurationError for a provider it does not know.
    """
    if "default" not in databases:
        raise ConfigurationError(f"{domain}: no [databases.default] configured")
    built = {name: _database(name, settings) for name, settings in databases.items()}
    default = built["default"]
    store = _event_store(event_store, default)
    if isinstance(default, MemoryDatabase):
        return Storage(
            databases=built,
            event_store=store,
            outbox=MemoryOutbox(default.outbox, default.lock, domain),
            inbox=MemoryInbox(default.inbox, default.lock),
            positions=MemoryPositions(default),
            deliveries=MemoryDeliveryLog(
                default.outbox, default.inbox, default.dead_letters, default.lock, domain
            ),
            dead_letters=MemoryDeadLetters(default.dead_letters, default.lock, domain),
            is_persistent=False,
        )
    assert isinstance(default, SqlDatabase)
    default.add_message_tables()
    assert default.outbox_table is not None and default.inbox_table is not None
    assert default.dead_letters_table is not None
    return Storage(
        databases=built,
        event_store=store,
        outbox=SqlOutbox(default, default.outbox_table, domain),
        inbox=SqlInbox(default),
        positions=SqlPositions(default),
        deliveries=SqlDeliveryLog(
            default, default.outbox_table, default.inbox_table, default.dead_letters_table, domain
        ),
        dead_letters=SqlDeadLetters(default, default.dead_letters_table, domain),
        is_persistent=True,
    )


def _database(name: str, settings: DatabaseSettings) -> Database:
    provider = settings.provider
    if provider == "memory":
        return MemoryDatabase(name)
    if provider in SQL_PROVIDERS and settings.database_uri:
        return SqlDatabase(name, settings.database_uri, prepared=settings.prepared_statements)
    raise ConfigurationError(
        f"databases.{name}.provider {provider!r} is not one of memory, {', '.join(SQL_PROVIDERS)}"
    )


def _event_store(settings: EventStoreSettings, default: Database) -> EventStore:
    """Message DB apart; memory in the default memory database; SQL in the default SQL
    database when the URI is the same (one transaction for events and outbox), else apart."""
    provider = settings.provider
    if provider == "message_db" and settings.database_uri:
        return MessageDbDatabase("event_store", settings.database_uri)
    if provider == "memory":
        return default if isinstance(default, MemoryDatabase) else MemoryDatabase("event_store")
    if provider not in SQL_PROVIDERS:
        raise ConfigurationError(f"event_store.provider {provider!r} is not known")
    uri = settings.database_uri
    shared = isinstance(default, SqlDatabase) and uri in (None, "", default.uri)
    # parsing does not require the URI of a SQL event store apart from a non-SQL default yet
    prepared = default.prepared if isinstance(default, SqlDatabase) else True
    store = default if shared else SqlDatabase("event_store", uri, prepared=prepared)  # type: ignore[arg-type]
    assert isinstance(store, SqlDatabase)
    store.add_event_store()
    return store
