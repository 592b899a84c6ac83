"""The Domain: registration of elements, `init()`, and the facade over storage and the bus.

Decorators only record; `init()` validates everything at once, then builds the databases,
the brokers and one message bus (domain/bus.py), which does all message processing.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa

from tidings.domain import config as cfg
from tidings.domain.brokers import Brokers
from tidings.domain.bus import SKIPPED, Engine, MessageBus
from tidings.domain.context import pop_domain, push_domain
from tidings.domain.database import Database
from tidings.domain.elements import StoredModel
from tidings.domain.envelope import Message
from tidings.domain.errors import ConfigurationError, IncorrectUsageError
from tidings.domain.handlers import ElementClass
from tidings.domain.messages import stored_messages
from tidings.domain.naming import Names, Registry
from tidings.domain.parsing import parse_settings
from tidings.domain.ports import Store
from tidings.domain.providers import Storage
from tidings.domain.registry import OPTIONS, derive_element, domain_event_subscriber
from tidings.domain.repository import Repository
from tidings.domain.settings import Settings
from tidings.domain.subscriptions import SubscriptionSettings
from tidings.domain.uow import UnitOfWork
from tidings.domain.wiring import build_bus, build_storage, rebuild_models

log = logging.getLogger("tidings")

__all__ = ["Domain", "SKIPPED"]


def _decorator(kind: str) -> Callable[..., Any]:
    """`Domain.<kind>`: `@domain.<kind>` or `@domain.<kind>(**options)` registers a class."""

    def decorate(self: Domain, cls: type | None = None, **options: Any) -> Any:
        if cls is None:
            return lambda c: self.register(kind, c, **options)
        return self.register(kind, cls, **options)

    decorate.__name__ = kind
    decorate.__doc__ = f"Register a {kind.replace('_', ' ')}: `@domain.{kind}` or with options."
    return decorate


class Domain:
    """Declare elements with the decorators, call `init()`, then work inside `domain_context()`."""

    def __init__(self, name: str | None = None, root_path: str | Path | None = None) -> None:
        name, self.root_path = _name_and_root(name, root_path)
        self.registry: Registry = {kind: {} for kind in OPTIONS}
        self.names = Names(name, self.registry)
        self.name, self.camel_name, self.prefix = self.names.name, self.names.camel_name, self.names.prefix
        self.config: dict[str, Any] = cfg.load_config(self.root_path)
        self.initialized = False
        self._built: Storage | None = None  # built by init(): the ports of every provider
        self.databases: dict[str, Store] = {}
        self._brokers: Brokers | None = None  # built by init() from [brokers.<name>]
        self._bus: MessageBus | None = None  # built by init()

    def __repr__(self) -> str:
        return f"<Domain {self.name}>"

    # ---- registration ---------------------------------------------------------------------
    def register(self, kind: str, cls: type, **options: Any) -> ElementClass:
        unknown = set(options) - OPTIONS[kind]
        if unknown:
            raise ConfigurationError(
                f"{cls.__name__}: unknown option(s) {sorted(unknown)} for a {kind}; "
                f"allowed: {sorted(OPTIONS[kind])}"
            )
        if kind == "subscriber" and options.get("event") is not None:
            kind, cls = "event_handler", domain_event_subscriber(cls, options)
        element = derive_element(kind, cls, options)
        # what `raise_()` builds an envelope with (read by `domain_of`)
        setattr(element, "__tidings_domain__", self)  # noqa: B010 - no element class declares it
        self.registry[kind][element.__name__] = element
        self.initialized = False
        return element

    aggregate = _decorator("aggregate")
    entity = _decorator("entity")
    value_object = _decorator("value_object")
    event = _decorator("event")
    command = _decorator("command")
    projection = _decorator("projection")
    query = _decorator("query")
    event_handler = _decorator("event_handler")
    command_handler = _decorator("command_handler")
    projector = _decorator("projector")
    subscriber = _decorator("subscriber")
    query_handler = _decorator("query_handler")

    # ---- init: validate and wire once ------------------------------------------------------
    def init(self) -> Domain:
        """Validate registry and configuration (one ConfigurationError listing every problem),
        then build the storage, the brokers and the bus."""
        from tidings.domain.validation import check_registry

        settings, problems = parse_settings(self.config)  # the one validation of the config
        problems += rebuild_models(self.registry)
        problems += check_registry(self.names, settings)
        if problems or settings is None:
            raise ConfigurationError(
                f"domain '{self.name}' has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems)
            )
        self.settings: Settings = settings
        self._built = storage = build_storage(self.name, self.registry, settings, self._built)
        self.databases = storage.stores
        self.outbox_database, self.event_store_database = storage.default, storage.event_store
        if self._brokers is not None:
            self._brokers.close()
        self._brokers = Brokers(self, settings.brokers)
        engine = self._bus.engine if self._bus is not None else None  # survives a re-init
        self._bus = build_bus(self, settings, self.event_store_database, self.outbox_database, engine)
        self.initialized = True
        return self

    @property
    def storage(self) -> Storage:
        """The ports of every provider (outbox, inbox, positions, ...), built by `init()`."""
        self._require_init()
        return self._built  # type: ignore[return-value]  # init() built it

    def _require_init(self) -> None:
        if not self.initialized:
            raise IncorrectUsageError(f"call domain.init() before using domain '{self.name}'")

    # ---- composition -----------------------------------------------------------------------
    def database_for(self, model: ElementClass) -> Database:
        name = model.meta_.get("provider", "default")
        if name not in self.storage.databases:
            raise ConfigurationError(f"{model.__name__}: no database named '{name}'")
        return self.storage.databases[name]

    def subscription_settings(self, handler: type) -> SubscriptionSettings:
        """The handler's resolved subscription settings (see `domain.subscriptions`)."""
        return self.bus.routes.spec(handler).subscription

    def read_messages(
        self, stream_or_category: str, from_position: int = 0, limit: int = 1000
    ) -> list[Message]:
        """Stored events and commands of a stream (from its position) or a category (from the
        global position), oldest first, as envelopes."""
        self._require_init()
        return stored_messages(self.event_store_database, stream_or_category, from_position, limit)

    def repository_for(self, model: ElementClass) -> Repository[Any]:
        self._require_init()
        if model.element_kind not in ("aggregate", "projection"):
            raise IncorrectUsageError(f"{model.__name__} is not an aggregate or projection")
        stored = cast(StoredModel, model)  # the kinds whose bases are BaseAggregate, BaseProjection
        return Repository(self.bus, stored, self.database_for(stored))

    def unit_of_work(self) -> UnitOfWork:
        return self.bus.unit_of_work()

    @contextmanager
    def domain_context(self) -> Iterator[Domain]:
        token = push_domain(self)
        try:
            yield self
        finally:
            pop_domain(token)

    @property
    def metadata(self) -> sa.MetaData:
        """The SQLAlchemy MetaData of the default database (hand it to Alembic)."""
        return self.storage.default.metadata

    def create_tables(self) -> None:
        self.storage.create_tables()

    def drop_tables(self) -> None:
        self.storage.drop_tables()

    def dispose(self, after_fork: bool = False) -> None:
        """Close connection pools (at shutdown); `after_fork=True` in a forked child: forget the
        parent's database connections without closing them (the parent still uses them)."""
        if self._built is not None:
            self._built.dispose(close=not after_fork)
        if self._brokers is not None:
            self._brokers.close()

    @property
    def brokers(self) -> Brokers:
        """The named brokers: `domain.brokers["name"]`, `domain.brokers.publish(stream, message)`."""
        self._require_init()
        assert self._brokers is not None  # init() built them
        return self._brokers

    # ---- messages: the bus does the work (domain/bus.py) ------------------------------------
    @property
    def bus(self) -> MessageBus:
        self._require_init()
        assert self._bus is not None
        return self._bus

    @property
    def engine(self) -> Engine | None:
        return self._bus.engine if self._bus is not None else None

    def attach_engine(self, engine: Engine | None) -> None:
        """The async engine this domain hands work to (one per domain; None detaches it)."""
        self.bus.attach_engine(engine)

    def event_message(self, event: Any, aggregate: Any | None = None) -> Message:
        """The envelope for an event raised by `aggregate` (or published on its own)."""
        return self.bus.envelopes.event(event, aggregate)

    def from_message(self, message: Message | dict[str, Any]) -> Any:
        """The typed event/command in an envelope; unknown type or bad data is a typed error."""
        return self.bus.routes.decode(message)

    def handlers_for(self, message: Message) -> list[type]:
        """Every handler that must receive this message (category, type and source_stream)."""
        return self.bus.routes.handlers_for(message)

    def process(self, command: Any, asynchronous: bool | None = None, **options: Any) -> Any:
        """Handle a command: inline in sync mode (returns the handler's value), else via the
        outbox (returns its message id at once). Options as the reference's: `idempotency_key`,
        `raise_on_duplicate`, `correlation_id`, `deadline`, `timeout`, `priority` (see
        `MessageBus.process`)."""
        return self.bus.process(command, asynchronous, **options)

    def publish(self, events: Any) -> list[Message]:
        """Publish events raised outside an aggregate; they commit with the current unit of work."""
        return self.bus.publish(events)

    def dispatch(self, query: Any) -> Any:
        """Run the query handler for this query and return its result."""
        return self.bus.dispatch(query)

    def publish_external(self, stream: str, payload: dict[str, Any], broker: str = "default") -> str:
        """Alias of `domain.brokers.publish(stream, payload, broker)`."""
        return self.brokers.publish(stream, payload, broker)

    def run_handler(self, handler: type, message: Message, **options: Any) -> Any:
        """Run one handler for one message in its own unit of work (see `MessageBus.run_handler`)."""
        return self.bus.run_handler(handler, message, **options)


def _name_and_root(name: str | None, root_path: str | Path | None) -> tuple[str, Path]:
    """The domain's name (else its module's) and folder (else its file's): where it is created."""
    caller = inspect.stack()[2]
    if name is None:
        name = caller.frame.f_globals.get("__name__", "domain").rsplit(".", 1)[-1]
        if name == "__main__":
            name = Path(caller.filename).stem
    return name, Path(root_path or Path(caller.filename).resolve().parent)
