"""Poison at the Celery consumer: a message that reached a worker but is not a task it can run.

Celery's consumer only logs such a message and drops it (acks or rejects it; on Redis a reject
without requeue deletes it):
- `on_decode_error`: the body does not decode (not JSON, a content type the worker refuses
  such as `application/x-python-serialize`, i.e. pickle; JSON only stays enforced);
- `on_unknown_message`: no task name, in the headers or the body;
- `on_unknown_task`: a task name this worker does not have;
- `on_invalid_task`: a task message without valid arguments.

Worse, a task message whose JSON body is not `[args, kwargs, embed]` raises a ValueError out
of Celery's task handler (celery 5.7 `Request.__init__` unpacks it) and the worker exits with
"Unrecoverable error". The step also wraps the task handler: whatever it raises for a message
not yet acknowledged is handled as an invalid task.

`poison_step(stats)` is a consumer bootstep (added by the bootstrap) that wraps these four on
each Consumer: the message first goes to the DLQ of its queue with its raw body as text and
the reason, then Celery settles it as before (its log lines, signals and events stay). None of
these ever runs a task body. Poison that never became a message (a raw Redis list item) is
the transport's to catch: see app/redis_transport.py.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from celery.exceptions import InvalidTaskError

from tidings.tasks.dead_letter import dead_letter

log = logging.getLogger("tidings.poison")

Hook = Callable[..., Any]


def queue_of(consumer: Any, message: Any) -> str:
    """The queue a message came from: its routing key (Tidings routes each handler's tasks
    with its queue name as the key), else the app's default queue."""
    routing_key = (getattr(message, "delivery_info", None) or {}).get("routing_key")
    if routing_key and routing_key in consumer.app.amqp.queues:
        return str(routing_key)
    return str(consumer.app.conf.task_default_queue)


def to_dlq(
    consumer: Any,
    stats: Counter[Any],
    message: Any,
    error: BaseException | str,
    error_type: str | None = None,
) -> bool:
    """Write `message` to its queue's DLQ as poison; False if that failed (then logged)."""
    headers = dict(getattr(message, "headers", None) or {})
    queue = queue_of(consumer, message)
    try:
        dead_letter(
            consumer.app,
            queue=queue,
            task=headers.get("task"),
            body=None,
            error=error,
            error_type=error_type,
            attempts=1,
            raw_body=getattr(message, "body", None),
            headers=headers,
        )
    except Exception:  # noqa: BLE001 - never take the consumer down; Celery still logs it
        log.exception("%s: could not dead-letter a poison message", queue)
        return False
    stats["dead_lettered"] += 1
    stats["poison"] += 1
    return True


def guarded(consumer: Any, stats: Counter[Any]) -> dict[str, Hook]:
    """The four consumer hooks, each dead-lettering before Celery's own handling."""
    on_decode_error, on_unknown_message = consumer.on_decode_error, consumer.on_unknown_message
    on_unknown_task, on_invalid_task = consumer.on_unknown_task, consumer.on_invalid_task

    def decode_error(message: Any, exc: BaseException) -> None:
        to_dlq(consumer, stats, message, exc)
        on_decode_error(message, exc)  # logs it, acks it

    def unknown_message(body: Any, message: Any) -> None:
        to_dlq(consumer, stats, message, "no task name in the headers or the body", "NotATaskMessage")
        on_unknown_message(body, message)  # logs it, rejects it

    def unknown_task(body: Any, message: Any, exc: BaseException) -> None:
        name = (getattr(message, "headers", None) or {}).get("task")
        to_dlq(consumer, stats, message, f"no task named {name!r} in this worker", "NotRegistered")
        on_unknown_task(body, message, exc)  # logs it, rejects it, marks the id failed

    def invalid_task(body: Any, message: Any, exc: BaseException) -> None:
        to_dlq(consumer, stats, message, exc)
        on_invalid_task(body, message, exc)  # logs it, rejects it

    return {
        "on_decode_error": decode_error,
        "on_unknown_message": unknown_message,
        "on_unknown_task": unknown_task,
        "on_invalid_task": invalid_task,
    }


def guarded_task_handler(consumer: Any, create: Hook) -> Hook:
    """`Consumer.create_task_handler`, whose handler turns what it raises for a message not yet
    settled into an invalid task (dead-lettered, rejected) instead of a worker exit."""

    def create_task_handler(*args: Any, **kwargs: Any) -> Hook:
        on_task_received = create(*args, **kwargs)

        def on_message(message: Any) -> Any:
            try:
                return on_task_received(message)
            except Exception as exc:
                if getattr(message, "acknowledged", True):
                    raise  # already settled: not a message problem, Celery's to handle
                invalid = InvalidTaskError(f"{type(exc).__name__}: {exc}")
                return consumer.on_invalid_task(None, message, invalid)  # the guarded hook

        return on_message

    return create_task_handler


def poison_step(stats: Counter[Any]) -> type[bootsteps.Step]:
    """A consumer bootstep for one runtime (`stats` counts what it dead-letters). It replaces
    the hooks on the Consumer instance when the consumer is built, before its task handler
    and task consumer read them (at start)."""

    class PoisonToDLQ(bootsteps.Step):
        """Dead-letter what the consumer cannot run instead of only logging it."""

        name = "tidings.poison"

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            for name, hook in guarded(parent, stats).items():
                setattr(parent, name, hook)
            parent.create_task_handler = guarded_task_handler(parent, parent.create_task_handler)

    return PoisonToDLQ
