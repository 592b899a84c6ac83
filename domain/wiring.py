"""What `domain.init()` builds from the registry and the settings: the resolved models and
the message bus (storage comes from domain/providers.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from tidings.domain.bus import Engine, MessageBus, Processing, VersionRetry
from tidings.domain.database import Database
from tidings.domain.elements import BaseAggregate, BaseElement, BaseProjection
from tidings.domain.envelope import Message, MessageKind
from tidings.domain.errors import ConfigurationError
from tidings.domain.naming import Registry
from tidings.domain.ports import EventStore
from tidings.domain.providers import Storage, load_storage
from tidings.domain.routing import Routes
from tidings.domain.settings import Settings
from tidings.domain.specs import handler_specs
from tidings.domain.uow import Stores

log = logging.getLogger("tidings")
ENGINE_ENTRY_POINT = "tidings.engines"  # how a committing process finds the async engine


def build_bus(
    domain: Any,
    settings: Settings,
    event_store: EventStore,
    outbox: Database,
    engine: Engine | None = None,
) -> MessageBus:
    """The domain's message bus over its stores; `engine` carries over from a previous init."""
    processing = Processing(
        settings.event_processing, settings.command_processing, settings.message_processing
    )
    routes = Routes(domain.names, handler_specs(domain.names, settings.server))
    stores = Stores(
        event_store=event_store,
        outbox=outbox,
        owner=domain.name,
        external=external_targets(routes, settings.outbox.external_brokers),
    )
    retry = settings.server.version_retry
    bus = MessageBus(
        routes,
        stores,
        processing,
        domain.domain_context,
        engine_loader(domain),
        version_retry=VersionRetry(
            retry.enabled, retry.max_retries, retry.base_delay_seconds, retry.max_delay_seconds
        ),
        command_timeout=settings.command_default_timeout,
    )
    if engine is not None:
        bus.attach_engine(engine)
    return bus


def rebuild_models(registry: Registry) -> list[str]:
    """Resolve the elements' forward references (`HasMany("Item")`, or `HasMany(Item)`
    with a local `Item` under `from __future__`) with the registry's names; a model that
    still has an undefined name is a problem for `init()` to report."""
    names = {n: c for kind in registry.values() for n, c in kind.items()}
    problems: list[str] = []
    for kind in ("value_object", "entity", "aggregate", "projection", "event", "command", "query"):
        for model in registry[kind].values():
            assert issubclass(model, BaseElement)  # these kinds' bases are pydantic models
            try:
                model.model_rebuild(force=True, _types_namespace=names)
            except Exception as exc:  # noqa: BLE001 - reported, not swallowed
                log.debug("rebuild of %s failed: %s", model.__name__, exc)
                if not getattr(model, "__pydantic_complete__", True):
                    reason = getattr(exc, "message", str(exc))  # pydantic's, without its URL
                    problems.append(
                        f"{kind.replace('_', ' ')} {model.__name__}: {reason}; a field names an "
                        "element that is not registered (nor defined in its module)"
                    )
    return problems


def external_targets(routes: Routes, brokers: Sequence[str]) -> Callable[[Message], Sequence[str]]:
    """The external brokers a committed message goes to: `brokers` for the events declared
    `published=True`, nothing for any other message."""
    published = {
        type_string
        for type_string, cls in routes.types.items()
        if cls.element_kind == "event" and cls.meta_.get("published")  # type: ignore[attr-defined]
    }
    targets = tuple(brokers)

    def external(message: Message) -> Sequence[str]:
        if targets and message.kind == MessageKind.EVENT and message.type in published:
            return targets
        return ()

    return external


def engine_loader(domain: Any) -> Callable[[], Engine | None]:
    """Finds the async engine by entry point (`tidings.engines`), so the kernel never imports
    the Celery layer: installed Tidings registers its Celery runtime there."""

    def load() -> Engine | None:
        for point in entry_points(group=ENGINE_ENTRY_POINT):
            engine: Engine | None = point.load()(domain)
            return engine
        return None

    return load


def build_storage(name: str, registry: Registry, settings: Settings, previous: Storage | None) -> Storage:
    """The domain's storage (providers chosen once, in `providers.load_storage`) with a table
    for every aggregate and projection; the previous init's pools are closed first."""
    if previous is not None:
        previous.dispose()
    storage = load_storage(name, settings.databases, settings.event_store)
    for kind in ("aggregate", "projection"):
        for model in registry[kind].values():
            assert issubclass(model, BaseAggregate | BaseProjection)  # the bases of these kinds
            provider = model.meta_.get("provider", "default")
            if provider not in storage.databases:
                raise ConfigurationError(f"{model.__name__}: no database named '{provider}'")
            storage.databases[provider].add_model(model, versioned=kind == "aggregate")
    return storage
