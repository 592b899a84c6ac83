"""Nothing leaves before the commit: a broker publish inside a unit of work is sent once it
committed, and a rollback sends nothing (issue 10, item 10). Inline and real Redis."""

from __future__ import annotations

import uuid

import pytest

from tests.brokers.conftest import redis_cleanup
from tests.services import REDIS_URL, require_redis
from tidings import Domain


class Refused(Exception):
    pass


@pytest.fixture(params=["inline", "redis"])
def domain(request):
    domain = Domain(f"pub_{uuid.uuid4().hex[:6]}")
    domain.config.update(event_processing="sync", command_processing="sync", message_processing="sync")
    prefix = f"tidings-test-{uuid.uuid4().hex[:8]}:"
    if request.param == "redis":
        require_redis()
        domain.config["brokers"]["default"] = {
            "provider": "redis",
            "url": REDIS_URL,
            "key_prefix": prefix,
            "claim_idle_ms": 200,
        }
    domain.init()
    broker = domain.brokers["default"]
    yield domain
    broker.close()
    if request.param == "redis":
        redis_cleanup(prefix)


def test_a_publish_inside_a_unit_of_work_leaves_only_after_the_commit(domain):
    stream = f"s-{uuid.uuid4().hex[:6]}"
    broker = domain.brokers["default"]
    broker.ensure_group(stream, "early")  # a reader that was there before the publish
    with domain.unit_of_work():
        assert broker.publish(stream, {"n": 1}) == ""  # staged: no broker id yet
        domain.brokers.publish(stream, {"n": 2})
        assert broker.read(stream, "early", 10) == []  # nothing has left
    assert [m for _, m in broker.read(stream, "early", 10)] == [{"n": 1}, {"n": 2}]


def test_a_rollback_sends_nothing(domain):
    stream = f"s-{uuid.uuid4().hex[:6]}"
    broker = domain.brokers["default"]
    broker.ensure_group(stream, "early")
    with pytest.raises(Refused), domain.unit_of_work():
        broker.publish(stream, {"n": 1})
        raise Refused
    assert broker.read(stream, "early", 10) == []
    broker.publish(stream, {"n": 2})  # outside a unit of work: sent at once, with its id
    assert [m for _, m in broker.read(stream, "early", 10)] == [{"n": 2}]


def test_a_publish_outside_a_unit_of_work_is_sent_at_once_and_returns_its_id(domain):
    stream = f"s-{uuid.uuid4().hex[:6]}"
    broker = domain.brokers["default"]
    broker.ensure_group(stream, "early")
    identifier = broker.publish(stream, {"n": 1})
    assert identifier
    assert [i for i, _ in broker.read(stream, "early", 10)] == [identifier]
