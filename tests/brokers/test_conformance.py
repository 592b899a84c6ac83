"""The broker port's contract, run against every adapter (see conftest.py)."""

from __future__ import annotations

import pytest

from tests.brokers.conftest import requires
from tests.waiting import wait_until
from tidings.domain.brokers import BrokerCapability as Cap
from tidings.domain.errors import BrokerConnectionError


def read_all(broker, stream, group, n=100):
    """Everything the group can read now (a remote queue may take a moment to route)."""
    return wait_until(
        lambda: broker.read(stream, group, n), timeout=5, message=f"{group} to read from {stream}"
    )


def test_publish_returns_an_identifier(broker, stream):
    identifier = broker.publish(stream, {"n": 1})
    assert isinstance(identifier, str) and identifier


def test_a_group_reads_what_was_published_after_it_was_created(broker, stream):
    requires(broker, Cap.SIMPLE_QUEUING)
    broker.ensure_group(stream, "g1")
    sent = [broker.publish(stream, {"n": i}) for i in range(3)]
    got = read_all(broker, stream, "g1")
    got += broker.read(stream, "g1", 100)  # anything routed late
    assert sorted(m["n"] for _, m in got) == [0, 1, 2]
    assert len({i for i, _ in got}) == len(sent)


def test_every_group_receives_every_message(broker, stream):
    requires(broker, Cap.SIMPLE_QUEUING)
    broker.ensure_group(stream, "billing")
    broker.ensure_group(stream, "shipping")
    broker.publish(stream, {"order": "o1"})
    for group in ("billing", "shipping"):
        assert [m for _, m in read_all(broker, stream, group)] == [{"order": "o1"}]


def test_read_returns_at_most_n_messages(broker, stream):
    requires(broker, Cap.SIMPLE_QUEUING)
    broker.ensure_group(stream, "g")
    for i in range(5):
        broker.publish(stream, {"n": i})
    wait_until(
        lambda: broker.health_stats()["message_counts"].get(stream) == 5,
        timeout=5,
        message="5 messages on the stream",
    )
    first = broker.read(stream, "g", 2)
    rest = broker.read(stream, "g", 10)
    assert len(first) == 2 and len(rest) == 3


def test_a_message_done_by_a_group_is_not_read_again(broker, stream):
    requires(broker, Cap.SIMPLE_QUEUING)
    broker.ensure_group(stream, "g")
    broker.publish(stream, {"n": 1})
    [(identifier, _)] = read_all(broker, stream, "g")
    if broker.has_capability(Cap.ACK):
        assert broker.ack(stream, "g", identifier) is True
    assert broker.read(stream, "g", 10) == []


def test_an_acknowledgement_counts_once(broker, stream):
    requires(broker, Cap.ACK)
    broker.ensure_group(stream, "g")
    broker.publish(stream, {"n": 1})
    [(identifier, _)] = read_all(broker, stream, "g")
    assert broker.ack(stream, "g", identifier) is True
    assert broker.ack(stream, "g", identifier) is False


def test_a_rejected_message_is_delivered_again(broker, stream):
    requires(broker, Cap.NACK)
    broker.ensure_group(stream, "g")
    broker.publish(stream, {"n": 1})
    [(identifier, message)] = read_all(broker, stream, "g")
    assert broker.nack(stream, "g", identifier) is True
    assert read_all(broker, stream, "g") == [(identifier, message)]


def test_messages_come_back_in_publish_order(broker, stream):
    requires(broker, Cap.ORDERED_MESSAGING)
    broker.ensure_group(stream, "g")
    for i in range(10):
        broker.publish(stream, {"n": i})
    assert [m["n"] for _, m in broker.read(stream, "g", 10)] == list(range(10))


def test_a_live_broker_answers_ping_and_reports_its_health(broker, stream):
    requires(broker, Cap.CONSUMER_GROUPS)
    broker.ensure_group(stream, "g")
    broker.publish(stream, {"n": 1})
    assert broker.ping() is True
    stats = wait_until(
        lambda: (s := broker.health_stats())["message_counts"].get(stream) and s,
        timeout=5,
        message="the published message in health_stats",
    )
    assert stats["healthy"] is True and stats["message_counts"][stream] == 1
    assert stats["consumer_groups"][stream]
    assert stats["dlq_depth"] == 0


def test_capability_tiers_include_every_lower_tier(broker):
    tiers = [
        Cap.BASIC_PUBSUB,
        Cap.SIMPLE_QUEUING,
        Cap.RELIABLE_MESSAGING,
        Cap.ORDERED_MESSAGING,
        Cap.ENTERPRISE_STREAMING,
    ]
    held = [broker.has_capability(t) for t in tiers]
    assert held[0] and held == sorted(held, reverse=True)  # True... then False...
    assert broker.has_any_capability(Cap.ACK | Cap.PUBLISH)


@pytest.mark.parametrize(
    "provider, url",
    [
        ("redis", "redis://:s3cret@127.0.0.1:1/0"),
        ("redis_pubsub", "redis://:s3cret@127.0.0.1:1/0"),
        ("celery", "amqp://guest:s3cret@127.0.0.1:1//"),
        ("celery", "redis://:s3cret@127.0.0.1:1/0"),
    ],
)
def test_an_unreachable_broker_raises_broker_connection_error_with_the_password_masked(provider, url):
    from tidings.domain.brokers import broker_class

    adapter = broker_class(provider)("down", None, {"url": url})
    assert adapter.ping() is False
    with pytest.raises(BrokerConnectionError) as caught:
        adapter.publish("s", {"n": 1})
    assert "127.0.0.1:1" in str(caught.value) and "s3cret" not in str(caught.value)
    assert "***" in str(caught.value)
    assert adapter.health_stats()["healthy"] is False


def test_publishes_from_several_threads_all_arrive(broker, stream):
    requires(broker, Cap.SIMPLE_QUEUING)
    from concurrent.futures import ThreadPoolExecutor

    broker.ensure_group(stream, "g")
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(lambda i: broker.publish(stream, {"n": i}), range(80)))
    assert len(set(ids)) == 80
    got: list = []
    wait_until(
        lambda: got.extend(broker.read(stream, "g", 100)) or len(got) >= 80,
        timeout=5,
        message="80 messages read",
    )
    assert sorted(m["n"] for _, m in got) == list(range(80))
