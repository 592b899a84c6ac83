"""Names derived from the registry: task names, queues (consumer groups) and their DLQs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.domain.naming import snake

if TYPE_CHECKING:
    from tidings.domain.domain import Domain
    from tidings.domain.elements import ElementClass


def task_name(domain: Domain, handler: ElementClass) -> str:
    """`tidings.<domain>.<Handler>`: stable across deployments, so queued messages survive."""
    return f"tidings.{domain.name}.{handler.__name__}"


def queue_name(domain: Domain, handler: ElementClass) -> str:
    """`<domain>.<handler_snake_name>`: one queue per handler, its consumer group."""
    return f"{domain.name}.{snake(handler.__name__)}"


DLQ_SUFFIX = ".dlq"


def dlq_name(queue: str) -> str:
    return f"{queue}{DLQ_SUFFIX}"


def relay_task_name(domain: Domain) -> str:
    return f"tidings.{domain.name}.relay_outbox"


def relay_queue(domain: Domain) -> str:
    return f"{domain.name}.outbox"


def async_handlers(domain: Domain) -> list[ElementClass]:
    """Every handler that becomes a Celery task, in registration order."""
    return [
        h
        for kind in ("command_handler", "event_handler", "projector", "subscriber")
        for h in domain.registry[kind].values()
    ]


def poll_task_name(domain: Domain, handler: ElementClass) -> str:
    """`tidings.<domain>.<Handler>.poll`: the poller of an event_store subscription."""
    return f"{task_name(domain, handler)}.poll"


def event_store_handlers(domain: Domain) -> list[ElementClass]:
    """Handlers that read the event store themselves (`subscription_type = "event_store"`)."""
    return [
        h
        for h in async_handlers(domain)
        if h.element_kind != "subscriber"
        and domain.subscription_settings(h).subscription_type == "event_store"
    ]


def batch_task_name(domain: Domain, handler: ElementClass) -> str:
    """The task that applies a pack of messages for a `batch_delivery` handler."""
    return f"{task_name(domain, handler)}.batch"


def packed_handlers(domain: Domain) -> dict[ElementClass, int]:
    """Stream handlers with `batch_delivery`, and how many messages one task may carry."""
    packed: dict[ElementClass, int] = {}
    for handler in async_handlers(domain):
        settings = domain.subscription_settings(handler)
        if (
            settings.batch_delivery
            and settings.subscription_type == "stream"
            and handler.element_kind != "subscriber"
        ):
            packed[handler] = int(settings.messages_per_tick)
    return packed
