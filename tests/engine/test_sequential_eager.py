"""`sequential_by` through the relay in eager mode (tasks run inline, in publish order), on
every provider: the key's numbers move on past an applied and a dead-lettered message."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings import Domain, handle
from tidings.app.testing import eager_app
from tidings.fields import Identifier, Integer
from tidings.tasks import dlq
from tidings.tasks.naming import queue_name, task_name
from tidings.tasks.ordering import key_order, partition_queues_of
from tidings.tasks.relay import relay_now


def build(applied: list[tuple[str, int]]) -> Domain:
    domain = Domain("bank", root_path=Path(__file__).parent)
    domain.config.update(event_processing="async", command_processing="async", message_processing="async")
    domain.config["server"]["stream_subscription"].update(max_retries=1, retry_delay_seconds=0)

    @domain.aggregate
    class Account:
        pass

    @domain.event(part_of=Account)
    class Deposited:
        account_id: Identifier(required=True)
        n: Integer(required=True)

    @domain.event_handler(part_of=Account, sequential_by="account_id")
    class Ledger:
        @handle(Deposited)
        def post(self, event):
            if (event.account_id, event.n) == ("a", 2):
                raise RuntimeError("a:2 always fails")
            applied.append((event.account_id, event.n))

    return domain


@pytest.fixture(autouse=True)
def _quiet(caplog):
    caplog.set_level("CRITICAL")


def test_each_key_runs_in_order_and_moves_on_past_its_dead_letter(use_provider):
    applied: list[tuple[str, int]] = []
    domain = use_provider(build(applied))
    celery = eager_app(domain)
    Account, Deposited = domain.registry["aggregate"]["Account"], domain.registry["event"]["Deposited"]
    with domain.domain_context():
        holder = Account()
        for n in (1, 2, 3):
            for key in ("a", "b"):
                holder.raise_(Deposited(account_id=key, n=n))
        domain.repository_for(Account).add(holder)
    relay_now(celery, domain)

    assert [n for key, n in applied if key == "a"] == [1, 3]
    assert [n for key, n in applied if key == "b"] == [1, 2, 3]
    ledger = domain.registry["event_handler"]["Ledger"]
    assert dlq.depth(celery, queue_name(domain, ledger)) == 1
    order = key_order(domain)
    if order is not None:  # the SQL providers number the messages
        ids = [m.id for m in domain.read_messages("bank::account") if m.data["account_id"] == "a"]
        turns = [order.turn(task_name(domain, ledger), i) for i in ids]
        assert [t.seq for t in turns] == [1, 2, 3]
        assert turns[-1].applied == 3  # moved on past the dead-lettered number 2


def test_the_partition_queues_are_declared_and_consumed_by_the_server(tmp_path):
    from tidings.app.server import all_queues

    domain = build([])
    domain.init()
    celery = eager_app(domain)
    partitions = partition_queues_of(domain)
    assert partitions == [f"bank.ledger.p{i}" for i in range(8)]
    declared = {q.name: q for q in celery.conf.task_queues}
    assert all(declared[q].queue_arguments == {"x-single-active-consumer": True} for q in partitions)
    assert set(partitions) <= set(all_queues(domain)) and "bank.ledger" in all_queues(domain)
