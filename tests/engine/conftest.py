from __future__ import annotations

import uuid
from contextlib import contextmanager

import pytest
import redis
from celery.contrib.testing.worker import start_worker

from tests.services import REDIS_URL, require_redis
from tidings.app.bootstrap import create_celery_app

FAST = {  # test timings: crash recovery and retries in seconds, not minutes
    "visibility_timeout": 4,
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}


@pytest.fixture
def redis_prefix():
    """A key prefix of this test's own on the shared Redis; its keys are deleted afterwards."""
    require_redis()
    prefix = f"tidings-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def redis_app(redis_prefix):
    """Build a Celery app for a domain on the real Redis, isolated by key prefix."""

    def build(domain, **overrides):
        domain.config["brokers"]["default"] = {"provider": "redis", "url": REDIS_URL}
        domain.init()  # again if it was: the settings are frozen, the broker is part of them
        return create_celery_app(
            domain,
            broker_transport_options={**FAST, "global_keyprefix": redis_prefix},
            **{"allow_unsafe": ["visibility_timeout"], **overrides},  # FAST's 4 s is below the bound
        )

    return build


@contextmanager
def running_worker(celery, pool: str = "threads", concurrency: int = 2):
    with start_worker(
        celery,
        pool=pool,
        concurrency=concurrency,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=30,
    ) as worker:
        yield worker
