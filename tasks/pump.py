"""The pump: a Celery task per subscriber on a pulled broker (`redis`, `redis_pubsub`).

It reads a batch of `messages_per_tick` from the subscriber's consumer group, hands each
message to the subscriber task (so retries, DLQ, `handle_error` and the inbox are the
handlers' own) and then acknowledges it. Beat runs it on a period; a publish wakes it up (one
wake-up pending at a time, see `Broker.claim_wakeup`); while batches come back full it
re-schedules itself at once, so a backlog drains fast and an idle stream costs one read per
period.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from celery import Celery, Task

from tidings.domain.brokers import BrokerCapability
from tidings.tasks.naming import queue_name, task_name

if TYPE_CHECKING:
    from tidings.domain.domain import Domain
    from tidings.domain.elements import ElementClass

log = logging.getLogger("tidings.pump")


WAKEUP_EXPIRES = 60.0  # seconds: a wake-up not run by then is dropped, and may be sent again


def pump_task_name(domain: Domain, subscriber: ElementClass) -> str:
    return f"{task_name(domain, subscriber)}.pump"


def pulled_subscribers(domain: Domain) -> list[ElementClass]:
    """Subscribers whose broker is read through a consumer group (async processing only)."""
    if domain.settings.message_processing != "async":
        return []
    return [
        s
        for s in domain.registry["subscriber"].values()
        if domain.brokers[s.meta_.get("broker") or "default"].pulled
    ]


def register_pump_tasks(celery: Celery, domain: Domain) -> dict[str, Task]:
    """One pump task per pulled subscriber, routed to the subscriber's own queue (so a busy
    subscriber is not handed more than it can take)."""
    return {
        pump_task_name(domain, s): celery.task(
            name=pump_task_name(domain, s), bind=True, shared=False, ignore_result=True
        )(_pump_body(celery, domain, s))
        for s in pulled_subscribers(domain)
    }


def _pump_body(celery: Celery, domain: Domain, subscriber: ElementClass) -> Callable[[Task], int]:
    stream = subscriber.meta_["stream"]
    queue, handler_task = queue_name(domain, subscriber), task_name(domain, subscriber)
    batch = domain.subscription_settings(subscriber).messages_per_tick

    def pump(task: Task) -> int:
        broker = domain.brokers[subscriber.meta_.get("broker") or "default"]
        # Released before reading: whatever is published from now on sends a new wake-up.
        broker.release_wakeup(stream, queue)
        messages = broker.read(stream, queue, batch)
        acks = broker.has_capability(BrokerCapability.ACK)
        for identifier, message in messages:
            message_id = str(message.get("id") or identifier)
            # the registered task, not send_task: eager mode must run it inline
            celery.tasks[handler_task].apply_async(
                args=[{"id": message_id, "stream": stream, "payload": message}],
                queue=queue,
                task_id=f"{message_id}:{queue}",
            )
            if acks:
                broker.ack(stream, queue, identifier)
        if len(messages) == batch:
            task.apply_async(queue=queue, expires=WAKEUP_EXPIRES)
        if messages:
            log.debug("%s: handed %d message(s) of %s to %s", task.name, len(messages), stream, handler_task)
        return len(messages)

    pump.__name__ = f"pump_{subscriber.__name__}"
    return pump
