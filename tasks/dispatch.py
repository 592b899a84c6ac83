"""Fan-out: one Celery task message per subscribed handler, sent to that handler's queue."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery

from domain.envelope import Message
from tasks.naming import queue_name, task_name


def routes_for(domain: Any, message: Message) -> list[tuple[str, str]]:
    """(task name, queue) of every handler that must receive this message."""
    return [(task_name(domain, h), queue_name(domain, h)) for h in domain.handlers_for(message)]


@contextmanager
def publisher(celery: Celery, domain: Any) -> Iterator[Any]:
    """Yields `publish(envelope_json)` sending over one producer connection.

    In eager mode the tasks run only when the block exits, i.e. after the relay committed:
    running them inline would nest a handler's transaction inside the relay's.
    """
    eager = bool(celery.conf.task_always_eager)
    deferred: list[tuple[str, str, dict]] = []
    with celery.producer_or_acquire() as producer:

        def publish(envelope: str) -> None:
            message = Message.from_dict(envelope)
            payload = message.to_dict()
            for name, queue in routes_for(domain, message):
                if eager:
                    deferred.append((name, queue, payload))
                else:
                    celery.send_task(name, args=[payload], queue=queue, producer=producer,
                                     task_id=f"{message.id}:{queue}")

        yield publish
    for name, queue, payload in deferred:
        celery.tasks[name].apply_async(args=[payload], queue=queue)
