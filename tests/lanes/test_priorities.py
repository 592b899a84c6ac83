"""Priorities (issue 12 item 3): a bulk backfill of 5,000 messages for a handler does not
delay that handler's interactive messages, on Redis and RabbitMQ, with real processes.

With `[server.priority_lanes] enabled`, messages below NORMAL go to the handler's backfill
queue, which its lane consumes interleaved with (after) its own queue: an interactive message
waits for at most the one bulk message each thread has in hand, never behind the backlog.

The bound, stated and measured in the same test: the interactive p99 (commit -> applied)
during the backfill stays within its p99 without a backfill + 1 s, and every interactive
message is applied while more than 1,000 bulk messages are still waiting. Behind the backlog
(one FIFO queue) it would be the backlog's drain time: 5,000 x 4 ms / 2 threads >= 10 s."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.lanes.conftest import LanesRun, lanes_run, served
from tidings import Priority, processing_priority
from tidings.app.bootstrap import runtime_for
from tidings.tasks.dispatch import publisher

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

BULK = 5000
INTERACTIVE = 20


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def interactive_latencies(run: LanesRun, batch: str) -> list[float]:
    """Post INTERACTIVE messages at 20/s; once all are applied, their commit -> applied times."""
    ids = set()
    for _ in range(INTERACTIVE):
        ids |= set(run.post("FastPosted", kind=batch))
        time.sleep(0.05)
    rows = run.wait(
        lambda: (
            [e for e in run.effects("FastNotice") if e.kind == batch]
            if len([e for e in run.effects("FastNotice") if e.kind == batch]) >= INTERACTIVE
            else None
        ),
        f"the {batch} messages",
    )
    assert {e.message_id for e in rows} == ids, "an interactive message was lost or applied twice"
    return [e.applied_at - e.posted_at for e in rows]


def test_a_bulk_backfill_does_not_delay_interactive_messages_of_the_same_handler(tmp_path, broker):
    with lanes_run(tmp_path, broker, LANES_PRIORITY_LANES="1") as run, served(run):
        celery = runtime_for(run.domain).celery
        backfill = f"{run.domain.name}.fast_notice.backfill"
        baseline = p99(interactive_latencies(run, "baseline"))

        # The backfill, sent as the relay sends (tasks/dispatch.py routes by priority); not
        # committed through the outbox only because 5,000 commits would take this test's time.
        cls = run.domain.registry["event"]["FastPosted"]
        with run.domain.domain_context(), processing_priority(Priority.BULK):
            backlog = [
                run.domain.event_message(cls(job_id=str(uuid.uuid4()), posted_at=time.time(), kind="bulk"))
                for _ in range(BULK)
            ]
        with publisher(celery, run.domain) as publish:
            for message in backlog:
                publish(message.to_json())
            publish.flush()  # type: ignore[attr-defined]
        assert run.depth(celery, backfill) > 1000, "the backfill was not queued in the backfill queue"

        during = interactive_latencies(run, "interactive")
        left = BULK - sum(1 for e in run.effects("FastNotice") if e.kind == "bulk")
        assert left > 1000, f"only {left} bulk messages were still waiting: not a backlog to jump"
        assert p99(during) <= baseline + 1.0, (
            f"interactive p99 {p99(during):.3f} s (baseline {baseline:.3f} s)"
        )
        print(
            f"{broker}: interactive p99 {p99(during) * 1000:.0f} ms during the backfill, "
            f"{baseline * 1000:.0f} ms without; {left} bulk messages still waiting"
        )


def test_priority_is_carried_by_the_envelope_and_inherited(tmp_path):
    from tests.lanes.lanes_app import build_domain
    from tidings.domain.priority import priority_of

    domain = build_domain({"LANES_DATABASE_URL": "postgresql://u@h/db", "LANES_BROKER_URL": "redis://h/0"})
    domain.init()
    cls = domain.registry["event"]["FastPosted"]
    with processing_priority(Priority.BULK):
        bulk = domain.event_message(cls(job_id="a", posted_at=0.0))
        with processing_priority(Priority.HIGH):
            high = domain.event_message(cls(job_id="b", posted_at=0.0))
    normal = domain.event_message(cls(job_id="c", posted_at=0.0))
    assert (priority_of(bulk), priority_of(high), priority_of(normal)) == (-100, 50, 0)
    assert "priority" not in normal.metadata  # a NORMAL message is as it was
    with pytest.raises(TypeError), processing_priority("bulk"):  # type: ignore[arg-type]
        pass


def test_process_with_a_priority_tags_the_command_and_what_its_handler_raises():
    """`domain.process(cmd, priority=...)` (sync, memory provider): the stored command and the
    event its handler raised carry the priority; a later command without one is NORMAL."""
    from tests.shop import build_shop
    from tidings.domain.priority import priority_of

    shop = build_shop()
    shop.init()
    Order, Inventory, ShipOrder = (
        shop.registry[k][n]
        for k, n in [("aggregate", "Order"), ("aggregate", "Inventory"), ("command", "ShipOrder")]
    )
    with shop.domain_context():
        first = shop.repository_for(Order).add(Order(book_id="b1", quantity=1))
        second = shop.repository_for(Order).add(Order(book_id="b1", quantity=1))
        shop.repository_for(Inventory).add(Inventory(book_id="b1", in_stock=5))
        shop.process(ShipOrder(order_id=first.id), priority=Priority.LOW)
        shop.process(ShipOrder(order_id=second.id))
    store = shop.event_store_database
    commands = [priority_of(_message(r)) for r in store.read_events("shop::order:command")]
    events = [priority_of(_message(r)) for r in store.read_events("shop::order")]
    assert commands == [Priority.LOW, Priority.NORMAL]
    assert events == [Priority.LOW, Priority.NORMAL]


def _message(record):
    from tidings import Message

    return Message.from_dict({**record["metadata"], "data": record["data"]})
