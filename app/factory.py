"""The Celery app factory: the one place a domain meets Celery."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue

from tidings.app import redis_transport, sqla_transport
from tidings.app.celery_settings import celery_settings
from tidings.app.engine import CeleryEngine
from tidings.app.kick import gate_for
from tidings.app.relay_thread import RelayThread
from tidings.domain.settings import IN_PROCESS_BROKERS, BrokerSettings
from tidings.tasks.audit import audit_schedule, register_audit_task
from tidings.tasks.handlers import failure_hook, register_handler_tasks
from tidings.tasks.naming import (
    async_handlers,
    event_store_handlers,
    poll_task_name,
    queue_name,
    relay_queue,
    relay_task_name,
    task_name,
)
from tidings.tasks.poller import SAFETY_NET_SECONDS, pollers_by_category, register_poller_tasks
from tidings.tasks.pump import pulled_subscribers, pump_task_name, register_pump_tasks
from tidings.tasks.relay import register_relay_task, relay_now

log = logging.getLogger("tidings")
sqla_transport.register()
redis_transport.register()  # a list item that is not a message is dead-lettered, not fatal


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
    """The runtime's Celery app for `domain` (see `tidings.app.bootstrap.bootstrap`)."""
    from tidings.app.bootstrap import bootstrap

    return bootstrap(domain, **overrides).celery


def build_celery_app(domain: Any, stats: Counter[Any], **overrides: Any) -> tuple[Celery, CeleryEngine, Any]:
    """A Celery app running `domain`'s handlers, each in its own queue, and the outbox relay;
    with the engine the domain's bus hands commits to and the task-failure receiver.

    Configured in layers (Tidings' defaults, the user's `celeryconfig`, the domain, its
    `[celery]` table, `overrides`); a layer that weakens a delivery guarantee is refused (see
    app/celery_settings.py). Also connects the after-commit kick of the relay.
    """
    if not domain.initialized:
        domain.init()
    celery = Celery(f"tidings.{domain.name}", set_as_current=False)
    routes = {relay_task_name(domain): relay_queue(domain)}
    routes.update({task_name(domain, h): queue_name(domain, h) for h in async_handlers(domain)})
    routes.update({poll_task_name(domain, h): queue_name(domain, h) for h in event_store_handlers(domain)})
    derived = dict(
        broker_url=broker_url(domain.settings.brokers["default"]),
        task_queues=[Queue(q, routing_key=q) for q in routes.values()],
        task_routes={name: {"queue": q, "routing_key": q} for name, q in routes.items()},
        task_default_queue=relay_queue(domain),
        broker_transport_options={"polling_interval": _polling_interval(domain)},
    )
    # Layers and enforced guarantees: see app/celery_settings.py.
    settings = celery_settings(domain.settings.celery, derived, overrides)
    celery.config_from_object(settings.values)
    _check_retry_delays(celery, domain)
    handler_tasks = register_handler_tasks(celery, domain, stats)
    pollers = register_poller_tasks(celery, domain, stats)
    register_pump_tasks(celery, domain)
    gate = (
        None
        if celery.conf.task_always_eager
        else gate_for(str(celery.conf.broker_url), celery.conf.broker_transport_options or {}, domain.name)
    )
    relay = register_relay_task(celery, domain, before_relay=gate.relay_starting if gate else None)
    audit = register_audit_task(celery, domain, stats)  # re-sends what no handler confirmed
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
        **audit_schedule(domain, audit),
    }
    in_thread = domain.settings.outbox.after_commit == "thread" and not celery.conf.task_always_eager
    engine = CeleryEngine(
        celery,
        domain,
        relay,
        pollers_by_category(domain, pollers),
        gate,
        RelayThread(lambda: relay_now(celery, domain), domain.name) if in_thread else None,
    )
    celery.tidings_domain = domain
    return celery, engine, failure_hook(handler_tasks, stats)


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
