"""Packed delivery (`batch_delivery`, the `batch` profile): one task, one transaction per pack.

The relay packs the messages due for one handler into one task (tasks/dispatch.py). The task
applies the whole pack in one unit of work (`MessageBus.run_pack`): one multi-row inbox insert
that skips what was applied before, the new messages' effects, one commit. So a pack of 100
costs one transaction, not 100.

A message that raises rolls the pack back; it is split out to the handler's single-message
task with one attempt counted (`retries=1`) and retried alone there, under the handler's
policy (then the DLQ), and the rest of the pack runs again without it. A handler with several
methods for a message keeps an inbox row per method, so its packs run one message per unit
of work (`MessageBus.run_handler`), as before.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Task

from tidings.domain.bus import SKIPPED
from tidings.domain.envelope import Message
from tidings.domain.errors import InvalidMessageError
from tidings.domain.running import PackMemberFailed
from tidings.domain.specs import HandlerSpec

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

log = logging.getLogger("tidings.tasks")


def packed_body(
    domain: Domain,
    spec: HandlerSpec,
    stats: Counter[str],
    *,
    count: Callable[[str, Any, Any, Counter[str]], str],
    poison: Callable[[Task, str, Any, Counter[str], Exception], None],
    expired: Callable[[str, Message, Counter[str]], bool],
) -> Any:
    """The body of a handler's pack task (`count`, `poison`, `expired`: tasks/handlers.py's)."""
    handler, name, queue = spec.cls, spec.task_name, spec.queue
    delay = spec.subscription.retry_delay_seconds

    def split_out(task: Task, envelope: Any, exc: Exception) -> None:
        log.warning("%s: message %s failed in a pack (%s); retried alone", name, envelope.get("id"), exc)
        task.app.tasks[name].apply_async(args=[envelope], queue=queue, retries=1, countdown=delay or None)

    def run(task: Task, envelopes: list) -> dict[str, int]:
        stats["packs"] += 1
        outcomes: Counter[str] = Counter()
        members: list[tuple[Any, Message]] = []
        for envelope in envelopes:
            try:
                message = Message.from_dict(envelope)
            except InvalidMessageError as exc:
                poison(task, queue, envelope, stats, exc)
                outcomes["dead-lettered"] += 1
                continue
            if expired(name, message, stats):
                outcomes["expired"] += 1
                continue
            members.append((envelope, message))
        if not domain.bus.packable(handler, [m for _, m in members]):
            for envelope, message in members:  # one unit per message and method
                try:
                    result = domain.run_handler(handler, message, idempotency_key=name)
                except Exception as exc:  # noqa: BLE001 - retried alone, by the single task
                    split_out(task, envelope, exc)
                    outcomes["split"] += 1
                    continue
                outcomes[count(name, envelope, result, stats)] += 1
            return dict(outcomes)
        while members:
            try:
                applied = domain.bus.run_pack(handler, [m for _, m in members], idempotency_key=name)
            except PackMemberFailed as failed:
                envelope, _ = members.pop(failed.index)
                split_out(task, envelope, failed.error)
                outcomes["split"] += 1
                continue
            for envelope, message in members:
                outcomes[count(name, envelope, None if message.id in applied else SKIPPED, stats)] += 1
            break
        return dict(outcomes)

    run.__name__ = f"{handler.__name__}_batch"
    return run
