"""The domain's brokers: built at init from `[brokers.<name>]`, providers by entry point,
and subscribers called inline on publish when `message_processing = "sync"`."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

import tidings.domain.broker_registry as brokers_module
from tidings import Domain
from tidings.domain.brokers import BrokerCapability, mask_url
from tidings.domain.errors import ConfigurationError, IncorrectUsageError
from tidings.domain.inline_broker import InlineBroker


def build(tmp_path, message_processing="sync", **brokers) -> tuple[Domain, list]:
    domain = Domain("feeds", root_path=tmp_path)
    domain.config["message_processing"] = message_processing
    domain.config["brokers"].update(brokers)
    seen: list = []

    @domain.subscriber(stream="user-events")
    class Welcome:
        def __call__(self, payload):
            seen.append(("welcome", payload["user"]))

    @domain.subscriber(stream="user-events", broker="audit")
    class Audit:
        def __call__(self, payload):
            seen.append(("audit", payload["user"]))

    return domain, seen


def test_every_configured_broker_is_built_at_init_by_its_provider(tmp_path):
    domain, _ = build(
        tmp_path, audit={"provider": "inline"}, feed={"provider": "redis", "url": "redis://127.0.0.1:6379/0"}
    )
    domain.init()
    assert isinstance(domain.brokers["default"], InlineBroker)
    assert type(domain.brokers["feed"]).__name__ == "RedisStreamBroker"
    assert sorted(name for name, _ in domain.brokers) == ["audit", "default", "feed"]
    with pytest.raises(ConfigurationError, match="no broker named 'nope'"):
        domain.brokers["nope"]


def test_a_missing_default_broker_fails_at_init(tmp_path):
    domain, _ = build(tmp_path, audit={"provider": "inline"})
    del domain.config["brokers"]["default"]
    with pytest.raises(ConfigurationError, match="needs a 'default' broker"):
        domain.init()


def test_an_unknown_provider_fails_at_init_with_the_choices(tmp_path):
    domain, _ = build(tmp_path, audit={"provider": "kafka"})
    with pytest.raises(ConfigurationError, match="brokers.audit.provider': unknown provider 'kafka'"):
        domain.init()


class CarrierPigeon(InlineBroker):
    capabilities = BrokerCapability.BASIC_PUBSUB


def test_a_custom_adapter_registers_by_entry_point(tmp_path, monkeypatch):
    installed = brokers_module.entry_points(group=brokers_module.ENTRY_POINT_GROUP)
    pigeon = EntryPoint(
        name="pigeon", value=f"{__name__}:CarrierPigeon", group=brokers_module.ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(brokers_module, "entry_points", lambda group: [*installed, pigeon])
    domain, seen = build(tmp_path, audit={"provider": "pigeon"})
    domain.init()
    assert isinstance(domain.brokers["audit"], CarrierPigeon)
    domain.brokers["audit"].publish("user-events", {"user": "ada"})
    assert seen == [("audit", "ada")]


def test_sync_publish_calls_the_subscribers_of_that_stream_on_that_broker_inline(tmp_path):
    domain, seen = build(tmp_path, audit={"provider": "inline"})
    domain.init()
    with domain.domain_context():
        domain.brokers.publish("user-events", {"user": "ada"})
        domain.brokers["audit"].publish("user-events", {"user": "bob"})
        domain.brokers.publish("other-stream", {"user": "eve"})
    assert seen == [("welcome", "ada"), ("audit", "bob")]
    # the message is on the broker too, for any other consumer group
    assert domain.brokers["default"].health_stats()["message_counts"] == {"user-events": 1, "other-stream": 1}


def test_publish_external_is_an_alias_of_brokers_publish(tmp_path):
    domain, seen = build(tmp_path, audit={"provider": "inline"})
    domain.init()
    domain.publish_external("user-events", {"user": "ada"}, broker="audit")
    assert seen == [("audit", "ada")]


def test_async_publish_on_a_pushed_broker_needs_an_engine(tmp_path):
    domain, _ = build(tmp_path, "async", audit={"provider": "inline"})
    domain.init()
    with pytest.raises(IncorrectUsageError, match="no engine is attached"):
        domain.brokers.publish("user-events", {"user": "ada"})


def test_capabilities_are_checked_all_or_any():
    broker = InlineBroker("b", None, {})
    assert broker.has_capability(BrokerCapability.SIMPLE_QUEUING)
    assert broker.has_capability(BrokerCapability.ACK | BrokerCapability.NACK)
    assert not broker.has_capability(BrokerCapability.ACK | BrokerCapability.REPLAY)
    assert broker.has_any_capability(BrokerCapability.ACK | BrokerCapability.REPLAY)
    assert not broker.has_any_capability(BrokerCapability.REPLAY)


def test_a_password_in_a_broker_url_is_masked():
    assert mask_url("amqp://guest:s3cret@rabbit:5672//") == "amqp://guest:***@rabbit:5672//"
    assert mask_url("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert mask_url("redis://cache:6379/0") == "redis://cache:6379/0"


def test_a_subscriber_on_a_broker_that_is_not_configured_fails_at_init(tmp_path):
    domain, _ = build(tmp_path)  # Audit reads broker 'audit', which is not configured
    with pytest.raises(
        ConfigurationError,
        match=r"subscriber Audit: broker 'audit' is not "
        r"configured \(add \[brokers.audit\]",
    ):
        domain.init()


def test_brokers_before_init_is_a_usage_error(tmp_path):
    domain, _ = build(tmp_path, audit={"provider": "inline"})
    with pytest.raises(IncorrectUsageError, match=r"call domain.init\(\)"):
        domain.brokers.publish("user-events", {"user": "ada"})
