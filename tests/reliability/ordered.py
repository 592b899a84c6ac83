"""The ordered domain of the per-key ordering test, and the Celery app of its worker subprocesses.

    python -m celery -A tests.reliability.ordered worker -Q <name>.ledger.p0,...,<name>.ledger

One handler, `Ledger`, is `sequential_by="account_id"`. Each `Deposited` carries `n`, its
place in its account's order (1, 2, ...). Each run of the handler inserts one `Posting` row
in its unit of work (so it commits with the inbox row, or not at all) holding the message
id, the key, `n`, and `prev`: the highest `n` of the account already committed when the run
began. Applied in order, every posting has `prev == n - 1`; two messages of one account run
at once, or out of order, leave a posting with another `prev`; a double leaves two rows.

Configured from the environment (tests/reliability/test_ordering.py): ORDERED_DOMAIN,
ORDERED_DATABASE_URL, ORDERED_BROKER_URL (the domain's Redis), ORDERED_CELERY_BROKER_URL (Celery's
broker when it is not that Redis: RabbitMQ), ORDERED_KEYPREFIX, ORDERED_VISIBILITY_TIMEOUT;
ORDERED_FAIL_N: a comma-separated list of `<account>:<n>` whose every run raises (they go to
the DLQ after the handler's retries); ORDERED_UNORDERED=1: no `sequential_by` (a baseline
for measuring what the ordering costs).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tidings import Domain, current_domain, handle
from tidings.domain.context import current_message
from tidings.fields import Identifier, Integer, String

POSTINGS = "posting"


def build_ordered(name: str) -> Domain:
    domain = Domain(name, root_path=Path(__file__).parent)
    domain.config.update(event_processing="async", command_processing="async", message_processing="async")
    domain.config["server"]["stream_subscription"].update(
        max_retries=2, retry_delay_seconds=0.2, retry_backoff=False, retry_jitter=False
    )

    @domain.aggregate
    class Batch:  # one aggregate raises a round of deposits (the key is the event's field)
        name: String()

    @domain.aggregate
    class Posting:
        message_id: String(required=True)
        account_id: String(required=True)
        n: Integer(required=True)
        prev: Integer(required=True)
        run_id: String(required=True)

    @domain.event(part_of=Batch)
    class Deposited:
        account_id: Identifier(required=True)
        n: Integer(required=True)

    failing = {tuple(item.split(":")) for item in os.environ.get("ORDERED_FAIL_N", "").split(",") if item}

    by = None if os.environ.get("ORDERED_UNORDERED") else "account_id"  # the overhead probe's baseline

    @domain.event_handler(part_of=Posting, stream_category="batch", sequential_by=by)
    class Ledger:
        @handle(Deposited)
        def post(self, event):
            if (str(event.account_id), str(event.n)) in failing:
                raise RuntimeError(f"posting {event.account_id}:{event.n} always fails")
            message = current_message.get()
            current_domain.repository_for(Posting).add(
                Posting(
                    message_id=message.id,
                    account_id=str(event.account_id),
                    n=event.n,
                    prev=_committed_max(current_domain, str(event.account_id)),
                    run_id=uuid.uuid4().hex,
                )
            )

    return domain


def _committed_max(domain: Any, account: str) -> int:
    """The highest `n` of the account's postings committed so far (outside the unit of work)."""
    table = domain.storage.default.metadata.tables[POSTINGS]
    with domain.storage.default.engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.max(table.c.n)).where(table.c.account_id == account)).scalar() or 0
        )


def configure(domain: Domain, database_url: str, broker_url: str) -> Domain:
    domain.config["databases"]["default"] = {"provider": "postgresql", "database_uri": database_url}
    domain.config["event_store"] = {"provider": "postgresql"}
    domain.config["brokers"]["default"] = {"provider": "redis", "url": broker_url}
    return domain.init()


def celery_overrides(broker_url: str, keyprefix: str, visibility_timeout: float) -> dict[str, Any]:
    """A short visibility timeout and a restore sweep every second: a killed worker's message
    is back (at the head of its queue) within a few seconds."""
    return {
        "broker_url": broker_url,
        "broker_transport_options": {
            "global_keyprefix": keyprefix,
            "visibility_timeout": visibility_timeout,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        },
        "worker_prefetch_multiplier": 1,
        "allow_unsafe": ["visibility_timeout"],
    }


def _build_app() -> Any:
    from tidings.app.bootstrap import create_celery_app

    broker = os.environ["ORDERED_BROKER_URL"]
    domain = configure(
        build_ordered(os.environ["ORDERED_DOMAIN"]), os.environ["ORDERED_DATABASE_URL"], broker
    )
    return create_celery_app(
        domain,
        **celery_overrides(
            os.environ.get("ORDERED_CELERY_BROKER_URL") or broker,
            os.environ.get("ORDERED_KEYPREFIX", ""),
            float(os.environ["ORDERED_VISIBILITY_TIMEOUT"]),
        ),
    )


_app = None


def __getattr__(name: str) -> Any:
    global _app
    if name == "app":
        if _app is None:
            _app = _build_app()
        return _app
    raise AttributeError(name)
