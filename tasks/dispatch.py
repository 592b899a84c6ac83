"""Fan-out: one Celery task message per subscribed handler, sent to that handler's queue; an
external row (a `published=True` event for `[outbox] external_brokers`) goes to its broker."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celery import Celery

from tidings.domain.envelope import Message
from tidings.outbox.writer import external_dispatch
from tidings.tasks.naming import (
    batch_task_name,
    event_store_handlers,
    packed_handlers,
    queue_name,
    spec_of,
    task_name,
)
from tidings.tasks.ordering import OrderedSends, route

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
    packs: dict[type, list[dict]] = {}
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

        def send_pack(handler: type) -> None:
            pack = packs.pop(handler, [])
            if pack:
                send(
                    batch_task_name(domain, handler),
                    queue_name(domain, handler),
                    pack,
                    f"{pack[0]['id']}:{queue_name(domain, handler)}:pack{len(pack)}",
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
                if handler in packed:
                    packs.setdefault(handler, []).append(payload)
                    if len(packs[handler]) >= packed[handler]:
                        send_pack(handler)
                    continue
                queue, key = route(spec_of(domain, handler), message)
                name = task_name(domain, handler)
                label = f"({message.type} {message.id})"
                if key is None:
                    send(name, queue, payload, f"{message.id}:{queue}", label)
                    continue
                ordered.add(
                    name,
                    key,
                    message.id,
                    functools.partial(send, name, queue, payload, f"{message.id}:{queue}", label),
                )

        def flush() -> None:
            """Send the partial packs, then what the Redis pipeline buffered."""
            for handler in list(packs):
                send_pack(handler)
            ordered.flush()
            if batch is not None:
                batch.flush()

        publish.flush = flush  # type: ignore[attr-defined]
        yield publish
        ordered.flush()  # a caller that never flushed: still numbered, then sent
    for name, queue, arg in deferred:
        celery.tasks[name].apply_async(args=[arg], queue=queue)


RELAY_PIPELINE = 1000  # Redis commands buffered before kombu flushes on its own


@contextmanager
def _batched(producer: Any, eager: bool) -> Iterator[Any]:
    """The producer's publish batch (kombu >= 5.7), or None where there is nothing to batch."""
    if eager or not hasattr(producer, "batch"):
        yield None
        return
    with producer.batch(RELAY_PIPELINE) as batch:
        yield batch
