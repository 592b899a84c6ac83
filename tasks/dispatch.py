"""Fan-out: one Celery task message per subscribed handler, sent to that handler's queue."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery

from domain.envelope import Message
from tasks.naming import event_store_handlers, queue_name, task_name


def routes_for(domain: Any, message: Message,
               polled: set[type] | None = None) -> list[tuple[str, str]]:
    """(task name, queue) of every handler that must receive this message, except the handlers
    that read the event store themselves (`polled`, by default every event_store handler)."""
    polled = set(event_store_handlers(domain)) if polled is None else polled
    return [(task_name(domain, h), queue_name(domain, h)) for h in domain.handlers_for(message)
            if h not in polled]


@contextmanager
def publisher(celery: Celery, domain: Any) -> Iterator[Any]:
    """Yields `publish(envelope_json)` sending over one producer connection.

    On Redis the sends are pipelined (kombu's `Producer.batch`): `publish.flush()` sends what
    is buffered, and the relay calls it before it marks rows published. Other transports
    publish at once. In eager mode the tasks run only when the block exits, i.e. after the relay committed:
    running them inline would nest a handler's transaction inside the relay's.
    """
    eager = bool(celery.conf.task_always_eager)
    deferred: list[tuple[str, str, dict]] = []
    polled = set(event_store_handlers(domain))
    with celery.producer_or_acquire() as producer, _batched(producer, eager) as batch:

        def publish(envelope: str) -> None:
            message = Message.from_dict(envelope)
            payload = message.to_dict()
            for name, queue in routes_for(domain, message, polled):
                if eager:
                    deferred.append((name, queue, payload))
                else:
                    # argsrepr: Celery would otherwise saferepr() every envelope for monitors,
                    # which was a third of the relay's time
                    celery.send_task(name, args=[payload], queue=queue, producer=producer,
                                     task_id=f"{message.id}:{queue}", kwargsrepr="{}",
                                     argsrepr=f"({message.type} {message.id})")

        publish.flush = batch.flush if batch is not None else lambda: None  # type: ignore[attr-defined]
        yield publish
    for name, queue, payload in deferred:
        celery.tasks[name].apply_async(args=[payload], queue=queue)


RELAY_PIPELINE = 1000  # Redis commands buffered before kombu flushes on its own


@contextmanager
def _batched(producer: Any, eager: bool) -> Iterator[Any]:
    """The producer's publish batch (kombu >= 5.7), or None where there is nothing to batch."""
    if eager or not hasattr(producer, "batch"):
        yield None
        return
    with producer.batch(RELAY_PIPELINE) as batch:
        yield batch
