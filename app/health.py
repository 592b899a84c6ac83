"""Health: database, Celery transport, each domain broker and outbox lag, for `/health`,
`tidings health` and monitoring."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from celery import Celery

from tidings.tasks import dlq
from tidings.tasks.naming import queue_name
from tidings.tasks.relay import outbox_store


def check_database(domain: Any) -> dict[str, Any]:
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


def check_brokers(domain: Any, celery: Celery | None) -> dict[str, dict[str, Any]]:
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


def health(domain: Any, celery: Celery | None) -> dict[str, Any]:
    """`{"status": "ok"|"degraded", "database", "broker" (the Celery transport), "brokers"
    (each domain broker's health_stats), "outbox"}`; no secrets."""
    report: dict[str, Any] = {"database": check_database(domain)}
    report["broker"] = check_broker(celery) if celery is not None else {"ok": True, "transport": "none"}
    report["brokers"] = check_brokers(domain, celery)
    try:
        report["outbox"] = asdict(outbox_store(domain).status())
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        report["outbox"] = {"error": type(exc).__name__}
    ok = (
        report["database"]["ok"]
        and report["broker"]["ok"]
        and "error" not in report["outbox"]
        and all(b["healthy"] for b in report["brokers"].values())
    )
    report["status"] = "ok" if ok else "degraded"
    return report
