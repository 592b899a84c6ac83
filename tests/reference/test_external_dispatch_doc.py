"""External dispatch (the reference study, protean.md §1, §3 and §4.5): events declared
`published=True` go, through the outbox, to each broker of `[outbox] external_brokers`, on
the stream named after their category, as the stripped envelope (`to_external_dict`: no
checksum, no event-store positions; `id` is the consumer's dedup key). A service outside the
domain subscribes to them with its own `@domain.subscriber(stream=..., broker=...)`.

Both domains here talk to one real Redis (the `redis` streams adapter).
"""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from tests.services import REDIS_URL, require_redis
from tidings import ConfigurationError, Domain, handle
from tidings.app.progress import deliveries
from tidings.app.testing import eager_app
from tidings.fields import Identifier, Integer
from tidings.tasks.pump import pump_task_name
from tidings.tasks.relay import relay_now


@pytest.fixture
def prefix():
    require_redis()
    value = f"tidings-ext-{uuid.uuid4().hex[:8]}:"
    yield value
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{value}*"))
    if keys:
        client.delete(*keys)


def shop(prefix: str) -> Domain:
    """The publishing domain: `OrderPlaced` is published, `OrderNoted` stays inside."""
    domain = Domain("shop")
    domain.config["brokers"]["events"] = {"provider": "redis", "url": REDIS_URL, "key_prefix": prefix}
    domain.config["outbox"] = {"external_brokers": ["events"]}

    @domain.aggregate
    class Order:
        total: Integer(required=True)

    @domain.event(part_of=Order, published=True)
    class OrderPlaced:
        order_id: Identifier(required=True)
        total: Integer(required=True)

    @domain.event(part_of=Order)
    class OrderNoted:
        order_id: Identifier(required=True)

    handled: list[str] = []

    @domain.event_handler(part_of=Order)
    class Internal:
        @handle(OrderPlaced)
        def placed(self, event: OrderPlaced) -> None:
            handled.append("placed")

        @handle(OrderNoted)
        def noted(self, event: OrderNoted) -> None:
            handled.append("noted")

    domain.handled = handled  # type: ignore[attr-defined]
    return domain


def billing(prefix: str) -> Domain:
    """Another service: it knows only the broker and the stream."""
    domain = Domain("billing")
    domain.config["brokers"]["events"] = {"provider": "redis", "url": REDIS_URL, "key_prefix": prefix}
    received: list[dict] = []

    @domain.subscriber(stream="shop::order", broker="events")
    class Invoicer:
        def __call__(self, payload: dict) -> None:
            received.append(payload)

    domain.received = received  # type: ignore[attr-defined]
    return domain


def test_a_published_event_reaches_a_subscriber_in_another_domain_and_an_unpublished_one_does_not(prefix):
    publisher = shop(prefix).init()
    consumer = billing(prefix).init()
    publisher_app, consumer_app = eager_app(publisher), eager_app(consumer)
    Order = publisher.registry["aggregate"]["Order"]
    OrderPlaced, OrderNoted = (
        publisher.registry["event"]["OrderPlaced"],
        publisher.registry["event"]["OrderNoted"],
    )
    with publisher.domain_context():
        order = Order(total=42)
        order.raise_(OrderPlaced(order_id=order.id, total=42))
        order.raise_(OrderNoted(order_id=order.id))
        publisher.repository_for(Order).add(order)
        relay_now(publisher_app, publisher)  # eager mode relays at commit; this one finds nothing left
    assert sorted(publisher.handled) == ["noted", "placed"]  # the domain's own handlers: unchanged

    # on the broker: one entry, on the category's stream
    client = redis.Redis.from_url(REDIS_URL)
    entries = client.xrange(f"{prefix}shop::order")
    assert len(entries) == 1
    assert publisher.storage.outbox.status().pending == 0
    progress = deliveries(publisher)  # the external row calls for no handler run here
    assert (progress.due, progress.done) == (2, 2) and progress.settled()

    # the other domain's subscriber, through its consumer group (the pump a worker runs)
    with consumer.domain_context():
        consumer_app.tasks[pump_task_name(consumer, consumer.registry["subscriber"]["Invoicer"])].apply()
    [payload] = consumer.received
    assert payload["type"] == "Shop.OrderPlaced.v1"
    assert payload["data"] == {"order_id": order.id, "total": 42}
    assert payload["stream"] == f"shop::order-{order.id}"
    assert "checksum" not in payload  # the reference's stripped envelope
    assert "global_position" not in payload["metadata"] and "position" not in payload["metadata"]
    [stored] = [m for m in publisher.read_messages("shop::order") if m.type == "Shop.OrderPlaced.v1"]
    assert payload["id"] == stored.id  # the consumer's dedup key is the event's id
    assert json.loads(entries[0][1][b"data"])["id"] == stored.id


def test_a_failing_external_broker_retries_its_row_only(prefix):
    publisher = shop(prefix).init()
    publisher_app = eager_app(publisher)
    Order, OrderPlaced = publisher.registry["aggregate"]["Order"], publisher.registry["event"]["OrderPlaced"]
    broker = publisher.brokers["events"]
    real_publish, calls = broker.publish, []

    def down(stream: str, message: dict) -> str:
        calls.append(stream)
        raise ConnectionError("redis is down")

    broker.publish = down  # type: ignore[method-assign]
    with publisher.domain_context():
        order = Order(total=1)
        order.raise_(OrderPlaced(order_id=order.id, total=1))
        publisher.repository_for(Order).add(order)
    assert publisher.handled == ["placed"]  # the internal row went out
    status = publisher.storage.outbox.status()
    assert (status.pending, status.failing) == (1, 1)  # the external row waits, with its error
    broker.publish = real_publish  # type: ignore[method-assign]
    with publisher.storage.default.lock:  # due now instead of after the backoff
        for row in publisher.storage.default.outbox:
            row["next_attempt_at"] = row["created_at"]
    assert relay_now(publisher_app, publisher) == 1
    assert publisher.handled == ["placed"]  # the handlers were not sent it again
    assert len(redis.Redis.from_url(REDIS_URL).xrange(f"{prefix}shop::order")) == 1
    assert calls == ["shop::order"]


def test_external_brokers_must_be_configured():
    domain = Domain("shop")
    domain.config["outbox"] = {"external_brokers": ["nowhere"]}
    with pytest.raises(ConfigurationError, match="broker 'nowhere' is not configured"):
        domain.init()
