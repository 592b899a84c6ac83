"""The domain of the lanes tests, configured from the environment so that the test process
and `tidings server`'s children (`TIDINGS_DOMAIN=tests.lanes.lanes_app`) build the same one.

LANES_DOMAIN (its name: its queues), LANES_DATABASE_URL (PostgreSQL), LANES_BROKER_URL,
LANES_KEYPREFIX (Redis), LANES_BREAKER_STORE, LANES_AUDIT_GRACE (seconds),
LANES_PRIORITY_LANES ("1": on), LANES_DOWN_FILE (while it exists, `Charge` fails: its
dependency is down), LANES_GATE_FILE (while it exists, `SlowReport` waits: its lane's threads
are all busy).

Every handler run that commits inserts one row in `lanes_effect` (handler, message id, kind,
the database's clock): the audit counts runs, not states, so a double application shows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tidings import Domain, handle
from tidings.domain.context import current_uow
from tidings.fields import Float, Identifier, String

EFFECTS = sa.Table(
    "lanes_effect",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("handler", sa.String(40), nullable=False),
    sa.Column("message_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("posted_at", sa.Float, nullable=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)
SLOW_SECONDS = 1.5
BULK_SECONDS = 0.004


def build_domain(env: dict[str, str] | os._Environ[str] = os.environ) -> Domain:
    domain = Domain(env.get("LANES_DOMAIN", "lanes"))
    url = env["LANES_DATABASE_URL"]
    domain.config["databases"]["default"] = {"provider": "postgresql", "database_uri": url}
    domain.config["event_store"] = {"provider": "postgresql"}
    domain.config["command_processing"] = "sync"
    domain.config["brokers"]["default"] = {"provider": "celery", "url": env["LANES_BROKER_URL"]}
    domain.config["server"]["stream_subscription"] = {"max_retries": 2, "retry_delay_seconds": 0.2}
    # The delivery audit re-sends what is unconfirmed after audit_grace; a backlog that waits
    # in its queue longer (the backfill test's 5,000) would be re-sent while it is measured.
    # LANES_AUDIT_GRACE: shorter, for a test whose kills can lose a delivery in kombu's BRPOP
    # window (README, "The worker or beat process dies") and that waits for the audit.
    domain.config["outbox"]["audit_grace"] = float(env.get("LANES_AUDIT_GRACE", "120"))
    if env.get("LANES_KEYPREFIX"):
        domain.config["celery"] = {"broker_transport_options": {"global_keyprefix": env["LANES_KEYPREFIX"]}}
    if env.get("LANES_BREAKER_STORE"):
        domain.config["server"]["breaker_store"] = env["LANES_BREAKER_STORE"]
    if env.get("LANES_PRIORITY_LANES") == "1":
        domain.config["server"]["priority_lanes"] = {"enabled": True}
    down = Path(env["LANES_DOWN_FILE"]) if env.get("LANES_DOWN_FILE") else None
    gate = Path(env["LANES_GATE_FILE"]) if env.get("LANES_GATE_FILE") else None

    @domain.aggregate
    class Job:
        kind: String(max_length=20)

    @domain.event(part_of=Job)
    class SlowPosted:
        job_id: Identifier(required=True)
        posted_at: Float(required=True)

    @domain.event(part_of=Job)
    class FastPosted:
        job_id: Identifier(required=True)
        posted_at: Float(required=True)
        kind: String(max_length=20, default="interactive")

    @domain.event(part_of=Job)
    class ChargePosted:
        job_id: Identifier(required=True)
        posted_at: Float(required=True)

    @domain.event_handler(part_of=Job)
    class SlowReport:
        @handle(SlowPosted)
        def build(self, event: Any) -> None:
            if gate is None:
                time.sleep(SLOW_SECONDS)
            deadline = time.monotonic() + 30
            while gate is not None and gate.exists() and time.monotonic() < deadline:
                time.sleep(0.05)  # held until the test opens the gate: its lane is saturated
            record("SlowReport", event, "slow")

    @domain.event_handler(part_of=Job)
    class FastNotice:
        @handle(FastPosted)
        def send(self, event: Any) -> None:
            if event.kind == "bulk":
                time.sleep(BULK_SECONDS)  # a backfill's work: slower than a notice
            record("FastNotice", event, event.kind)

    @domain.event_handler(
        part_of=Job,
        subscription_config={"circuit_breaker_threshold": 3, "circuit_breaker_reset_seconds": 2},
    )
    class Charge:
        @handle(ChargePosted)
        def charge(self, event: Any) -> None:
            if down is not None and down.exists():
                raise RuntimeError("payment service unavailable")
            record("Charge", event, "charge")

    return domain


def record(handler: str, event: Any, kind: str) -> None:
    """One row per committed handler run, in the handler's own transaction."""
    session = current_uow.get().session_for(current_domain_db())
    session.conn.execute(
        EFFECTS.insert().values(
            handler=handler,
            message_id=event._message.id,
            kind=kind,
            posted_at=event.posted_at,
            applied_at=time.time(),
        )
    )


def current_domain_db() -> Any:
    from tidings import current_domain

    return current_domain.databases["default"]


if os.environ.get("LANES_DATABASE_URL"):
    domain = build_domain()
