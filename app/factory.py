"""The Celery app factory: the one place a domain meets Celery."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from kombu import Queue

from tidings.app import sqla_transport
from tidings.app.kick import KickGate, gate_for
from tidings.app.relay_thread import RelayThread
from tidings.domain.settings import IN_PROCESS_BROKERS, BrokerSettings
from tidings.tasks.handlers import register_handler_tasks
from tidings.tasks.naming import (
    async_handlers,
    event_store_handlers,
    poll_task_name,
    queue_name,
    relay_queue,
    relay_task_name,
    task_name,
)
from tidings.tasks.poller import SAFETY_NET_SECONDS, Pollers, kick, pollers_by_category, register_poller_tasks
from tidings.tasks.pump import WAKEUP_EXPIRES, pulled_subscribers, pump_task_name, register_pump_tasks
from tidings.tasks.relay import register_relay_task, relay_now

log = logging.getLogger("tidings")
sqla_transport.register()
_apps: dict[int, Celery] = {}


def broker_url(broker: BrokerSettings) -> str:
    """The kombu URL of a `[brokers.<name>]` table."""
    if broker.provider in IN_PROCESS_BROKERS:
        return "memory://"
    url = broker.options.url
    if not url:
        raise ValueError(f"broker provider {broker.provider!r} needs a 'url'")
    if url.startswith("sqla+sqlite:///"):
        Path(url.removeprefix("sqla+sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return url


def create_celery_app(domain: Any, **overrides: Any) -> Celery:
    """A Celery app running `domain`'s handlers, each in its own queue, and the outbox relay.

    Configured from `celeryconfig.py`, then the domain (`brokers.default`, `[celery]`), then
    `overrides`. Also connects the after-commit kick of the relay.
    """
    if not domain.initialized:
        domain.init()
    celery = Celery(f"tidings.{domain.name}", set_as_current=False)
    celery.config_from_object("tidings.celeryconfig")
    routes = {relay_task_name(domain): relay_queue(domain)}
    routes.update({task_name(domain, h): queue_name(domain, h) for h in async_handlers(domain)})
    routes.update({poll_task_name(domain, h): queue_name(domain, h) for h in event_store_handlers(domain)})
    celery.conf.update(
        broker_url=broker_url(domain.settings.brokers["default"]),
        task_queues=[Queue(q, routing_key=q) for q in routes.values()],
        task_routes={name: {"queue": q, "routing_key": q} for name, q in routes.items()},
        task_default_queue=relay_queue(domain),
    )
    celery.conf.broker_transport_options = {
        **celery.conf.broker_transport_options,
        "polling_interval": _polling_interval(domain),
    }
    celery.conf.update(domain.settings.celery)
    celery.conf.update(overrides)
    _check_retry_delays(celery, domain)
    register_handler_tasks(celery, domain)
    pollers = register_poller_tasks(celery, domain)
    register_pump_tasks(celery, domain)
    gate = (
        None
        if celery.conf.task_always_eager
        else gate_for(str(celery.conf.broker_url), celery.conf.broker_transport_options or {}, domain.name)
    )
    relay = register_relay_task(celery, domain, before_relay=gate.relay_starting if gate else None)
    interval = domain.settings.outbox.interval
    celery.conf.beat_schedule = {
        relay_task_name(domain): {
            "task": relay.name,
            "schedule": interval,
            "options": {"queue": relay_queue(domain), "expires": max(interval * 2, 1.0)},
        },
        **{
            poller.name: {
                "task": poller.name,
                "schedule": SAFETY_NET_SECONDS,
                "options": {"queue": queue_name(domain, handler), "expires": SAFETY_NET_SECONDS},
            }
            for handler, poller in pollers.items()
        },
        **_pump_schedule(domain),
    }
    in_thread = domain.settings.outbox.after_commit == "thread" and not celery.conf.task_always_eager
    domain.attach_engine(
        CeleryEngine(
            celery,
            domain,
            relay,
            pollers_by_category(domain, pollers),
            gate,
            RelayThread(lambda: relay_now(celery, domain), domain.name) if in_thread else None,
        )
    )
    celery.tidings_domain = domain
    _apps[id(domain)] = celery
    return celery


def _pump_schedule(domain: Any) -> dict[str, dict]:
    """Beat runs each subscriber's pump every `blocking_timeout_ms` (at least 1 s, beat's
    practical floor); a pump that finds a full batch re-schedules itself in between."""
    schedule = {}
    for subscriber in pulled_subscribers(domain):
        period = max(domain.subscription_settings(subscriber).blocking_timeout_ms / 1000, 1.0)
        schedule[pump_task_name(domain, subscriber)] = {
            "task": pump_task_name(domain, subscriber),
            "schedule": period,
            "options": {"queue": queue_name(domain, subscriber), "expires": max(period * 2, 1.0)},
        }
    return schedule


def _polling_interval(domain: Any) -> float:
    """Seconds between polls on polling transports: TIDINGS_POLLING_INTERVAL, else the smallest
    `blocking_timeout_ms` among the handlers."""
    if os.environ.get("TIDINGS_POLLING_INTERVAL"):
        return float(os.environ["TIDINGS_POLLING_INTERVAL"])
    timeouts = [domain.subscription_settings(h).blocking_timeout_ms for h in async_handlers(domain)]
    return min(timeouts, default=100) / 1000


def celery_app_for(domain: Any) -> Celery:
    """The app already created for this domain in this process, or a new one."""
    return _apps.get(id(domain)) or create_celery_app(domain)


class CeleryEngine:
    """The domain's async engine: kicks the relay and the event_store pollers after commits,
    delivers external messages."""

    def __init__(
        self,
        celery: Celery,
        domain: Any,
        relay: Any,
        pollers: Pollers | None = None,
        gate: KickGate | None = None,
        relay_thread: RelayThread | None = None,
    ) -> None:
        self.celery, self.domain, self.relay, self.gate = celery, domain, relay, gate
        self.pollers = pollers or {}
        self.relay_thread = relay_thread

    def committed(self, messages: list) -> None:
        """Relay and poll right after a commit, so latency is not bounded by the beat period.
        The relay runs in this process's relay thread (`outbox.after_commit = "thread"`) or as a
        relay task, skipped while an earlier kick is still queued (see app/kick.py)."""
        if self.relay_thread is not None:
            self.relay_thread.committed()
        elif self.gate is None or self.gate.should_kick():
            self.relay.apply_async(queue=relay_queue(self.domain), expires=60)
        kick(self.pollers, messages)

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


def _check_retry_delays(celery: Celery, domain: Any) -> None:
    """On Redis a retry countdown is held unacknowledged in the worker: it must end before the
    visibility timeout, or the message is delivered twice."""
    if not str(celery.conf.broker_url).startswith("redis"):
        return
    vt = float((celery.conf.broker_transport_options or {}).get("visibility_timeout", 3600))
    for handler in async_handlers(domain):
        s = domain.subscription_settings(handler)
        longest = s.retry_backoff_max if s.retry_backoff else s.retry_delay_seconds
        if longest >= vt:
            log.warning(
                "%s: retry delay %ss is not below the Redis visibility timeout %ss",
                handler.__name__,
                longest,
                vt,
            )


@worker_process_init.connect(weak=False)
def _after_fork(**_: Any) -> None:
    # Connection pools must never be shared across a fork: each child builds its own.
    for celery in _apps.values():
        celery.tidings_domain.dispose()
