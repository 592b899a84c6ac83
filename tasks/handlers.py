"""Every handler becomes one Celery task bound to its own queue.

A task body is thin: decode the envelope -> inbox check -> the handler in its unit of work
-> commit (all inside `domain.run_handler`). Failures are classified in tasks/retrying.py:
business-rule errors (and a handler's `throws`) are final, transient faults are sent again
without spending `max_retries`, and the rest are Celery's own retries (`autoretry_for`,
`retry_backoff`, `retry_jitter`); the final failure goes to the DLQ from the `task_failure`
signal, the one hook that also fires in the main process when a worker was killed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Celery, Task

from tidings.domain.bus import SKIPPED
from tidings.domain.envelope import Message
from tidings.domain.errors import InvalidMessageError
from tidings.domain.specs import HandlerKind, HandlerSpec
from tidings.tasks.breaker import build_breakers, keyprefix_of, with_breaker
from tidings.tasks.breaker import install as install_breakers
from tidings.tasks.dead_letter import dead_letter
from tidings.tasks.naming import batch_task_name, specs
from tidings.tasks.ordering import in_turn, release
from tidings.tasks.packs import packed_body
from tidings.tasks.retrying import NOT_RETRIED, TransientPolicy, final_errors, with_transient_retry

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

__all__ = ["NOT_RETRIED", "HandlerTask", "failure_hook", "register_handler_tasks"]

log = logging.getLogger("tidings.tasks")


@dataclass(frozen=True)
class HandlerTask:
    """What the failure hook needs to know about one registered handler task."""

    celery: Celery
    queue: str
    enable_dlq: bool
    release: Callable[[Any], None] | None = None  # a sequential handler's key moves on (tasks/ordering.py)


def register_handler_tasks(celery: Celery, domain: Domain, stats: Counter[str]) -> dict[str, HandlerTask]:
    """Create the task of every handler, subscriber and projector; returns what the failure
    hook needs to know of each, by task name. `stats` counts outcomes for this runtime."""
    created: dict[str, HandlerTask] = {}
    transient = TransientPolicy.from_settings(domain.settings.server.transient_retry)
    breakers = build_breakers(domain, keyprefix_of(celery))  # tasks/breaker.py
    install_breakers(celery, domain, breakers)
    for spec in specs(domain):
        if spec.polled:
            continue  # it reads the event store itself: see tasks/poller.py
        settings, name, queue = spec.subscription, spec.task_name, spec.queue
        options = dict(
            name=name,
            bind=True,
            acks_late=True,
            shared=False,
            max_retries=settings.max_retries,
            default_retry_delay=settings.retry_delay_seconds,
            autoretry_for=(Exception,),
            dont_autoretry_for=final_errors(spec.cls),  # business rules, `throws`, bad data
            retry_backoff=settings.retry_delay_seconds if settings.retry_backoff else False,
            retry_backoff_max=settings.retry_backoff_max,
            retry_jitter=settings.retry_jitter,
        )
        body = _subscriber_body if spec.kind is HandlerKind.SUBSCRIBER else _handler_body
        final = final_errors(spec.cls)
        ordered = spec.sequential and spec.kind is not HandlerKind.SUBSCRIBER
        run = body(domain, spec, stats)
        run = with_transient_retry(in_turn(domain, spec, run) if ordered else run, transient, final)
        if breakers.guards(spec.name):
            run = with_breaker(run, breakers, spec.name, final)
        celery.task(**options)(run)
        created[name] = HandlerTask(
            celery, queue, settings.enable_dlq, release(domain, spec) if ordered else None
        )
        if settings.batch_delivery and spec.kind is not HandlerKind.SUBSCRIBER:
            pack_name = batch_task_name(domain, spec.cls)
            celery.task(**{**options, "name": pack_name})(
                with_transient_retry(
                    _batch_body(domain, spec, stats),
                    transient,
                    final,
                )
            )
            created[pack_name] = HandlerTask(celery, queue, settings.enable_dlq)
    return created


def _handler_body(domain: Domain, spec: HandlerSpec, stats: Counter[str]) -> Any:
    handler, name, queue = spec.cls, spec.task_name, spec.queue

    def run(task: Task, envelope: Any) -> str:
        try:
            message = Message.from_dict(envelope)
            log.debug("%s <- %s %s (attempt %d)", name, message.type, message.id, task.request.retries + 1)
            if _expired(name, message, stats):
                return "expired"
            result = domain.run_handler(handler, message, idempotency_key=name)
        except InvalidMessageError as exc:
            _poison(task, queue, envelope, stats, exc)
            return "dead-lettered"
        return _count(name, envelope, result, stats)

    run.__name__ = handler.__name__
    return run


def _batch_body(domain: Domain, spec: HandlerSpec, stats: Counter[str]) -> Any:
    """A pack of messages for one handler, applied in ONE transaction (tasks/packs.py).
    A message that fails is split out to the single-message task, with one attempt counted,
    and retried alone there; the rest of the pack runs again without it."""
    return packed_body(domain, spec, stats, count=_count, poison=_poison, expired=_expired)


def _subscriber_body(domain: Domain, spec: HandlerSpec, stats: Counter[str]) -> Any:
    handler, name, queue = spec.cls, spec.task_name, spec.queue

    def run(task: Task, envelope: Any) -> str:
        if not isinstance(envelope, dict) or not isinstance(envelope.get("payload"), dict):
            _poison(
                task,
                queue,
                envelope,
                stats,
                InvalidMessageError("subscriber message needs a 'payload' object"),
            )
            return "dead-lettered"
        result = domain.bus.run_subscriber(
            handler, envelope["payload"], idempotency_key=name, message_id=envelope.get("id")
        )
        return _count(name, envelope, result, stats)

    run.__name__ = handler.__name__
    return run


def _expired(name: str, message: Message, stats: Counter[str]) -> bool:
    """A command past its deadline is acknowledged and skipped, not handled, and counted
    (`stats["expired"]`): the reference's `handler.skipped`, with no error path."""
    if not message.expired():
        return False
    stats["expired"] += 1
    log.info("%s: command %s expired at %s; skipped", name, message.id, message.deadline)
    return True


def _count(name: str, envelope: Any, result: Any, stats: Counter[str]) -> str:
    if result is SKIPPED:
        stats["duplicates"] += 1
        log.debug("%s: message %s was already applied; acknowledged and skipped", name, envelope.get("id"))
        return "duplicate"
    stats["handled"] += 1
    return "handled"


def _poison(task: Task, queue: str, envelope: Any, stats: Counter[str], exc: Exception) -> None:
    """A message that can never be decoded goes straight to the DLQ; the worker goes on."""
    stats["dead_lettered"] += 1
    dead_letter(
        task.app, queue=queue, task=task.name, body=envelope, error=exc, attempts=task.request.retries + 1
    )


def failure_hook(registered: dict[str, HandlerTask], stats: Counter[str]) -> Any:
    """The `task_failure` receiver of one runtime: the final failure of one of `registered`
    goes to its DLQ. Connected by the bootstrap (it also fires in the worker's main process
    when a child was killed)."""

    def on_final_failure(
        sender: Task | None = None,
        exception: BaseException | None = None,
        args: Any = None,
        einfo: Any = None,
        **_: Any,
    ) -> None:
        _final_failure(registered.get(getattr(sender, "name", "")), stats, sender, exception, args, einfo)

    return on_final_failure


def _final_failure(
    spec: HandlerTask | None,
    stats: Counter[str],
    sender: Task | None,
    exception: BaseException | None,
    args: Any,
    einfo: Any,
) -> None:
    if spec is None or sender is None or sender.app is not spec.celery:
        return  # another runtime's task (several apps may run in one process, e.g. tests)
    envelope = args[0] if args else None
    attempts = (sender.request.retries or 0) + 1
    message_id = envelope.get("id") if isinstance(envelope, dict) else None
    if not spec.enable_dlq:
        log.error(
            "%s: message %s dropped after %d attempt(s) (DLQ disabled): %r",
            sender.name,
            message_id,
            attempts,
            exception,
        )
        _release(spec, envelope)
        return
    stats["dead_lettered"] += 1
    try:
        dead_letter(
            spec.celery,
            queue=spec.queue,
            task=sender.name,
            body=envelope,
            error=exception or RuntimeError("unknown failure"),
            attempts=attempts,
            traceback=str(einfo) if einfo else None,
        )
    except Exception:  # noqa: BLE001 - never take the worker down; the error is logged
        log.exception("%s: could not write message %s to the DLQ", sender.name, message_id)
    _release(spec, envelope)


def _release(spec: HandlerTask, envelope: Any) -> None:
    """A sequential handler's key moves on past its failed message (after the DLQ write)."""
    if spec.release is None:
        return
    try:
        spec.release(envelope)
    except Exception:  # noqa: BLE001 - the key waits; the next final failure or a replay retries
        log.exception("%s: could not move the key of message %r on", spec.queue, envelope)
