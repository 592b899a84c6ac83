"""Subscribers on the engine: consumed through their broker's consumer group (a pump task
for `redis`/`redis_pubsub`, the subscriber's queue for `celery`), with the handlers'
retries, DLQ and handle_error."""

from __future__ import annotations

import uuid

import pytest
from kombu import Connection, Queue

from tests.engine import feeds
from tests.engine.conftest import running_worker
from tests.engine.feeds import POISON, build_feeds, welcomed
from tests.services import BROKER_URL, REDIS_URL, require_rabbitmq
from tests.waiting import wait_until
from tidings.app.bootstrap import create_celery_app
from tidings.app.testing import eager_app
from tidings.tasks import dlq
from tidings.tasks.naming import dlq_name
from tidings.tasks.pump import pump_task_name

QUEUE = "feeds.signups"

pytestmark = pytest.mark.parametrize("provider", ["memory"], indirect=True)


@pytest.fixture(autouse=True)
def _quiet(caplog):
    feeds.ERRORS_SEEN.clear()
    caplog.set_level("WARNING")


def feed_settings(kind: str, prefix: str) -> dict:
    return {"provider": kind, "url": REDIS_URL, "key_prefix": prefix}


@pytest.mark.parametrize("kind", ["redis", "redis_pubsub"])
def test_a_subscriber_consumes_its_redis_stream_through_a_pump(use_provider, redis_app, redis_prefix, kind):
    domain = use_provider(build_feeds(feed_settings(kind, redis_prefix)))
    celery = redis_app(domain)
    with running_worker(celery), domain.domain_context():
        for user in ("ada", "bob", "cy"):
            domain.brokers.publish("signups", {"user": user}, broker="feed")
        wait_until(
            lambda: welcomed(domain) == {"ada": 1, "bob": 1, "cy": 1}, message="every signup welcomed once"
        )
    stats = domain.brokers["feed"].health_stats()
    assert stats["message_counts"] == {"signups": 3}
    if kind == "redis":  # the group acknowledged everything it handed on
        assert stats["consumer_groups"]["signups"] == {QUEUE: {"pending": 0}}


def test_a_failing_subscriber_is_retried_then_dead_lettered_with_its_reason(
    use_provider, redis_app, redis_prefix
):
    domain = use_provider(build_feeds(feed_settings("redis", redis_prefix)))
    celery = redis_app(domain)
    with running_worker(celery), domain.domain_context():
        domain.brokers.publish("signups", {"user": POISON}, broker="feed")
        domain.brokers.publish("signups", {"user": "ada"}, broker="feed")
        [entry] = wait_until(lambda: dlq.list_entries(celery, QUEUE), message="a DLQ entry")
        wait_until(lambda: welcomed(domain) == {"ada": 1}, message="the good message handled")
    assert entry["body"]["payload"] == {"user": POISON}
    assert entry["attempts"] == 3  # max_retries 2, plus the first attempt
    assert entry["error_type"] == "MailRefused" and "refused" in entry["error_message"]
    assert entry["failed_at"]
    assert feeds.ERRORS_SEEN == ["MailRefused"] * 3


def test_a_backlog_is_drained_by_one_pump_run_and_an_idle_pump_reads_once(use_provider, redis_prefix):
    # given messages published while no engine runs (they wait on the Redis stream)
    domain = use_provider(build_feeds(feed_settings("redis", redis_prefix)))
    with domain.domain_context():
        for i in range(5):
            domain.brokers.publish("signups", {"user": f"u{i}"}, broker="feed")
    assert welcomed(domain) == {}
    celery = eager_app(domain)
    pump = celery.tasks[pump_task_name(domain, domain.registry["subscriber"]["Signups"])]
    # when one pump runs: batches of messages_per_tick=2 come back full, so it re-schedules
    assert pump.apply().get() == 2
    assert welcomed(domain) == {f"u{i}": 1 for i in range(5)}
    # then an idle pump reads nothing and does not re-schedule itself
    assert pump.apply().get() == 0


def test_a_message_published_twice_with_one_id_is_applied_once(use_provider, redis_prefix):
    domain = use_provider(build_feeds(feed_settings("redis", redis_prefix)))
    with domain.domain_context():
        domain.brokers.publish("signups", {"user": "ada", "id": "m-1"}, broker="feed")
        domain.brokers.publish("signups", {"user": "ada", "id": "m-1"}, broker="feed")
    celery = eager_app(domain)
    celery.tasks[pump_task_name(domain, domain.registry["subscriber"]["Signups"])].apply()
    assert welcomed(domain) == {"ada": 1}  # the inbox keyed by the message id


def test_a_subscriber_on_a_celery_broker_gets_messages_in_its_rabbitmq_queue(use_provider):
    require_rabbitmq()
    name = f"feeds_{uuid.uuid4().hex[:8]}"  # unique queues on the shared RabbitMQ
    domain = build_feeds({"provider": "celery", "url": BROKER_URL}, name=name)
    domain.config["brokers"]["default"] = {"provider": "amqp", "url": BROKER_URL}
    domain = use_provider(domain)
    celery = create_celery_app(domain)
    queue = f"{name}.signups"
    try:
        assert pump_task_name(domain, domain.registry["subscriber"]["Signups"]) not in celery.tasks
        with running_worker(celery), domain.domain_context():
            domain.brokers.publish("signups", {"user": "ada"}, broker="feed")
            domain.brokers.publish("signups", {"user": POISON}, broker="feed")
            wait_until(lambda: welcomed(domain) == {"ada": 1}, message="ada welcomed")
            [entry] = wait_until(lambda: dlq.list_entries(celery, queue), message="a DLQ entry")
        assert entry["attempts"] == 3 and entry["error_type"] == "MailRefused"
    finally:
        with Connection(BROKER_URL) as conn:
            for q in (queue, dlq_name(queue), f"{name}.outbox"):
                Queue(q, routing_key=q)(conn.default_channel).delete()


def test_a_burst_of_publishes_sends_one_wake_up_while_one_is_pending(use_provider, redis_app, redis_prefix):
    domain = use_provider(build_feeds(feed_settings("redis", redis_prefix)))
    celery = redis_app(domain)  # no worker: the wake-ups stay in the subscriber's queue
    with domain.domain_context():
        for user in ("ada", "bob", "cy"):
            domain.brokers.publish("signups", {"user": user}, broker="feed")
    with celery.connection_for_write() as conn:
        _, waiting, _ = Queue(QUEUE, routing_key=QUEUE)(conn.default_channel).queue_declare()
    assert waiting == 1
    # once the pump has woken up (released the wake-up), the next publish sends one again
    feed = domain.brokers["feed"]
    feed.release_wakeup("signups", QUEUE)
    assert feed.claim_wakeup("signups", QUEUE, 60) is True
    assert feed.claim_wakeup("signups", QUEUE, 60) is False
