"""Fan-out: one Celery task message per subscribed handler, sent to that handler's queue; an
external row (a `published=True` event for `[outbox] external_brokers`) goes to its broker."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celery import Celery

from tidings.domain.envelope import Message
from tidings.domain.priority import priority_of
from tidings.outbox.writer import external_dispatch
from tidings.tasks.naming import (
    backfill_queue,
    batch_task_name,
    event_store_handlers,
    packed_handlers,
    queue_name,
    spec_of,
    task_name,
)
from tidings.tasks.ordering import OrderedSends
from tidings.tasks.ordering import route as partition_route

if TYPE_CHECKING:
    from tidings.domain.domain import Domain


def queued_handlers(domain: Domain, message: Message, polled: set[type] | None = None) -> list[type]:
    """Every handler that must receive this message through its queue: all that receive it,
    except those that read the event store themselves (`polled`: the event_store handlers)."""
    polled = set(event_store_handlers(domain)) if polled is None else polled
    return [h for h in domain.handlers_for(message) if h not in polled]


@contextmanager
def publisher(celery: Celery, domain: Domain) -> Iterator[Any]:
    """Yields `publish(envelope_json)` sending over one producer connection.

    On Redis the sends are pipelined (kombu's `Producer.batch`): `publish.flush()` sends what
    is buffered, and the relay calls it before it marks rows published. Other transports
    publish at once. In eager mode the tasks run only when the block exits, i.e. after the relay committed:
    running them inline would nest a handler's transaction inside the relay's.
    """
    eager = bool(celery.conf.task_always_eager)
    deferred: list[tuple[str, str, Any]] = []
    polled = set(event_store_handlers(domain))
    packed = packed_handlers(domain)
    packs: dict[tuple[type, str], list[dict]] = {}  # (handler, queue) -> its pack being filled
    route = priority_router(domain)
    ordered = OrderedSends(domain)  # sequential handlers' sends: numbered at flush (tasks/ordering.py)
    with celery.producer_or_acquire() as producer, _batched(producer, eager) as batch:

        def send(name: str, queue: str, arg: Any, task_id: str, label: str) -> None:
            if eager:
                deferred.append((name, queue, arg))
            else:
                # argsrepr: Celery would otherwise saferepr() every envelope for monitors,
                # which was a third of the relay's time
                celery.send_task(
                    name,
                    args=[arg],
                    queue=queue,
                    producer=producer,
                    task_id=task_id,
                    kwargsrepr="{}",
                    argsrepr=label,
                )

        def send_pack(key: tuple[type, str]) -> None:
            pack = packs.pop(key, [])
            if pack:
                handler, queue = key
                send(
                    batch_task_name(domain, handler),
                    queue,
                    pack,
                    f"{pack[0]['id']}:{queue}:pack{len(pack)}",
                    f"({len(pack)} messages)",
                )

        def publish(envelope: str) -> None:
            external = external_dispatch(envelope)
            if external is not None:
                # a `published=True` event's row for an external broker: the stripped envelope
                # on the stream named after its category (a failure retries this row only)
                domain.brokers[external.broker].publish(external.stream, external.message)
                return
            message = Message.from_dict(envelope)
            payload = message.to_dict()
            for handler in queued_handlers(domain, message, polled):
                queue = route(queue_name(domain, handler), message)
                if handler in packed:
                    key = (handler, queue)
                    packs.setdefault(key, []).append(payload)
                    if len(packs[key]) >= packed[handler]:
                        send_pack(key)
                    continue
                name = task_name(domain, handler)
                label = f"({message.type} {message.id})"
                partition, order_key = partition_route(spec_of(domain, handler), message)
                if order_key is None:
                    send(name, queue, payload, f"{message.id}:{queue}", label)
                    continue
                # a sequential handler's key decides its queue (its partition), not the priority
                ordered.add(
                    name,
                    order_key,
                    message.id,
                    functools.partial(send, name, partition, payload, f"{message.id}:{partition}", label),
                )

        def flush() -> None:
            """Send the partial packs, then what the Redis pipeline buffered."""
            for key in list(packs):
                send_pack(key)
            ordered.flush()
            if batch is not None:
                batch.flush()

        publish.flush = flush  # type: ignore[attr-defined]
        yield publish
        ordered.flush()  # a caller that never flushed: still numbered, then sent
    for name, queue, arg in deferred:
        celery.tasks[name].apply_async(args=[arg], queue=queue)


def priority_router(domain: Domain) -> Callable[[str, Message], str]:
    """`route(queue, message)`: the handler's queue, or with `[server.priority_lanes]` enabled
    its backfill queue for a message below the threshold (domain/priority.py)."""
    lanes = domain.settings.server.priority_lanes
    if not lanes.enabled:
        return lambda queue, message: queue

    def route(queue: str, message: Message) -> str:
        return backfill_queue(domain, queue) if priority_of(message) < lanes.threshold else queue

    return route


RELAY_PIPELINE = 1000  # Redis commands buffered before kombu flushes on its own


@contextmanager
def _batched(producer: Any, eager: bool) -> Iterator[Any]:
    """The producer's publish batch (kombu >= 5.7), or None where there is nothing to batch."""
    if eager or not hasattr(producer, "batch"):
        yield None
        return
    with producer.batch(RELAY_PIPELINE) as batch:
        yield batch
