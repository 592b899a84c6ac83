"""The Tidings side of the benchmarks: one aggregate, one event, one to three handlers.

Each handler does what the naive pipeline's handler does (one UPDATE of the business row), but
inside Tidings' unit of work with its inbox row. Configured from the environment, so the
benchmark process (producer, relay) and the worker process build the same domain:
BENCH_DATABASE_URL, BENCH_BROKER_URL, BENCH_KEYPREFIX, BENCH_HANDLERS (1 or 3),
BENCH_PROFILE (a subscription profile). `celery -A bench.tidings_app worker` runs it.
"""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa

from tidings import Domain, current_domain, handle
from tidings.app.bootstrap import create_celery_app
from tidings.domain.context import current_uow
from tidings.fields import Float, Identifier, Integer

APPLY = sa.text(
    "UPDATE bench_order SET handled = handled + 1, "
    "handled_at = extract(epoch from clock_timestamp()) WHERE id = :id"
)


def build_domain(
    database_url: str,
    handlers: int = 1,
    profile: str | None = None,
    event_processing: str = "async",
    after_commit: str = "kick",
) -> Domain:
    """The benchmark domain on `database_url` (PostgreSQL) or the memory provider."""
    domain = Domain("bench")
    domain.config["event_processing"] = event_processing
    domain.config["command_processing"] = "sync"
    domain.config["message_processing"] = "sync"
    if database_url == "memory":
        domain.config["databases"]["default"] = {"provider": "memory"}
        domain.config["event_store"] = {"provider": "memory"}
    else:
        domain.config["databases"]["default"] = {"provider": "postgresql", "database_uri": database_url}
        domain.config["event_store"] = {"provider": "postgresql"}
    if profile:
        domain.config["server"]["default_subscription_profile"] = profile
    domain.config["outbox"]["after_commit"] = after_commit
    if os.environ.get("BENCH_AUDIT_INTERVAL"):  # a knob for experiments: the audit's period
        domain.config["outbox"]["audit_interval"] = float(os.environ["BENCH_AUDIT_INTERVAL"])

    @domain.event(part_of="BenchOrder")
    class OrderPlaced:
        order_id: Identifier(required=True)

    @domain.aggregate
    class BenchOrder:
        handled: Integer(default=0)
        handled_at: Float()

        @classmethod
        def place(cls) -> BenchOrder:
            order = cls()
            order.raise_(OrderPlaced(order_id=order.id))
            return order

    for i in range(handlers):
        domain.event_handler(part_of=BenchOrder)(_handler_class(f"ApplyOrder{i}", OrderPlaced))
    return domain


def _handler_class(name: str, event: type) -> type:
    def apply(self: Any, placed: Any) -> None:
        _apply(placed.order_id)

    apply = handle(event)(apply)
    return type(name, (), {"apply": apply, "__module__": __name__})


def _apply(order_id: str) -> None:
    """One UPDATE in the handler's own unit of work (its transaction holds the inbox row)."""
    domain = current_domain
    db = domain.databases["default"]
    session = current_uow.get().session_for(db)
    if hasattr(session, "conn"):
        session.conn.execute(APPLY, {"id": order_id})
    else:  # the memory provider, for the sync-mode scenario
        repo = domain.repository_for(domain.registry["aggregate"]["BenchOrder"])
        order = repo.get(order_id)
        order.handled += 1
        repo.add(order)


def place_order(domain: Domain) -> str:
    """One transaction: the order row, its event, its outbox row. Returns the order id."""
    order_cls = domain.registry["aggregate"]["BenchOrder"]
    with domain.domain_context():
        return domain.repository_for(order_cls).add(order_cls.place()).id


def celery_app(domain: Domain, keyprefix: str, broker_url: str) -> Any:
    domain.config["brokers"]["default"] = {"provider": "redis", "url": broker_url}
    domain.init()
    return create_celery_app(
        domain,
        broker_url=broker_url,
        broker_transport_options={"visibility_timeout": 300, "global_keyprefix": keyprefix},
    )


if os.environ.get("BENCH_DATABASE_URL"):  # the worker: `celery -A bench.tidings_app worker`
    domain = build_domain(
        os.environ["BENCH_DATABASE_URL"],
        int(os.environ.get("BENCH_HANDLERS", "1")),
        os.environ.get("BENCH_PROFILE") or None,
        after_commit=os.environ.get("BENCH_AFTER_COMMIT", "kick"),
    )
    celery = celery_app(
        domain,
        os.environ.get("BENCH_KEYPREFIX", ""),
        os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
    )
