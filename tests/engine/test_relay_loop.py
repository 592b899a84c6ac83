"""The relay loop: rounds woken by commits, no Celery task and no INFO line while idle."""

from __future__ import annotations

import logging
import threading
import time

from celery.signals import before_task_publish, task_prerun

from tests.engine.conftest import running_worker
from tests.shop import build_shop
from tests.waiting import wait_until
from tidings.app.kick import PollWake
from tidings.app.relay_loop import Chore, RelayLoop


class CountingWake(PollWake):
    """A wake-up that counts its signals (a poll of this process only)."""

    def __init__(self, poll: float) -> None:
        super().__init__(poll)
        self.signals = 0

    def signal(self) -> None:
        self.signals += 1
        super().signal()


def test_a_commit_during_a_round_is_followed_by_another_round():
    rounds, first_running, release = [], threading.Event(), threading.Event()

    def relay() -> int:
        rounds.append(1)
        if len(rounds) == 2:  # the first round after start is the catch-up one
            first_running.set()
            release.wait(5)
        return 0

    wake = PollWake(poll=60.0)  # an idle period far beyond the test: only signals wake it
    loop = RelayLoop(relay, wake, idle=60.0, name="test")
    loop.start()
    try:
        wait_until(lambda: len(rounds) == 1, message="the catch-up round")
        wake.signal()
        assert first_running.wait(5)
        wake.signal()  # arrives while the round runs: it must get a round of its own
        release.set()
        wait_until(lambda: len(rounds) == 3, message="a round for the commit made during a round")
    finally:
        loop.stop()
    assert not loop.running


def test_a_failing_round_is_warned_once_and_the_loop_keeps_going(caplog):
    calls = []

    def relay() -> int:
        calls.append(1)
        if len(calls) <= 3:
            raise ConnectionError("database went away")
        return 2

    loop = RelayLoop(relay, PollWake(poll=0.01), idle=0.01, name="test")
    with caplog.at_level(logging.DEBUG, logger="tidings.relay"):
        loop.start()
        try:
            wait_until(lambda: loop.published >= 2, message="a round after the failures")
        finally:
            loop.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([w for w in warnings if "failed" in w]) == 1
    assert len([w for w in warnings if "recovered" in w]) == 1


def test_chores_run_on_their_own_period_beside_the_rounds():
    runs: list[int] = []
    loop = RelayLoop(
        lambda: 0,
        PollWake(poll=0.01),
        idle=0.01,
        name="test",
        chores=[Chore("c", lambda: runs.append(1), 3600)],
    )
    loop.start()
    try:
        wait_until(lambda: runs and loop.rounds >= 20, message="a chore and twenty idle rounds")
    finally:
        loop.stop()
    assert runs == [1]  # once at start, not again within the hour


def test_an_idle_worker_sends_no_task_and_logs_nothing_above_debug(use_provider, redis_app, caplog):
    shop = use_provider(build_shop("async", "sync"))
    shop.config["outbox"]["interval"] = "0.1"  # ten idle rounds a second
    shop.config["outbox"]["audit_interval"] = "0.1"
    celery = redis_app(shop)
    loop = celery.tidings_relay_loop
    published: list[str] = []
    ran: list[str] = []

    def on_publish(sender=None, **_):
        published.append(sender)

    def on_run(sender=None, **_):
        ran.append(sender.name)

    before_task_publish.connect(on_publish, weak=False)
    task_prerun.connect(on_run, weak=False)
    try:
        with caplog.at_level(logging.DEBUG, logger="tidings"), running_worker(celery):
            wait_until(lambda: loop.running, message="the relay loop started by the worker")
            caplog.clear()  # the build's own configuration warnings are not idle logging
            start = loop.rounds
            wait_until(lambda: loop.rounds >= start + 10, timeout=20, message="ten idle rounds")
            idle_logs = [
                r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("tidings")
            ]
            Order = shop.registry["aggregate"]["Order"]
            with shop.domain_context():
                order = shop.repository_for(Order).add(Order(book_id="b1", quantity=1))
                order.ship_order()
                shop.repository_for(Order).add(order)
            wait_until(lambda: ran, message="the handler run after the loop relayed the commit")
        assert not loop.running  # the worker stopped it
    finally:
        before_task_publish.disconnect(on_publish)
        task_prerun.disconnect(on_run)
    assert idle_logs == []
    # only the handler's own task crossed the broker: no relay, audit or any other plumbing
    assert set(published) == {
        shop.bus.routes.spec(shop.registry["event_handler"]["ManageInventory"]).task_name
    }


def test_while_traffic_is_live_a_lingering_loop_waits_before_its_next_round():
    starts: list[float] = []

    def relay() -> int:
        starts.append(time.monotonic())
        return 1  # every round publishes: traffic is live

    class AlwaysWoken(PollWake):
        def wait(self, timeout: float) -> bool:
            return True  # a commit is always pending

    loop = RelayLoop(relay, AlwaysWoken(poll=1.0), idle=1.0, name="test", linger=0.05)
    loop.start()
    try:
        wait_until(lambda: len(starts) >= 4, message="four rounds")
        first = starts[:4]  # a stop ends the linger at once: the rounds after it do not count
    finally:
        loop.stop()
    gaps = [b - a for a, b in zip(first, first[1:], strict=False)]
    assert min(gaps) >= 0.05  # a sleep's lower bound: each live round waited for more rows


def test_only_a_worker_consuming_the_relay_queue_runs_the_loop():
    """Under `tidings server` each lane is a worker with its own -Q list: the relay's lane runs
    the loop, a handler's lane does not (every one would claim each second otherwise)."""
    from celery import Celery
    from kombu import Queue

    from tidings.app.relay_loop import relay_loop_step

    step_class = relay_loop_step(RelayLoop(lambda: 0, PollWake(poll=60.0), idle=60.0, name="t"), "t.outbox")
    verdicts = {}
    for selected in (None, ["t.outbox", "t.apply"], ["t.apply"]):
        app = Celery("t", broker="memory://", set_as_current=False)
        app.conf.task_queues = [Queue("t.outbox"), Queue("t.apply")]
        app.conf.task_default_queue = "t.outbox"  # as app/factory.py declares them
        if selected is not None:
            app.amqp.queues.select(selected)  # what `celery worker -Q` does before the bootsteps

        class Worker:  # the part of a WorkController the step reads
            pass

        worker = Worker()
        worker.app = app  # type: ignore[attr-defined]
        verdicts[tuple(selected or ())] = step_class(worker).include_if(worker)
    assert verdicts == {(): True, ("t.outbox", "t.apply"): True, ("t.apply",): False}
