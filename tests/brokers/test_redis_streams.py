"""What only the Redis Streams adapter promises: a dead consumer's entries are reclaimed."""

from __future__ import annotations

import uuid

import pytest

from tests.brokers.conftest import redis_cleanup
from tests.services import REDIS_URL, require_redis
from tests.waiting import wait_until
from tidings.domain.brokers import broker_class


@pytest.fixture
def broker():
    require_redis()
    prefix = f"tidings-test-{uuid.uuid4().hex[:8]}:"
    adapter = broker_class("redis")(
        "streams", None, {"url": REDIS_URL, "key_prefix": prefix, "claim_idle_ms": 200}
    )
    yield adapter
    adapter.close()
    redis_cleanup(prefix)


def test_a_message_left_pending_by_a_dead_consumer_goes_to_the_next_reader(broker, stream):
    # given a consumer that read a message and died before acknowledging it
    broker.ensure_group(stream, "g")
    broker.publish(stream, {"n": 1})
    [(identifier, message)] = broker.read(stream, "g", 10)
    broker.close()
    # when another consumer of the group reads once claim_idle_ms (200 ms here) has passed
    survivor = broker_class("redis")("streams", None, broker.settings)
    try:
        reclaimed = wait_until(
            lambda: survivor.read(stream, "g", 10), timeout=5, message="the pending entry to be reclaimed"
        )
        # then it gets the same entry, and acknowledging it empties the group
        assert reclaimed == [(identifier, message)]
        assert survivor.consumer != broker.consumer
        assert survivor.ack(stream, "g", identifier) is True
        assert survivor.read(stream, "g", 10) == []
    finally:
        survivor.close()


def test_a_pending_message_is_not_reclaimed_before_claim_idle_ms(broker, stream):
    broker.ensure_group(stream, "g")
    broker.publish(stream, {"n": 1})
    assert len(broker.read(stream, "g", 10)) == 1
    other = broker_class("redis")("streams", None, broker.settings.with_options(claim_idle_ms=60_000))
    try:
        assert other.read(stream, "g", 10) == []
    finally:
        other.close()


def test_a_stream_with_maxlen_keeps_about_that_many_entries(broker, stream):
    trimmed = broker_class("redis")("streams", None, broker.settings.with_options(maxlen=10))
    try:
        for i in range(1000):
            trimmed.publish(stream, {"n": i})
        kept = trimmed.health_stats()["message_counts"][stream]
        # approximate trimming (MAXLEN ~) keeps whole radix-tree nodes: at least 10, far below 1000
        assert 10 <= kept < 1000
        assert broker.read(stream, "g", 1000)[-1][1] == {"n": 999}
    finally:
        trimmed.close()
