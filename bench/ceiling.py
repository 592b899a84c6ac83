"""Scenario 1's app: a bare Celery no-op task on Tidings' own Celery settings (celeryconfig).

The task INCRs a Redis counter and stamps the first and last completion time, so the drain
rate is measured by the worker itself. Configured from BENCH_BROKER_URL and BENCH_KEYPREFIX.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

QUEUE = os.environ.get("BENCH_QUEUE", "ceiling.noop")
PREFIX = os.environ.get("BENCH_KEYPREFIX", "")

celery = Celery("ceiling", set_as_current=False)
celery.config_from_object("tidings.celeryconfig")
celery.conf.update(
    broker_url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
    broker_transport_options={**celery.conf.broker_transport_options, "global_keyprefix": PREFIX},
    task_default_queue=QUEUE,
)
_client: redis.Redis | None = None


def counter() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    return _client


@celery.task(name="ceiling.noop", acks_late=True)
def noop() -> None:
    now = time.time()
    pipe = counter().pipeline(transaction=False)
    pipe.incr(f"{PREFIX}count").setnx(f"{PREFIX}first", now).set(f"{PREFIX}last", now)
    pipe.execute()
