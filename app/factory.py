"""The Celery app factory: the one place a domain meets Celery."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Celery
from kombu import Queue

from tidings.app import redis_transport, sqla_transport
from tidings.app.celery_settings import ALLOW_UNSAFE_KEY, RECOVERY_BOUND_KEY, celery_settings
from tidings.app.engine import CeleryEngine
from tidings.app.kick import wake_for
from tidings.app.metrics import count_relayed
from tidings.app.relay_loop import Chore, RelayLoop, audit_turn, relay_loop_step
from tidings.app.relay_thread import RelayThread
from tidings.domain.errors import ConfigurationError
from tidings.domain.settings import IN_PROCESS_BROKERS, BrokerSettings
from tidings.tasks.audit import register_audit_task
from tidings.tasks.handlers import failure_hook, register_handler_tasks
from tidings.tasks.naming import (
    async_handlers,
    backfill_queue,
    event_store_handlers,
    packed_handlers,
    poll_task_name,
    queue_name,
    relay_queue,
    relay_task_name,
    specs,
    task_name,
)
from tidings.tasks.ordering import PARTITION_QUEUE_ARGUMENTS, partition_queues_of
from tidings.tasks.poller import SAFETY_NET_SECONDS, pollers_by_category, register_poller_tasks
from tidings.tasks.pump import pulled_subscribers, pump_task_name, register_pump_tasks
from tidings.tasks.relay import PURGE_EVERY, purge_bookkeeping, register_relay_task, relay_now

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

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


def build_celery_app(
    domain: Domain, stats: Counter[Any], **overrides: Any
) -> tuple[Celery, CeleryEngine, Any]:
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
        task_queues=[Queue(q, routing_key=q) for q in [*routes.values(), *_backfill_queues(domain)]]
        + [
            Queue(q, routing_key=q, queue_arguments=PARTITION_QUEUE_ARGUMENTS)
            for q in partition_queues_of(domain)
        ],
        task_routes={name: {"queue": q, "routing_key": q} for name, q in routes.items()},
        task_default_queue=relay_queue(domain),
        broker_transport_options={"polling_interval": _polling_interval(domain)},
    )
    # Layers and enforced guarantees: see app/celery_settings.py.
    settings = celery_settings(domain.settings.celery, derived, overrides)
    celery.config_from_object(settings.values)
    check_recovery_bound(celery, domain, allowed=RECOVERY_BOUND_KEY in settings.allow_unsafe)
    handler_tasks = register_handler_tasks(celery, domain, stats)
    pollers = register_poller_tasks(celery, domain, stats)
    register_pump_tasks(celery, domain)
    eager = bool(celery.conf.task_always_eager)
    outbox = domain.settings.outbox
    wake = (
        None
        if eager
        else wake_for(
            str(celery.conf.broker_url),
            celery.conf.broker_transport_options or {},
            domain.name,
            poll=min(outbox.interval, _polling_interval(domain)),
        )
    )
    relay = register_relay_task(celery, domain)
    register_audit_task(celery, domain, stats)  # a round by hand; the relay loop runs it
    # No relay or audit entry: the workers' relay loops run both (app/relay_loop.py), so an
    # idle system sends no task at all. Beat keeps the pollers' and pumps' safety nets.
    celery.conf.beat_schedule = {
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
    if wake is not None:

        def relay_round() -> int:
            published = relay_now(celery, domain)
            count_relayed(domain.name, published)
            return published

        loop = RelayLoop(
            relay_round,
            wake,
            idle=outbox.interval,
            name=domain.name,
            chores=[
                Chore("purge", lambda: purge_bookkeeping(domain, outbox), PURGE_EVERY),
                Chore("audit", audit_turn(celery, domain, stats, wake), outbox.audit_interval),
            ],
            linger=PACK_LINGER if packed_handlers(domain) else 0.0,
        )
        celery.steps["worker"].add(relay_loop_step(loop, relay_queue(domain)))
        celery.tidings_relay_loop = loop
    in_thread = outbox.after_commit == "thread" and not eager
    engine = CeleryEngine(
        celery,
        domain,
        relay,
        pollers_by_category(domain, pollers),
        wake,
        RelayThread(lambda: relay_now(celery, domain), domain.name) if in_thread else None,
    )
    celery.tidings_domain = domain
    return celery, engine, failure_hook(handler_tasks, stats)


def _backfill_queues(domain: Domain) -> list[str]:
    """With `[server.priority_lanes]`: each handler's backfill queue (tasks/naming.py)."""
    if not domain.settings.server.priority_lanes.enabled:
        return []
    return [backfill_queue(domain, spec.queue) for spec in specs(domain)]


PACK_LINGER = 0.02  # s a live round waits so packs fill (only with `batch_delivery` handlers)


def _pump_schedule(domain: Domain) -> dict[str, dict]:
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


def _polling_interval(domain: Domain) -> float:
    """Seconds between polls on polling transports: TIDINGS_POLLING_INTERVAL, else the smallest
    `blocking_timeout_ms` among the handlers."""
    if os.environ.get("TIDINGS_POLLING_INTERVAL"):
        return float(os.environ["TIDINGS_POLLING_INTERVAL"])
    timeouts = [domain.subscription_settings(h).blocking_timeout_ms for h in async_handlers(domain)]
    return min(timeouts, default=100) / 1000


def check_recovery_bound(celery: Celery, domain: Domain, *, allowed: bool = False) -> None:
    """On Redis a delivered message is invisible to other workers for the visibility timeout
    (VT) until acknowledged, and both a handler's run and a retry's countdown (held
    unacknowledged in the worker until due) count against it. So VT must exceed
    `task_time_limit` (the handler timeout) plus the longest countdown of any handler
    (`retry_backoff_max` or `retry_delay_seconds`, and `[server.transient_retry]
    max_delay_seconds`), or a message still in work is delivered a second time.

    A violation is a `ConfigurationError` naming the numbers (opt out with `[celery]
    allow_unsafe = ["visibility_timeout"]`: then only a warning); no time limit at all is a
    warning, since the bound then rests on the handlers being quick.
    """
    if not str(celery.conf.broker_url).startswith("redis"):
        return
    vt = float((celery.conf.broker_transport_options or {}).get("visibility_timeout", 3600))
    limit = celery.conf.task_time_limit
    transient = domain.settings.server.transient_retry
    for handler in async_handlers(domain):
        s = domain.subscription_settings(handler)
        ordinary = s.retry_backoff_max if s.retry_backoff else s.retry_delay_seconds
        longest = max(ordinary, transient.max_delay_seconds if transient.enabled else 0)
        held = (float(limit) if limit else 0.0) + longest
        if held < vt:
            continue
        problem = (
            f"tidings: {handler.__name__}: the handler timeout (task_time_limit={limit}) plus its "
            f"longest retry countdown ({longest}s) is not below the Redis visibility timeout "
            f"({vt}s): a message still in work would be delivered twice. Raise "
            f"broker_transport_options visibility_timeout, or lower task_time_limit / "
            f"retry_backoff_max / [server.transient_retry] max_delay_seconds"
        )
        if not allowed:
            raise ConfigurationError(
                f'{problem}; or set [celery] {ALLOW_UNSAFE_KEY} = ["{RECOVERY_BOUND_KEY}"]'
            )
        log.warning("%s (allowed by %s)", problem, ALLOW_UNSAFE_KEY)
    if not limit:
        log.warning(
            "no task_time_limit: a handler running longer than the Redis visibility timeout "
            "(%ss) is delivered a second time while it runs",
            vt,
        )
