"""What one `tidings status` reading costs on a busy outbox: `python -m bench.status_cost`.

A domain with one event type and `--handlers` handlers, on a scratch PostgreSQL database and
Redis (`DATABASE_URL`, `REDIS_URL`), with `--rows` published rows the audit confirmed,
1,000 published and not handled yet, 500 pending. Prints the statements and the median (and
max) milliseconds of `read_status(workers=False)` over 20 readings, then the same after the
audit's confirmations are wiped (the audit not running: every row unconfirmed, the worst
case). The figures are absolute costs on this machine, not ratios: nothing to compare with.
"""

from __future__ import annotations

import argparse
import json
import statistics
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bench.harness import REDIS_URL, redis_prefix, scratch_database
from tidings import Domain, handle
from tidings.app.bootstrap import create_celery_app
from tidings.app.status import read_status
from tidings.fields import Identifier


def build(name: str, handlers: int) -> Domain:
    domain = Domain(name)

    @domain.aggregate
    class Entry:
        pass

    @domain.event(part_of=Entry)
    class EntryMade:
        entry_id: Identifier(required=True)

    for i in range(handlers):

        def made(self: Any, event: Any) -> None:
            """Never run: the rows are written directly."""

        domain.event_handler(part_of=Entry, stream_category="entry")(
            type(f"Handler{i}", (), {"made": handle(EntryMade)(made)})
        )
    return domain


def rows(domain: Domain, n: int, status: str, confirmed: bool, now: datetime) -> Iterator[dict[str, Any]]:
    type_ = next(iter(domain.bus.routes.types))
    for _ in range(n):
        message_id = uuid.uuid4().hex
        yield {
            "message_id": message_id,
            "domain": domain.name,
            "stream": f"{domain.name}::entry-{message_id}",
            "type": type_,
            "envelope": json.dumps({"id": message_id, "type": type_}),
            "status": status,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now - timedelta(seconds=600),
            "published_at": now - timedelta(seconds=300) if status == "published" else None,
            "confirmed_at": now if confirmed else None,
        }


def measure(domain: Domain, celery: Any, label: str) -> None:
    read_status(domain, celery, workers=False)  # connections opened
    readings = [read_status(domain, celery, workers=False) for _ in range(20)]
    database = [r.cost.database_ms for r in readings]
    broker = [r.cost.broker_ms for r in readings]
    statements = readings[-1].cost.statements
    spread = f"{statistics.median(database):.1f} ({max(database):.1f})"
    print(f"| {label} | {statements} | {spread} | {statistics.median(broker):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--handlers", type=int, default=5)
    args = parser.parse_args()
    with scratch_database() as url, redis_prefix() as prefix:
        domain = build(f"cost_{uuid.uuid4().hex[:6]}", args.handlers)
        domain.config["databases"]["default"] = {"provider": "postgresql", "database_uri": url}
        domain.config["event_store"] = {"provider": "postgresql"}
        domain.config["brokers"]["default"] = {"provider": "redis", "url": REDIS_URL}
        domain.init()
        domain.create_tables()
        celery = create_celery_app(domain, broker_transport_options={"global_keyprefix": prefix})
        table, now = domain.storage.default.outbox_table, datetime.now(UTC)
        with domain.storage.default.engine.begin() as conn:
            for status, n, confirmed in (("published", args.rows, True), ("published", 1000, False)):
                batch = list(rows(domain, n, status, confirmed, now))
                for i in range(0, len(batch), 10_000):
                    conn.execute(table.insert(), batch[i : i + 10_000])
            conn.execute(table.insert(), list(rows(domain, 500, "pending", False, now)))
            conn.exec_driver_sql("ANALYZE")
        head = f"{args.rows:,} rows, {args.handlers} handlers"
        print(f"| {head} | statements | database ms median (max) | broker ms |")
        print("|---|---|---|---|")
        measure(domain, celery, "audit running: 1,000 unconfirmed, 500 pending")
        with domain.storage.default.engine.begin() as conn:
            conn.execute(sa.update(table).values(confirmed_at=None))
            conn.exec_driver_sql("ANALYZE")
        measure(domain, celery, f"audit not running: {args.rows + 1000:,} unconfirmed, 500 pending")
        domain.dispose()


if __name__ == "__main__":
    main()
