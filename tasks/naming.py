"""Names derived from the registry: task names, queues (consumer groups) and their DLQs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.domain.ordering import partition_queues

if TYPE_CHECKING:
    from tidings.domain.domain import Domain
    from tidings.domain.handlers import ElementClass
    from tidings.domain.specs import HandlerSpec


def spec_of(domain: Domain, handler: ElementClass) -> HandlerSpec:
    """The handler's spec (domain/specs.py), built once by `domain.init()`."""
    return domain.bus.routes.spec(handler)


def specs(domain: Domain) -> list[HandlerSpec]:
    """Every handler's spec, in registration order (commands first)."""
    return list(domain.bus.routes.specs.values())


def task_name(domain: Domain, handler: ElementClass) -> str:
    """`tidings.<domain>.<Handler>`: stable across deployments, so queued messages survive."""
    return spec_of(domain, handler).task_name


def queue_name(domain: Domain, handler: ElementClass) -> str:
    """`<domain>.<handler_snake_name>`: one queue per handler, its consumer group."""
    return spec_of(domain, handler).queue


def backfill_queue(domain: Domain, queue: str) -> str:
    """`<queue>.backfill` (`[server.priority_lanes] backfill_suffix`): where a handler's
    messages below the priority threshold wait, consumed after its own queue."""
    return f"{queue}.{domain.settings.server.priority_lanes.backfill_suffix}"


def handler_queues(domain: Domain, spec: HandlerSpec) -> tuple[str, ...]:
    """A handler's queues in consumption order: its own, then (with `[server.priority_lanes]`
    enabled) its backfill queue, then (with `sequential_by`) its partition queues: the lane that
    runs the handler consumes them all (replays and audit re-sends arrive on its own queue)."""
    queues: tuple[str, ...] = (spec.queue,)
    if domain.settings.server.priority_lanes.enabled:
        queues += (backfill_queue(domain, spec.queue),)
    if spec.sequential:
        queues += tuple(partition_queues(spec.queue))
    return queues


DLQ_SUFFIX = ".dlq"


def dlq_name(queue: str) -> str:
    return f"{queue}{DLQ_SUFFIX}"


def relay_task_name(domain: Domain) -> str:
    return f"tidings.{domain.name}.relay_outbox"


def relay_queue(domain: Domain) -> str:
    return f"{domain.name}.outbox"


def async_handlers(domain: Domain) -> list[ElementClass]:
    """Every handler that becomes a Celery task, in registration order."""
    return [spec.cls for spec in specs(domain)]


def poll_task_name(domain: Domain, handler: ElementClass) -> str:
    """`tidings.<domain>.<Handler>.poll`: the poller of an event_store subscription."""
    return f"{task_name(domain, handler)}.poll"


def event_store_handlers(domain: Domain) -> list[ElementClass]:
    """Handlers that read the event store themselves (`subscription_type = "event_store"`)."""
    return [spec.cls for spec in specs(domain) if spec.polled]


def batch_task_name(domain: Domain, handler: ElementClass) -> str:
    """The task that applies a pack of messages for a `batch_delivery` handler."""
    return f"{task_name(domain, handler)}.batch"


def packed_handlers(domain: Domain) -> dict[ElementClass, int]:
    """Stream handlers with `batch_delivery`, and how many messages one task may carry."""
    return {spec.cls: spec.pack_size for spec in specs(domain) if spec.pack_size is not None}
