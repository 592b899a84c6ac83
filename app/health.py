"""Health: database, Celery transport, each domain broker, outbox lag, delivery-audit lag and
(for `tidings health`) the workers consuming each queue, for `/health`, `tidings health` and
monitoring. Degraded comes with one line per reason in `reasons`."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from celery import Celery

from tidings.tasks import dlq
from tidings.tasks.audit import audit_lag
from tidings.tasks.naming import async_handlers, queue_name, relay_queue
from tidings.tasks.relay import outbox_store

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

# Transports whose workers answer a broadcast (`inspect active_queues`): the Redis and AMQP
# ones. The embedded SQLAlchemy and memory transports have no fanout; their workers are not
# checked (reported as such).
INSPECTABLE = ("redis", "rediss", "amqp", "amqps", "pyamqp")
INSPECT_TIMEOUT = 1.5  # seconds a worker has to answer


def check_database(domain: Domain) -> dict[str, Any]:
    db = domain.storage.default
    provider = db.provider
    try:
        db.ping()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"ok": False, "provider": provider, "error": type(exc).__name__}
    return {"ok": True, "provider": provider}


def check_broker(celery: Celery) -> dict[str, Any]:
    transport = celery.conf.broker_url.split("://", 1)[0]
    try:
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"ok": False, "transport": transport, "error": type(exc).__name__}
    return {"ok": True, "transport": transport}


def check_brokers(domain: Domain, celery: Celery | None) -> dict[str, dict[str, Any]]:
    """Each broker's `health_stats()`; `dlq_depth` counts the Celery DLQs of its subscribers."""
    report = {}
    for name, broker in domain.brokers:
        try:
            stats = broker.health_stats()
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            stats = {"healthy": False, "error": type(exc).__name__}
        if celery is not None and stats.get("healthy"):
            stats["dlq_depth"] = stats.get("dlq_depth", 0) + sum(
                dlq.depth(celery, queue_name(domain, s))
                for s in domain.registry["subscriber"].values()
                if (s.meta_.get("broker") or "default") == name
            )
        report[name] = {"provider": broker.settings.provider, **stats}
    return report


def handler_queues(domain: Domain) -> list[str]:
    """Every queue a worker must consume: each handler's (pollers run there too), the relay's."""
    return [*dict.fromkeys(queue_name(domain, h) for h in async_handlers(domain)), relay_queue(domain)]


def check_workers(celery: Celery, domain: Domain, timeout: float = INSPECT_TIMEOUT) -> dict[str, Any]:
    """Which of the domain's queues no worker consumes, from the workers' own answer to
    `inspect active_queues` (a worker that does not answer within `timeout` counts as absent)."""
    transport = celery.conf.broker_url.split("://", 1)[0]
    if transport not in INSPECTABLE or celery.conf.task_always_eager:
        return {"checked": False, "reason": f"the {transport} transport has no broadcast to ask workers"}
    try:
        answers = celery.control.inspect(timeout=timeout).active_queues() or {}
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {
            "checked": True,
            "ok": False,
            "error": type(exc).__name__,
            "unconsumed": handler_queues(domain),
        }
    consumed = {q.get("name") for queues in answers.values() for q in queues or ()}
    unconsumed = [q for q in handler_queues(domain) if q not in consumed]
    return {"checked": True, "ok": not unconsumed, "workers": sorted(answers), "unconsumed": unconsumed}


def check_audit(domain: Domain) -> dict[str, Any]:
    """Seconds past `audit_grace` the oldest unconfirmed delivery has waited (see tasks/audit.py)."""
    try:
        return {"lag": round(audit_lag(domain), 1)}
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"error": type(exc).__name__}


def health(domain: Domain, celery: Celery | None, workers: bool = False) -> dict[str, Any]:
    """`{"status": "ok"|"degraded", "reasons" (one line each), "database", "broker" (the Celery
    transport), "brokers" (each domain broker's health_stats), "outbox", "audit"}`, and with
    `workers` (a broadcast that waits up to INSPECT_TIMEOUT) the queues no worker consumes.
    Degraded when something does not answer, the oldest pending outbox row or the oldest
    unconfirmed delivery (past its grace) is older than `[outbox] health_lag`, or a queue has
    no worker. No secrets."""
    threshold = domain.settings.outbox.health_lag
    report: dict[str, Any] = {"database": check_database(domain)}
    report["broker"] = check_broker(celery) if celery is not None else {"ok": True, "transport": "none"}
    report["brokers"] = check_brokers(domain, celery)
    try:
        report["outbox"] = asdict(outbox_store(domain).status())
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        report["outbox"] = {"error": type(exc).__name__}
    report["audit"] = check_audit(domain) if "error" not in report["outbox"] else {"error": "outbox"}
    reasons = []
    if not report["database"]["ok"]:
        reasons.append(f"database: {report['database'].get('error')}")
    if not report["broker"]["ok"]:
        reasons.append(f"broker: {report['broker'].get('error')}")
    if "error" in report["outbox"]:
        reasons.append(f"outbox: {report['outbox']['error']}")
    elif report["outbox"]["oldest_pending_age"] > threshold:
        age = report["outbox"]["oldest_pending_age"]
        reasons.append(f"outbox lag: the oldest pending row is {age:.0f} s old (health_lag {threshold:g} s)")
    if "error" in report["audit"]:
        reasons.append(f"audit: {report['audit']['error']}")
    elif report["audit"]["lag"] > threshold:
        reasons.append(
            f"audit lag: a published message is unconfirmed {report['audit']['lag']:.0f} s past its grace "
            f"(health_lag {threshold:g} s)"
        )
    reasons += [f"broker {name}: unhealthy" for name, b in report["brokers"].items() if not b["healthy"]]
    if workers and celery is not None and report["broker"]["ok"]:
        report["workers"] = check_workers(celery, domain)
        for queue in report["workers"].get("unconsumed", []) if report["workers"]["checked"] else []:
            reasons.append(f"no worker consumes queue {queue}")
    report["reasons"] = reasons
    report["status"] = "ok" if not reasons else "degraded"
    return report
