"""The Celery engine behind a domain's bus: wakes the relay loop and the event_store pollers
after a commit, and hands external messages to their subscribers' queues."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import Celery

from tidings.app.kick import Kicker, RelayWake
from tidings.app.relay_thread import RelayThread
from tidings.domain.envelope import Message
from tidings.tasks.naming import queue_name, relay_queue, task_name
from tidings.tasks.poller import Pollers, kick
from tidings.tasks.pump import WAKEUP_EXPIRES, pump_task_name

if TYPE_CHECKING:
    from tidings.domain.domain import Domain


class CeleryEngine:
    """The domain's async engine: kicks the relay and the event_store pollers after commits,
    delivers external messages."""

    def __init__(
        self,
        celery: Celery,
        domain: Domain,
        relay: Any,
        pollers: Pollers | None = None,
        wake: RelayWake | None = None,
        relay_thread: RelayThread | None = None,
    ) -> None:
        self.celery, self.domain, self.relay, self.wake = celery, domain, relay, wake
        self.pollers = pollers or {}
        self.relay_thread = relay_thread
        # Eager mode runs the relay inline (tests rely on it); otherwise the broker is only
        # ever touched from the kicker's thread, never from the committing one.
        self.kicker = None if celery.conf.task_always_eager else Kicker(self._wake, domain.name)

    def committed(self, messages: list[Message]) -> None:
        """Relay and poll right after a commit, so latency is not bounded by the idle period.
        The relay runs in this process's relay thread (`outbox.after_commit = "thread"`), or
        the workers' relay loops are woken (app/kick.py); in eager mode it runs inline."""
        categories = {m.stream_category for m in messages}
        if self.kicker is None:
            self._wake(categories)
        else:
            self.kicker.committed(categories)

    def _wake(self, categories: set[str]) -> None:
        if self.relay_thread is not None:
            self.relay_thread.committed()
        elif self.wake is None:  # eager: the relay task runs inline
            self.relay.apply_async(queue=relay_queue(self.domain), expires=60)
        else:
            self.wake.signal()
        kick(self.pollers, categories)

    def deliver(
        self, broker: Any, stream: str, message_id: str, message: dict, subscribers: list[type]
    ) -> None:
        """A pulled broker keeps the message: wake the subscribers' pumps so it is read now,
        not at the next beat tick (one wake-up pending at a time). Otherwise send it straight
        to each subscriber's queue."""
        for subscriber in subscribers:
            queue = queue_name(self.domain, subscriber)
            if broker.pulled:
                if broker.claim_wakeup(stream, queue, WAKEUP_EXPIRES):
                    self.celery.tasks[pump_task_name(self.domain, subscriber)].apply_async(
                        queue=queue, expires=WAKEUP_EXPIRES
                    )
            else:  # the registered task, not send_task: eager mode must run it inline
                self.celery.tasks[task_name(self.domain, subscriber)].apply_async(
                    args=[{"id": message_id, "stream": stream, "payload": message}], queue=queue
                )
