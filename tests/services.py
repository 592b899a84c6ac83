"""Real services for tests: reachable, or skipped with a reason — failed instead when CI=true."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import pytest

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
BROKER_URL = os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")


def reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=2
        ):
            return True
    except OSError:
        return False


def require(name: str, url: str, default_port: int) -> None:
    """Skip when the service is down; in CI (CI=true) fail, so CI never passes by skipping."""
    if reachable(url, default_port):
        return
    unavailable(f"{name} is not reachable at {urlparse(url).hostname}:{urlparse(url).port or default_port}")


def unavailable(reason: str) -> None:
    """Skip the test for `reason`; in CI (CI=true) fail it instead."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing service fails the run)")
    pytest.skip(reason)


def require_postgres() -> None:
    require("PostgreSQL", DATABASE_URL, 5432)


def require_redis() -> None:
    require("Redis", REDIS_URL, 6379)


def require_rabbitmq() -> None:
    require("RabbitMQ", BROKER_URL, 5672)
