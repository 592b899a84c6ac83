"""The Domain: registry, composition root and message processing entry points."""

from __future__ import annotations

import copy
import inspect
import logging
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol
from uuid import uuid4

import sqlalchemy as sa

from tidings.domain import config as cfg
from tidings.domain.brokers import Brokers
from tidings.domain.context import current_message, current_uow, pop_domain, push_domain
from tidings.domain.database import Database
from tidings.domain.envelope import Message, MessageKind, stream_matches
from tidings.domain.errors import (
    ConfigurationError,
    IncorrectUsageError,
    InvalidMessageError,
    UnknownMessageTypeError,
    ValidationError,
)
from tidings.domain.memory import MemoryDatabase
from tidings.domain.message_db import MessageDbDatabase
from tidings.domain.naming import camel, snake
from tidings.domain.registry import (
    OPTIONS,
    derive_element,
    domain_event_subscriber,
    handler_targets,
    query_targets,
)
from tidings.domain.repository import Repository
from tidings.domain.sql import SqlDatabase
from tidings.domain.subscriptions import SubscriptionSettings
from tidings.domain.subscriptions import resolve as resolve_subscription
from tidings.domain.tables import define_model_table
from tidings.domain.uow import UnitOfWork

log = logging.getLogger("tidings")


class Engine(Protocol):
    """What the domain needs from an async engine (the Celery app factory provides one)."""

    def committed(self, messages: list[Message]) -> None:
        """Called after a commit that wrote outbox rows."""

    def deliver(
        self, broker: Any, stream: str, message_id: str, message: dict, subscribers: list[type]
    ) -> None:
        """Hand an external message just published on `broker` to these subscribers."""


_sync_queue: ContextVar[deque | None] = ContextVar("tidings_sync_queue", default=None)
SKIPPED = object()  # run_handler's result for a message this handler already applied


class Domain:
    """Declare elements with the decorators, call `init()`, then work inside `domain_context()`."""

    def __init__(self, name: str | None = None, root_path: str | Path | None = None) -> None:
        caller = inspect.stack()[1]
        module = caller.frame.f_globals.get("__name__", "domain")
        if name is None:
            name = module.rsplit(".", 1)[-1]
            if name == "__main__":
                name = Path(caller.filename).stem
        self.name = snake(name)
        self.camel_name = camel(name)
        self.prefix = f"{self.name}::"
        self.root_path = Path(root_path or Path(caller.filename).resolve().parent)
        self.config: dict[str, Any] = cfg.load_config(self.root_path)
        self.registry: dict[str, dict[str, type]] = {kind: {} for kind in OPTIONS}
        self.initialized = False
        self.databases: dict[str, Database] = {}
        self._brokers: Brokers | None = None  # built by init() from [brokers.<name>]
        self._types: dict[str, type] = {}
        self._routes: dict[str, list[type]] = {}
        self._methods: dict[tuple[type, str], list[str]] = {}
        self.engine: Engine | None = None  # attached by the Celery app factory

    def __repr__(self) -> str:
        return f"<Domain {self.name}>"

    # ---- registration ---------------------------------------------------------------------
    def register(self, kind: str, cls: type, **options: Any) -> type:
        unknown = set(options) - OPTIONS[kind]
        if unknown:
            raise ConfigurationError(
                f"{cls.__name__}: unknown option(s) {sorted(unknown)} for a {kind}; "
                f"allowed: {sorted(OPTIONS[kind])}"
            )
        if kind == "subscriber" and options.get("event") is not None:
            kind, cls = "event_handler", domain_event_subscriber(cls, options)
        element = derive_element(kind, cls, options)
        element.__tidings_domain__ = self  # what `raise_()` builds an envelope with
        self.registry[kind][element.__name__] = element
        self.initialized = False
        return element

    def _decorator(kind: str):  # noqa: N805 - builds methods at class creation
        def decorate(self, cls: type | None = None, **options: Any):
            if cls is None:
                return lambda c: self.register(kind, c, **options)
            return self.register(kind, cls, **options)

        decorate.__name__ = kind
        decorate.__doc__ = f"Register a {kind.replace('_', ' ')}: `@domain.{kind}` or with options."
        return decorate

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
    del _decorator

    # ---- init: validate and wire once ------------------------------------------------------
    def init(self) -> Domain:
        """Validate the registry and configuration, then build databases and routing tables.

        Raises one ConfigurationError listing every problem found.
        """
        from tidings.domain.validation import check_registry

        problems: list[str] = []
        try:
            config = cfg.interpolate(copy.deepcopy(self.config))
        except ConfigurationError as exc:
            raise ConfigurationError(f"{self.name}: {exc}") from None
        problems += cfg.validate_config(config)
        self._rebuild_models()
        problems += check_registry(self, config)
        if problems:
            raise ConfigurationError(
                f"domain '{self.name}' has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems)
            )
        self.settings = config
        self._build_databases(config)
        if self._brokers is not None:
            self._brokers.close()
        self._brokers = Brokers(self, config["brokers"])
        self._build_routes()
        self.initialized = True
        return self

    def _rebuild_models(self) -> None:
        names = {n: c for kind in self.registry.values() for n, c in kind.items()}
        for kind in ("value_object", "entity", "aggregate", "projection", "event", "command", "query"):
            for model in self.registry[kind].values():
                try:
                    model.model_rebuild(force=True, _types_namespace=names)
                except Exception as exc:  # noqa: BLE001 - reported, not swallowed
                    log.debug("rebuild of %s failed: %s", model.__name__, exc)

    def _build_databases(self, config: dict[str, Any]) -> None:
        for db in self.databases.values():
            db.dispose()
        self.databases = {}
        for name, settings in config["databases"].items():
            if settings["provider"] == "memory":
                self.databases[name] = MemoryDatabase(name)
            else:
                self.databases[name] = SqlDatabase(name, settings["database_uri"])
        for kind in ("aggregate", "projection"):
            for model in self.registry[kind].values():
                db = self.database_for(model)
                if isinstance(db, SqlDatabase):
                    define_model_table(db.metadata, model, versioned=kind == "aggregate")
        default = self.databases["default"]
        self.outbox_database = default
        if isinstance(default, SqlDatabase):
            default.add_message_tables()
        store = config["event_store"]
        if store["provider"] == "message_db":
            self.event_store_database = MessageDbDatabase("event_store", store["database_uri"])
        elif store["provider"] == "memory":
            self.event_store_database = (
                default if isinstance(default, MemoryDatabase) else MemoryDatabase("event_store")
            )
        else:
            uri = store.get("database_uri")
            if not uri and isinstance(default, SqlDatabase):
                uri = default.uri
            if isinstance(default, SqlDatabase) and uri == default.uri:
                self.event_store_database = default
            else:
                self.event_store_database = SqlDatabase("event_store", uri)
            self.event_store_database.add_event_store()
        self.databases.setdefault(self.event_store_database.name, self.event_store_database)

    def _build_routes(self) -> None:
        self._types = {self.type_of(c): c for k in ("event", "command") for c in self.registry[k].values()}
        self._routes, self._methods = {}, {}
        for kind in ("event_handler", "command_handler", "projector"):
            for handler in self.registry[kind].values():
                for category in self.handler_categories(handler):
                    self._routes.setdefault(category, []).append(handler)

    def _require_init(self) -> None:
        if not self.initialized:
            raise IncorrectUsageError(f"call domain.init() before using domain '{self.name}'")

    # ---- naming ------------------------------------------------------------------------------
    def category(self, aggregate: type | str) -> str:
        name = aggregate if isinstance(aggregate, str) else aggregate.__name__
        cls = self.registry["aggregate"].get(name)
        custom = cls.meta_.get("stream_category") if cls else None
        if custom:
            return custom if "::" in custom else self.prefix + custom
        return self.prefix + snake(name)

    def qualify(self, category: str) -> str:
        """`order` -> `shop::order`; already-qualified names pass through."""
        return category if "::" in category else self.prefix + category

    def type_of(self, cls: type) -> str:
        return f"{self.camel_name}.{cls.__name__}.v{cls.meta_.get('version', 1)}"

    def part_of(self, cls: type) -> type:
        target = cls.meta_.get("part_of")
        name = target if isinstance(target, str) else getattr(target, "__name__", None)
        for kind in ("aggregate", "projection"):
            if name in self.registry[kind]:
                return self.registry[kind][name]
        raise ConfigurationError(f"{cls.__name__}: part_of {target!r} is not registered")

    def handler_categories(self, handler: type) -> list[str]:
        kind, meta = handler.element_kind, handler.meta_
        if kind == "command_handler":
            return [self.category(self.part_of(handler)) + ":command"]
        if kind == "projector":
            if meta.get("stream_categories"):
                return [self.qualify(c) for c in meta["stream_categories"]]
            return [self.category(a) for a in meta.get("aggregates") or []]
        if kind == "event_handler":
            if meta.get("event") is not None:  # a subscriber of a domain event: its stream
                name = meta["event"] if isinstance(meta["event"], str) else meta["event"].__name__
                return [self.category(self.part_of(self.registry["event"][name]))]
            if meta.get("stream_category"):
                return [self.qualify(meta["stream_category"])]
            return [self.category(self.part_of(handler))]
        return []

    # ---- composition -----------------------------------------------------------------------
    def database_for(self, model: type) -> Database:
        name = model.meta_.get("provider", "default")
        try:
            return self.databases[name]
        except KeyError:
            raise ConfigurationError(f"{model.__name__}: no database named '{name}'") from None

    def subscription_settings(self, handler: type) -> SubscriptionSettings:
        """The handler's resolved subscription settings (see `domain.subscriptions`)."""
        self._require_init()
        return resolve_subscription(handler, self.settings["server"])

    def read_messages(
        self, stream_or_category: str, from_position: int = 0, limit: int = 1000
    ) -> list[Message]:
        """Stored events and commands of a stream (from its position) or a category (from the
        global position), oldest first, as envelopes."""
        self._require_init()
        records = self.event_store_database.read_events(stream_or_category, from_position, limit)
        return [
            Message.from_dict(
                {
                    **r["metadata"],
                    "data": r["data"],
                    "metadata": {
                        **r["metadata"].get("metadata", {}),
                        "global_position": r["global_position"],
                        "position": r["position"],
                    },
                }
            )
            for r in records
        ]

    def repository_for(self, model: type) -> Repository:
        self._require_init()
        if model.element_kind not in ("aggregate", "projection"):
            raise IncorrectUsageError(f"{model.__name__} is not an aggregate or projection")
        return Repository(self, model, self.database_for(model))

    def unit_of_work(self) -> UnitOfWork:
        self._require_init()
        return UnitOfWork(self)

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
        self._require_init()
        default = self.databases["default"]
        if isinstance(default, SqlDatabase):
            return default.metadata
        metadata = sa.MetaData()
        for kind in ("aggregate", "projection"):
            for model in self.registry[kind].values():
                define_model_table(metadata, model, versioned=kind == "aggregate")
        return metadata

    def create_tables(self) -> None:
        self._require_init()
        for db in self.databases.values():
            db.create_tables()

    def drop_tables(self) -> None:
        self._require_init()
        for db in self.databases.values():
            db.drop_tables()

    def dispose(self) -> None:
        """Close connection pools (call after a fork, or at shutdown)."""
        for db in self.databases.values():
            db.dispose()
        if self._brokers is not None:
            self._brokers.close()

    @property
    def brokers(self) -> Brokers:
        """The named brokers: `domain.brokers["name"]`, `domain.brokers.publish(stream, message)`."""
        self._require_init()
        return self._brokers

    @property
    def outbox_enabled(self) -> bool:
        return self.initialized and cfg.outbox_enabled(self.settings)

    def is_sync(self, message: Message) -> bool:
        key = "event_processing" if message.kind == MessageKind.EVENT else "command_processing"
        return self.settings[key] == "sync"

    def attach_engine(self, engine: Engine | None) -> None:
        """The async engine this domain hands work to (one per domain; None detaches it)."""
        self.engine = engine

    # ---- envelopes -------------------------------------------------------------------------
    def _new_message(
        self, obj: Any, kind: MessageKind, stream: str, category: str, sequence: int | None
    ) -> Message:
        parent: Message | None = current_message.get()
        return Message(
            type=self.type_of(type(obj)),
            kind=kind,
            stream=stream,
            stream_category=category,
            origin_stream=parent.stream if parent else None,
            correlation_id=parent.correlation_id
            if parent
            else Message.model_fields["correlation_id"].default_factory(),
            causation_id=parent.id if parent else None,
            sequence=sequence,
            data=obj.model_dump(mode="json"),
        )

    def event_message(self, event: Any, aggregate: Any | None = None) -> Message:
        """The envelope for an event raised by `aggregate` (or published on its own)."""
        self._check_registered(event, "event")
        agg_cls = self.part_of(type(event))
        category = self.category(agg_cls)
        if aggregate is not None:
            identity, sequence = aggregate.identity, aggregate.version
        else:
            identity = self._identity_in(event, agg_cls)
            sequence = None
        msg = self._new_message(event, MessageKind.EVENT, f"{category}-{identity}", category, sequence)
        event._message = msg
        return msg

    def command_message(self, command: Any) -> Message:
        self._check_registered(command, "command")
        agg_cls = self.part_of(type(command))
        category = self.category(agg_cls) + ":command"
        identity = self._identity_in(command, agg_cls)
        msg = self._new_message(command, MessageKind.COMMAND, f"{category}-{identity}", category, None)
        command._message = msg
        return msg

    def _identity_in(self, obj: Any, agg_cls: type) -> str:
        """The aggregate identity a message carries (`<aggregate>_id` or the id field)."""
        for name in (f"{snake(agg_cls.__name__)}_{agg_cls._id_field}", agg_cls._id_field):
            value = getattr(obj, name, None)
            if value:
                return str(value)
        return str(uuid4())

    def _check_registered(self, obj: Any, kind: str) -> None:
        self._require_init()
        cls = type(obj)
        if self.registry[kind].get(cls.__name__) is not cls:
            raise IncorrectUsageError(f"{cls.__name__} is not a registered {kind} of '{self.name}'")

    def from_message(self, message: Message | dict) -> Any:
        """The typed event/command in an envelope; unknown type or bad data is a typed error."""
        self._require_init()
        if not isinstance(message, Message):
            message = Message.from_dict(message)
        cls = self._types.get(message.type)
        if cls is None:
            raise UnknownMessageTypeError(f"unknown message type {message.type!r} in {self.name}")
        try:
            obj = cls(**message.data)
        except ValidationError as exc:
            raise InvalidMessageError(f"{message.type}: {exc}") from exc
        obj._message = message
        return obj

    # ---- routing -----------------------------------------------------------------------------
    def handlers_for(self, message: Message) -> list[type]:
        """Every handler that must receive this message (category, type and source_stream)."""
        self._require_init()
        return [h for h in self._routes.get(message.stream_category, []) if self.receives(h, message)]

    def receives(self, handler: type, message: Message) -> bool:
        """Does `handler` handle this message's type, and does its `source_stream` (if any) match?"""
        if not self.methods_for(handler, message.type):
            return False
        source = handler.meta_.get("source_stream")
        return not source or stream_matches(message.origin_stream, source)

    def methods_for(self, handler: type, type_string: str) -> list[str]:
        """The handler's methods for a message type; memoised (it runs for every message)."""
        cached = self._methods.get((handler, type_string))
        if cached is not None:
            return cached
        names: list[str] = []
        for target, methods in handler_targets(handler).items():
            key = self.target_type(handler, target)
            if key == type_string or key == "$any":
                names += methods
        if self.initialized:  # type names are final only once init() has run
            self._methods[(handler, type_string)] = names
        return names

    def target_type(self, handler: type, target: Any) -> str:
        """The type string a `@handle` target stands for: a class's type; for handlers of the
        domain's own messages, the name of a registered event or command (`"BookAdded"`) is
        that class's type; any other string (a type string, `"$any"`, an external message
        type) stands for itself."""
        if not isinstance(target, str):
            return self.type_of(target)
        if handler.element_kind != "subscriber":
            for kind in ("event", "command"):
                if target in self.registry[kind]:
                    return self.type_of(self.registry[kind][target])
        return target

    def subscriber_methods(self, subscriber: type, payload: dict) -> list[str]:
        """A subscriber's methods for an external payload, by its `"type"` and its
        `"event_type"` (the brokers document's shape); `"$any"` methods take every payload."""
        keys = [str(payload[k]) for k in ("type", "event_type") if payload.get(k)] or [""]
        return list(dict.fromkeys(m for key in keys for m in self.methods_for(subscriber, key)))

    def subscribers_for(self, stream: str) -> list[type]:
        return [
            s
            for s in self.registry["subscriber"].values()
            if stream_matches(stream, s.meta_["stream"]) or s.meta_["stream"] == stream
        ]

    # ---- processing ----------------------------------------------------------------------------
    def process(self, command: Any, asynchronous: bool | None = None) -> Any:
        """Handle a command: inline in sync mode (returns the handler's value), else via the
        outbox (returns the command's message id at once)."""
        message = self.command_message(command)
        handlers = self.handlers_for(message)
        if not handlers:
            raise IncorrectUsageError(f"no command handler for {type(command).__name__}")
        run_async = (self.settings["command_processing"] == "async") if asynchronous is None else asynchronous
        uow = current_uow.get()
        if uow is not None and uow.in_progress and uow.domain is self:
            # Called from a handler, a subscriber or an explicit unit of work: the command joins
            # that transaction, so it commits (and is deduplicated) with the caller's work, and
            # SQLite never waits on a second write transaction opened by the same thread.
            if run_async:
                uow.record([message])
                return message.id
            return self._handle_within(uow, handlers[0], message)
        if run_async:
            with self.unit_of_work() as uow:
                uow.record([message])
            return message.id
        with self._draining() as queue:
            result = self.run_handler(handlers[0], message, store_message=True)
            self._drain(queue)
        return result

    def publish(self, events: Any) -> list[Message]:
        """Publish events raised outside an aggregate; they commit with the current unit of work."""
        events = events if isinstance(events, list | tuple) else [events]
        messages = [self.event_message(e) for e in events]
        uow = current_uow.get()
        if uow is not None and uow.in_progress and uow.domain is self:
            uow.record(messages)
        else:
            with self.unit_of_work() as own:
                own.record(messages)
        return messages

    def dispatch(self, query: Any) -> Any:
        """Run the query handler for this query and return its result."""
        self._check_registered(query, "query")
        for handler in self.registry["query_handler"].values():
            method = next(
                (
                    m
                    for q, m in query_targets(handler).items()
                    if q is type(query) or q == type(query).__name__
                ),
                None,
            )
            if method:
                with self.domain_context():
                    return getattr(handler(), method)(query)
        raise IncorrectUsageError(f"no query handler for {type(query).__name__}")

    def publish_external(self, stream: str, payload: dict, broker: str = "default") -> str:
        """Alias of `domain.brokers.publish(stream, payload, broker)`."""
        self._require_init()
        return self.brokers.publish(stream, payload, broker)

    def after_commit(self, messages: list[Message]) -> None:
        """Called by the unit of work once its transaction committed."""
        if not messages:
            return
        sync = [m for m in messages if self.is_sync(m)]
        relayed = [m for m in messages if not self.is_sync(m)]
        if relayed and self.engine is not None:
            try:
                self.engine.committed(relayed)
            except Exception:  # noqa: BLE001 - committed rows are relayed by the next tick
                log.warning(
                    "could not kick the relay; the next beat tick will pick the rows up", exc_info=True
                )
        if sync:
            with self._draining() as queue:
                queue.extend(sync)
                self._drain(queue)

    @contextmanager
    def _draining(self) -> Iterator[deque]:
        """The breadth-first queue of sync messages; the outermost caller owns and drains it."""
        queue = _sync_queue.get()
        if queue is not None:
            yield _Nested(queue)
            return
        queue = deque()
        token = _sync_queue.set(queue)
        try:
            yield queue
        finally:
            _sync_queue.reset(token)

    def _drain(self, queue: deque) -> None:
        if isinstance(queue, _Nested):
            return  # the outer loop drains, so nested handling stays breadth-first
        while queue:
            message = queue.popleft()
            for handler in self.handlers_for(message):
                self.run_handler(handler, message)

    def run_handler(
        self,
        handler: type,
        message: Message,
        *,
        store_message: bool = False,
        idempotency_key: str | None = None,
    ) -> Any:
        """Run one handler for one message in its own unit of work.

        With `idempotency_key`, an inbox row (key, message id) commits with the handler's
        effects; a message already applied is skipped and SKIPPED is returned.
        """
        obj = self.from_message(message)
        try:
            with self.domain_context(), self.unit_of_work() as uow:
                if idempotency_key and not uow.session_for(self.outbox_database).mark_processed(
                    idempotency_key, message.id
                ):
                    log.debug("%s already applied %s; skipped", idempotency_key, message.id)
                    return SKIPPED
                if store_message:
                    uow.store_only([message])
                return self._call(handler, message, obj)
        except Exception as exc:
            call_handle_error(handler, exc, message)
            raise

    def _handle_within(self, uow: UnitOfWork, handler: type, message: Message) -> Any:
        """Run a sync command handler inside `uow`; its events dispatch once `uow` commits."""
        obj = self.from_message(message)
        uow.store_only([message])
        try:
            return self._call(handler, message, obj)
        except Exception as exc:
            call_handle_error(handler, exc, message)
            raise

    def _call(self, handler: type, message: Message, obj: Any) -> Any:
        """The handler's methods for this message, with `message` the cause of what they raise."""
        token = current_message.set(message)
        try:
            instance, result = handler(), None
            for name in self.methods_for(handler, message.type):
                result = getattr(instance, name)(obj)
            return result
        finally:
            current_message.reset(token)

    def run_subscriber(
        self,
        subscriber: type,
        payload: dict,
        *,
        idempotency_key: str | None = None,
        message_id: str | None = None,
    ) -> Any:
        """Run one subscriber for one external payload in its own unit of work."""
        try:
            with self.domain_context(), self.unit_of_work() as uow:
                if (
                    idempotency_key
                    and message_id
                    and not uow.session_for(self.outbox_database).mark_processed(idempotency_key, message_id)
                ):
                    return SKIPPED
                instance = subscriber()
                methods = self.subscriber_methods(subscriber, payload)
                if methods:
                    result = None
                    for name in methods:
                        result = getattr(instance, name)(payload)
                    return result
                return instance(payload)
        except Exception as exc:
            call_handle_error(subscriber, exc, payload)
            raise


class _Nested(deque):
    """Marks a queue borrowed from an outer dispatch loop."""

    def __init__(self, outer: deque) -> None:
        super().__init__()
        self.outer = outer

    def extend(self, items) -> None:  # type: ignore[override]
        self.outer.extend(items)


def call_handle_error(handler: type, exc: Exception, message: Any) -> None:
    """Give the handler its `handle_error(exc, message)` hook; a failure there is only logged."""
    try:
        handler.handle_error(exc, message)
    except Exception:  # noqa: BLE001 - the hook must never take the pipeline down
        log.exception("%s.handle_error raised while handling %r", handler.__name__, exc)
