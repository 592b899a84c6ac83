"""Handler specifications: after `init()`, each handler is a frozen record of what routing,
its Celery task and the server need — derived from the registry and the settings once, so
nothing downstream re-resolves settings or re-derives names per message."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tidings.domain.handlers import ElementClass
from tidings.domain.naming import Names, snake
from tidings.domain.ordering import sequential_by
from tidings.domain.settings import ServerSettings
from tidings.domain.subscriptions import SubscriptionSettings, resolve

SEQUENTIAL_KINDS = ("event_handler", "command_handler")  # the kinds that take `sequential_by`


class HandlerKind(StrEnum):
    COMMAND_HANDLER = "command_handler"
    EVENT_HANDLER = "event_handler"
    PROJECTOR = "projector"
    SUBSCRIBER = "subscriber"


@dataclass(frozen=True)
class HandlerSpec:
    """One handler of an initialised domain."""

    cls: ElementClass
    kind: HandlerKind
    categories: tuple[str, ...]  # the stream categories it reads (none for a subscriber)
    subscription: SubscriptionSettings  # resolved by the priority order (domain/subscriptions.py)
    task_name: str  # `tidings.<domain>.<Handler>`: also its inbox key
    queue: str  # `<domain>.<handler>`: its own queue, its consumer group
    sequential_by: str | bool | None = None  # per-key ordering (domain/ordering.py)

    @property
    def name(self) -> str:
        return self.cls.__name__

    @property
    def polled(self) -> bool:
        """Reads the event store itself (`subscription_type = "event_store"`), not a queue."""
        return (
            self.kind is not HandlerKind.SUBSCRIBER and self.subscription.subscription_type == "event_store"
        )

    @property
    def sequential(self) -> bool:
        """Handles one key's messages one at a time, in order (`sequential_by`), from its
        partition queues; an event_store handler is already ordered (one poller, in order)."""
        return self.sequential_by is not None and not self.polled

    @property
    def pack_size(self) -> int | None:
        """Messages one task may carry (`batch_delivery` stream handlers), else None."""
        s = self.subscription
        packed = (
            s.batch_delivery and s.subscription_type == "stream" and self.kind is not HandlerKind.SUBSCRIBER
        )
        return int(s.messages_per_tick) if packed else None


def handler_specs(names: Names, server: ServerSettings) -> dict[ElementClass, HandlerSpec]:
    """Every handler that becomes a Celery task, in registration order (commands first)."""
    return {
        handler: HandlerSpec(
            cls=handler,
            kind=HandlerKind(kind.value),
            categories=tuple(names.handler_categories(handler)),
            subscription=resolve(handler, server),
            task_name=f"tidings.{names.name}.{handler.__name__}",
            queue=f"{names.name}.{snake(handler.__name__)}",
            sequential_by=sequential_by(handler) if kind.value in SEQUENTIAL_KINDS else None,
        )
        for kind in HandlerKind
        for handler in names.registry[kind.value].values()
    }
