"""Scenario 0: the naive Celery + outbox pipeline (perf-baseline.md section 5), as a baseline.

Business row + outbox row per transaction; a relay loop claims 500 rows with
`FOR UPDATE SKIP LOCKED`, sends one task per event, marks them published; the handler task
does one UPDATE. No inbox, no unit of work, no retries policy, no DLQ: what a careful team
writes by hand in an afternoon. Configured from BENCH_DATABASE_URL, BENCH_BROKER_URL and
BENCH_KEYPREFIX; `python -m bench.naive relay` runs the relay loop.
"""

from __future__ import annotations

import json
import os
import sys
import time

import sqlalchemy as sa
from celery import Celery
from celery.signals import worker_process_init

QUEUE = "naive.order_placed"
SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_orders (
    id bigserial PRIMARY KEY, handled integer NOT NULL DEFAULT 0, handled_at double precision);
CREATE TABLE IF NOT EXISTS bench_outbox (
    id bigserial PRIMARY KEY, payload text NOT NULL, published_at timestamptz);
CREATE INDEX IF NOT EXISTS bench_outbox_pending ON bench_outbox (id) WHERE published_at IS NULL;
"""
CLAIM = sa.text(
    "SELECT id, payload FROM bench_outbox WHERE published_at IS NULL "
    "ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED"
)
MARK = sa.text("UPDATE bench_outbox SET published_at = now() WHERE id = ANY(:ids)")
APPLY = sa.text(
    "UPDATE bench_orders SET handled = handled + 1, "
    "handled_at = extract(epoch from clock_timestamp()) WHERE id = :id"
)

celery = Celery("naive", set_as_current=False)
celery.conf.update(
    broker_url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
    broker_transport_options={"global_keyprefix": os.environ.get("BENCH_KEYPREFIX", "")},
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    task_default_queue=QUEUE,
)
_engine: sa.Engine | None = None


def engine() -> sa.Engine:
    global _engine
    if _engine is None:
        url = os.environ["BENCH_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg2://", 1)
        _engine = sa.create_engine(url)
    return _engine


@worker_process_init.connect(weak=False)
def _after_fork(**_) -> None:
    global _engine
    _engine = None  # never share a connection pool across a fork


@celery.task(name="naive.order_placed", acks_late=True)
def order_placed(event: dict) -> None:
    with engine().begin() as conn:
        conn.execute(APPLY, {"id": event["order_id"]})


def create_schema(eng: sa.Engine) -> None:
    with eng.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS bench_orders, bench_outbox")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)


def place_order(eng: sa.Engine) -> int:
    """One transaction: the business row and its outbox row. Returns the order id."""
    with eng.begin() as conn:
        order_id = conn.exec_driver_sql("INSERT INTO bench_orders DEFAULT VALUES RETURNING id").scalar_one()
        conn.execute(
            sa.text("INSERT INTO bench_outbox (payload) VALUES (:p)"),
            {"p": json.dumps({"type": "OrderPlaced", "order_id": order_id})},
        )
    return order_id


def relay_once(eng: sa.Engine, producer, batch: int = 500) -> int:
    with eng.begin() as conn:
        rows = conn.execute(CLAIM, {"n": batch}).all()
        for row in rows:
            celery.send_task(
                "naive.order_placed", args=[json.loads(row.payload)], queue=QUEUE, producer=producer
            )
        if rows:
            conn.execute(MARK, {"ids": [row.id for row in rows]})
    return len(rows)


def relay_forever(eng: sa.Engine) -> None:
    with celery.producer_or_acquire() as producer:
        while True:
            if relay_once(eng, producer) == 0:
                time.sleep(0.01)


if __name__ == "__main__" and sys.argv[1:] == ["relay"]:
    relay_forever(engine())
