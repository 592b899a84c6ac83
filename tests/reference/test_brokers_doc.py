"""The reference's brokers document (`../shared/reference/brokers.txt`), snippet by snippet.

Each snippet is the document's, with `protean` replaced by `tidings` in the imports; where a
snippet leaves a value open (`msg_id`, `data`) or stops at a comment ("Send welcome email..."),
the test supplies the value or records what happened, and then checks what the document says.
The document's `domain.toml` is written next to the domain (`root_path`), its Redis URIs
pointed at the test Redis.
"""

from __future__ import annotations

import logging
import uuid

import pytest
import redis

from tests.services import REDIS_URL, require_redis
from tidings import Domain, handle
from tidings.exceptions import IncorrectUsageError

logger = logging.getLogger("tests.reference")

DOC_TOML = """
# Default broker configuration (required)
[brokers.default]
provider = "inline"
# Additional named brokers
[brokers.notifications]
provider = "redis_pubsub"
URI = "{redis}"
key_prefix = "{prefix}"
[brokers.analytics]
provider = "redis"
URI = "{redis}"
key_prefix = "{prefix}"
"""


@pytest.fixture
def prefix():
    value = f"tidings-doc-{uuid.uuid4().hex[:8]}:"
    yield value
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{value}*"))
    if keys:
        client.delete(*keys)


@pytest.fixture
def configured(tmp_path, prefix):
    """The document's configuration as a `domain.toml` next to the domain."""
    require_redis()
    (tmp_path / "domain.toml").write_text(DOC_TOML.format(redis=REDIS_URL, prefix=prefix))
    return tmp_path


def test_checking_capabilities(configured):
    domain = Domain(__name__, root_path=configured)
    domain.init()
    domain.brokers["default"].publish("orders", {"order_id": "o-1"})

    # --- the document's snippet ---
    from tidings.port.broker import BrokerCapabilities

    # Get a broker instance
    broker = domain.brokers["default"]
    # Check for specific capabilities
    if broker.has_capability(BrokerCapabilities.CONSUMER_GROUPS):
        # Use consumer group features
        messages = broker.read(stream="orders", consumer_group="order-processor")
    msg_id = messages[0][0]
    # Check for any of multiple capabilities
    if broker.has_any_capability(
        BrokerCapabilities.MESSAGE_ACKNOWLEDGEMENT | BrokerCapabilities.MESSAGE_REJECTION
    ):
        # Handle acknowledgments
        acked = broker.ack(stream="orders", message_id=msg_id)
    # --- end ---

    assert messages == [(msg_id, {"order_id": "o-1"})]
    assert acked is True
    assert broker.ack(stream="orders", message_id=msg_id) is False  # no longer pending
    # the tiers: the inline broker is RELIABLE_MESSAGING, the others what the document says
    assert broker.has_all_capabilities(BrokerCapabilities.RELIABLE_MESSAGING)
    assert BrokerCapabilities.ACK_NACK in BrokerCapabilities.RELIABLE_MESSAGING
    assert domain.brokers["analytics"].has_capability(BrokerCapabilities.ORDERED_MESSAGING)
    assert domain.brokers["notifications"].has_capability(BrokerCapabilities.SIMPLE_QUEUING)
    assert not domain.brokers["notifications"].has_any_capability(BrokerCapabilities.ACK_NACK)


def test_ack_and_nack_take_the_references_keywords_on_redis_streams(configured):
    domain = Domain(__name__, root_path=configured)
    domain.init()
    broker = domain.brokers["analytics"]
    broker.ensure_group("orders", "one")
    broker.ensure_group("orders", "two")
    broker.publish(stream="orders", message={"n": 1})
    [(msg_id, _)] = broker.read(stream="orders", consumer_group="one", no_of_messages=10)
    assert broker.nack(stream="orders", identifier=msg_id, consumer_group="one") is True
    assert broker.ack(stream="orders", message_id=msg_id) is True  # the one group holding it
    assert broker.ack(stream="orders", message_id=msg_id) is False
    broker.publish(stream="orders", message={"n": 2})
    [(second, _)] = broker.read("orders", "one")
    assert [i for i, _ in broker.read("orders", "two", 5)] == [msg_id, second]
    assert broker.ack("orders", "two", msg_id) is True  # Tidings' positional order
    with pytest.raises(IncorrectUsageError, match="pass consumer_group="):
        broker.ack(stream="orders", message_id=second)  # pending in both groups
    assert broker.ack(stream="orders", identifier=second, consumer_group="two") is True
    assert broker.ack(stream="orders", message_id=second) is True  # now only "one" holds it


def test_publishing_messages(configured):
    # --- the document's snippet ---
    from tidings import Domain

    domain = Domain(__name__, root_path=configured)  # root_path: where its domain.toml is
    domain.init()

    # Publish to the default broker
    first = domain.brokers.publish(
        stream="user-events",
        message={"event_type": "user.registered", "user_id": "123", "email": "user@example.com"},
    )
    # Publish to a specific broker
    second = domain.brokers["notifications"].publish(
        stream="notifications",
        message={"type": "email", "to": "user@example.com", "subject": "Welcome!"},
    )
    # --- end ---

    assert first and second
    assert domain.brokers["default"].read("user-events", "audit", 10)[0][1]["user_id"] == "123"
    assert domain.brokers["notifications"].read("notifications", "mailer", 10) == [
        (second, {"type": "email", "to": "user@example.com", "subject": "Welcome!"})
    ]


def test_consuming_messages_routes_by_event_type():
    sent = []

    # --- the document's snippet ---
    from tidings import Domain, handle

    domain = Domain(__name__)

    @domain.subscriber(stream="user-events")
    class UserEventSubscriber:
        @handle("user.registered")
        def send_welcome_email(self, message):
            # Process the message
            user_id = message["user_id"]
            email = message["email"]
            # Send welcome email...
            sent.append((user_id, email))

    # --- end ---

    domain.config["message_processing"] = "sync"  # the document's engine, inline
    domain.init()
    domain.brokers.publish(
        stream="user-events",
        message={"event_type": "user.registered", "user_id": "123", "email": "user@example.com"},
    )
    assert sent == [("123", "user@example.com")]


def test_error_handling(tmp_path, caplog):
    (tmp_path / "domain.toml").write_text(
        '[brokers.default]\nprovider = "redis"\nURI = "redis://127.0.0.1:1/0"\n'
    )
    domain = Domain(__name__, root_path=tmp_path)
    domain.init()
    data = {"n": 1}

    # --- the document's snippet ---
    from tidings.exceptions import BrokerConnectionError

    try:
        domain.brokers.publish(stream="events", message=data)
    except BrokerConnectionError as e:
        # Handle connection failures
        logger.error(f"Failed to publish: {e}")
        # Implement retry logic or fallback
    # --- end ---

    assert "Failed to publish" in caplog.text and "127.0.0.1:1" in caplog.text
    from tidings import BrokerConnectionError as top_level

    assert top_level is BrokerConnectionError


def test_health_checks(configured, capsys):
    domain = Domain(__name__, root_path=configured)
    domain.init()
    domain.brokers["analytics"].publish("orders", {"n": 1})

    for name in ("default", "analytics"):
        # --- the document's snippet ---
        # Check broker connection
        broker = domain.brokers[name]
        if broker.ping():
            print("Broker is healthy")
        # Get detailed health statistics
        health_stats = broker.health_stats()
        print(f"Healthy: {health_stats.get('healthy', False)}")
        print(f"Message counts: {health_stats.get('message_counts', {})}")
        # --- end ---

    out = capsys.readouterr().out
    assert out.count("Broker is healthy") == 2 and out.count("Healthy: True") == 2
    assert "Message counts: {'orders': 1}" in out


def test_an_unknown_handle_string_on_a_subscriber_is_free_form_and_any_catches_the_rest():
    seen = []
    domain = Domain(__name__)

    @domain.subscriber(stream="user-events")
    class Audit:
        @handle("user.registered")
        def registered(self, message):
            seen.append(("registered", message["user_id"]))

        @handle("$any")
        def everything(self, message):
            seen.append(("any", message.get("event_type") or message.get("type")))

    domain.config["message_processing"] = "sync"
    domain.init()
    domain.brokers.publish("user-events", {"event_type": "user.registered", "user_id": "1"})
    domain.brokers.publish("user-events", {"type": "user.deleted", "user_id": "2"})
    domain.brokers.publish("user-events", {"user_id": "3"})  # no type at all
    assert seen == [("registered", "1"), ("any", "user.registered"), ("any", "user.deleted"), ("any", None)]
