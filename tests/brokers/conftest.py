"""Every broker adapter, on its real service, isolated and cleaned up afterwards.

Each conformance test names the capability it needs with `requires(broker, capability)`:
an adapter without it is skipped for that reason (a capability skip, not a service skip:
it happens with CI=true too, while a missing service fails there).
"""

from __future__ import annotations

import uuid

import pytest
import redis
from kombu import Connection

from tests.services import BROKER_URL, REDIS_URL, require_rabbitmq, require_redis
from tidings.domain.brokers import Broker, BrokerCapability, broker_class


def requires(broker: Broker, capability: BrokerCapability) -> None:
    if not broker.has_capability(capability):
        pytest.skip(f"{type(broker).__name__} lacks {capability.name}")


def redis_cleanup(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _delete_group_queues(broker) -> None:
    with Connection(broker.url, transport_options=broker.transport_options) as conn:
        for stream, group in broker.declared:
            broker.group_queue(stream, group)(conn.default_channel).delete()


@pytest.fixture(params=["inline", "redis", "redis_pubsub", "celery-redis", "celery-rabbitmq"])
def broker(request):
    """A fresh adapter of each kind, named `conformance`, outside any domain."""
    kind = request.param
    prefix = f"tidings-test-{uuid.uuid4().hex[:8]}:"
    if kind == "inline":
        yield broker_class("inline")("conformance", None, {})
        return
    if kind in ("redis", "redis_pubsub"):
        require_redis()
        options = {"url": REDIS_URL, "key_prefix": prefix}
        if kind == "redis":  # streams hand an entry pending this long to the next reader
            options["claim_idle_ms"] = 200
        adapter = broker_class(kind)("conformance", None, options)
        yield adapter
        adapter.close()
        redis_cleanup(prefix)
        return
    if kind == "celery-redis":
        require_redis()
        adapter = broker_class("celery")(
            "conformance", None, {"url": REDIS_URL, "transport_options": {"global_keyprefix": prefix}}
        )
    else:
        require_rabbitmq()
        adapter = broker_class("celery")("conformance", None, {"url": BROKER_URL})
    yield adapter
    adapter.close()
    _delete_group_queues(adapter)
    if kind == "celery-redis":
        redis_cleanup(prefix)


@pytest.fixture
def stream():
    """A stream name no other test (or run) uses."""
    return f"conformance-{uuid.uuid4().hex[:8]}"
