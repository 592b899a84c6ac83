"""The relay's hot path: pipelined publishing that never marks unsent rows, and one pending
relay wake-up at a time instead of one per commit."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

import pytest
import redis

from tests.services import REDIS_URL, require_redis
from tests.shop import build_shop
from tidings.app.kick import RedisWake
from tidings.outbox.relay import Backoff, MemoryOutbox
from tidings.outbox.tables import PENDING, PUBLISHED
from tidings.tasks.naming import queue_name
from tidings.tasks.relay import relay_now


def memory_outbox(count: int) -> MemoryOutbox:
    now = datetime.now(UTC)
    rows = [
        {
            "id": i,
            "domain": "shop",
            "envelope": f'{{"n": {i}}}',
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "published_at": None,
            "last_error": None,
        }
        for i in range(count)
    ]
    return MemoryOutbox(rows, threading.Lock(), "shop")


class Buffered:
    """A publisher that buffers like a Redis pipeline; `flush` sends or fails."""

    def __init__(self, fail_flush: bool = False) -> None:
        self.buffer, self.sent, self.fail_flush = [], [], fail_flush

    def __call__(self, envelope: str) -> None:
        self.buffer.append(envelope)

    def flush(self) -> None:
        if self.fail_flush:
            raise ConnectionError("broker went away")
        self.sent += self.buffer
        self.buffer.clear()


def test_buffered_messages_are_flushed_before_their_rows_are_marked_published():
    outbox, publish = memory_outbox(3), Buffered()
    assert outbox.relay_batch(publish, 10, Backoff()) == 3
    assert len(publish.sent) == 3
    assert [r["status"] for r in outbox.rows] == [PUBLISHED] * 3


def test_a_failed_flush_leaves_the_whole_batch_pending_with_the_error_recorded():
    outbox = memory_outbox(3)
    assert outbox.relay_batch(Buffered(fail_flush=True), 10, Backoff()) == 0
    assert [r["status"] for r in outbox.rows] == [PENDING] * 3
    assert outbox.rows[0]["attempts"] == 1
    assert "broker went away" in outbox.rows[0]["last_error"]


def test_many_signals_leave_one_wake_up_and_a_wait_consumes_it():
    require_redis()
    key = f"tidings-test-{uuid.uuid4().hex[:8]}:relay-wake"
    wake, client = RedisWake(REDIS_URL, key), redis.Redis.from_url(REDIS_URL)
    try:
        for _ in range(5):
            wake.signal()
        assert client.llen(key) == 1
        assert wake.wait(1.0) is True
        assert wake.wait(0.05) is False  # nothing pending: it times out
    finally:
        client.delete(key)


def test_a_wait_on_an_unreachable_redis_raises_so_the_loop_falls_back_to_polling():
    with pytest.raises(redis.ConnectionError):
        RedisWake("redis://127.0.0.1:1/0", "unreachable:relay-wake").wait(0.05)


def test_many_commits_push_one_wake_up_and_one_relay_publishes_them_all(
    use_provider, redis_app, redis_prefix
):
    shop = use_provider(build_shop("async", "sync"))
    celery = redis_app(shop)
    client = redis.Redis.from_url(REDIS_URL)
    Order = shop.registry["aggregate"]["Order"]
    with shop.domain_context():
        orders = [shop.repository_for(Order).add(Order(book_id="b1", quantity=1)) for _ in range(5)]
        for order in orders:
            order.ship_order()
            shop.repository_for(Order).add(order)
    assert shop.engine.kicker.wait_idle(timeout=10)  # wake-ups are sent from the kicker's thread
    assert client.llen(f"{redis_prefix}tidings:{shop.name}:relay-wake") == 1
    assert not any(k.endswith(b".outbox") for k in client.keys(f"{redis_prefix}*"))  # no relay task

    handler = shop.registry["event_handler"]["ManageInventory"]
    assert relay_now(celery, shop) == 5
    assert client.llen(f"{redis_prefix}{queue_name(shop, handler)}") == 5


def test_the_relay_thread_runs_a_round_after_every_commit_even_one_during_a_round():
    from tests.waiting import wait_until
    from tidings.app.relay_thread import RelayThread

    rounds, first_round_running, release = [], threading.Event(), threading.Event()

    def relay() -> int:
        rounds.append(1)
        if len(rounds) == 1:
            first_round_running.set()
            release.wait(5)
        return 0

    thread = RelayThread(relay, "test")
    thread.committed()
    assert first_round_running.wait(5)
    thread.committed()  # arrives while the first round runs: it must get a round of its own
    release.set()
    wait_until(lambda: len(rounds) == 2, message="a second relay round")


def test_with_after_commit_thread_the_async_example_reaches_its_end_state(use_provider, redis_app):
    from tests.engine.conftest import running_worker
    from tests.engine.test_async_flow import ship_one, state
    from tests.waiting import wait_until

    shop = build_shop("async", "async")
    shop.config["outbox"]["after_commit"] = "thread"
    shop = use_provider(shop)
    celery = redis_app(shop)
    with running_worker(celery):
        order_id, _ = ship_one(shop)
        wait_until(lambda: state(shop, order_id) == ("SHIPPED", 6), message="async end state")


def test_an_unknown_after_commit_mode_is_a_configuration_error_naming_the_choices():
    import pytest

    from tidings.domain.errors import ConfigurationError

    shop = build_shop("async", "async")
    shop.config["outbox"]["after_commit"] = "threads"
    with pytest.raises(ConfigurationError, match=r"outbox.after_commit' must be one of \['kick', 'thread'\]"):
        shop.init()
