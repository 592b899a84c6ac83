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

    In eager mode the tasks run only when the block exits, i.e. after the relay committed:
    running them inline would nest a handler's transaction inside the relay's.
    """
    eager = bool(celery.conf.task_always_eager)
    deferred: list[tuple[str, str, dict]] = []
    polled = set(event_store_handlers(domain))
    with celery.producer_or_acquire() as producer:

        def publish(envelope: str) -> None:
            message = Message.from_dict(envelope)
            payload = message.to_dict()
            for name, queue in routes_for(domain, message, polled):
                if eager:
                    deferred.append((name, queue, payload))
                else:
                    celery.send_task(name, args=[payload], queue=queue, producer=producer,
                                     task_id=f"{message.id}:{queue}")

        yield publish
    for name, queue, payload in deferred:
        celery.tasks[name].apply_async(args=[payload], queue=queue)
