"""`sequential_by`: the option's checks at init, the key of a message, and its partition."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tidings import ConfigurationError, Domain, handle
from tidings.domain.envelope import Message, MessageKind
from tidings.domain.ordering import PARTITIONS, key_of, partition_of, partition_queue, partition_queues
from tidings.fields import Identifier, Integer


def build(tmp_path, kind: str = "event_handler", **options) -> Domain:
    domain = Domain("bank", root_path=tmp_path)

    @domain.aggregate
    class Account:
        pass

    @domain.event(part_of=Account)
    class Deposited:
        account_id: Identifier(required=True)
        amount: Integer()

    @domain.command(part_of=Account)
    class Deposit:
        account_id: Identifier(required=True)

    if kind == "event_handler":

        @domain.event_handler(part_of=Account, **options)
        class Ledger:
            @handle(Deposited)
            def post(self, event):
                pass

    else:

        @domain.command_handler(part_of=Account, **options)
        class Teller:
            @handle(Deposit)
            def deposit(self, command):
                pass

    return domain


def spec(domain, kind="event_handler", name="Ledger"):
    return domain.bus.routes.spec(domain.registry[kind][name])


def test_a_field_of_every_handled_message_is_accepted_and_recorded_on_the_spec(tmp_path):
    domain = build(tmp_path, sequential_by="account_id").init()
    assert spec(domain).sequential_by == "account_id"
    assert spec(domain).sequential


def test_true_orders_by_the_aggregate_id_on_event_and_command_handlers(tmp_path):
    assert spec(build(tmp_path, sequential_by=True).init()).sequential_by is True
    commands = build(tmp_path, kind="command_handler", sequential_by=True).init()
    assert spec(commands, "command_handler", "Teller").sequential


def test_a_handler_without_the_option_is_not_sequential(tmp_path):
    assert not spec(build(tmp_path).init()).sequential


def test_a_field_the_message_lacks_is_a_configuration_error_naming_the_fields_and_the_fix(tmp_path):
    with pytest.raises(ConfigurationError) as caught:
        build(tmp_path, sequential_by="acount_id").init()
    text = str(caught.value)
    assert "Ledger: sequential_by 'acount_id' is not a field of Deposited" in text
    assert "its fields: account_id, amount" in text
    assert "sequential_by=True" in text


@pytest.mark.parametrize("value", [3, "", "  ", ["account_id"]])
def test_a_value_that_is_neither_a_field_name_nor_true_is_refused(tmp_path, value):
    with pytest.raises(
        ConfigurationError, match=r'must be a message field name or True .*sequential_by="<field>"'
    ):
        build(tmp_path, sequential_by=value).init()


def test_batch_delivery_cannot_be_combined_with_it(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot be combined with batch_delivery"):
        build(tmp_path, sequential_by=True, subscription_config={"batch_delivery": True}).init()


def test_subscribers_do_not_take_the_option(tmp_path):
    domain = Domain("bank", root_path=tmp_path)
    with pytest.raises(ConfigurationError, match=r"unknown option\(s\) \['sequential_by'\]"):

        @domain.subscriber(stream="payments", sequential_by=True)
        class Payments:
            pass


def message(stream: str = "bank::account-a1", **data) -> Message:
    return Message(
        type="Bank.Deposited.v1",
        kind=MessageKind.EVENT,
        stream=stream,
        stream_category="bank::account",
        data=data,
    )


def test_the_key_is_the_field_value_or_the_stream():
    assert key_of("account_id", message(account_id="a7", amount=1)) == "a7"
    assert key_of(True, message(stream="bank::account-a9", account_id="a7")) == "bank::account-a9"
    assert key_of("account_id", message(amount=1)) == ""  # missing: one order for all of them
    long = key_of("account_id", message(account_id="x" * 300))
    assert (
        long.startswith("#")
        and len(long) == 65
        and long == key_of("account_id", message(account_id="x" * 300))
    )


def test_the_same_key_always_goes_to_the_same_partition_and_keys_spread_over_all():
    assert partition_of("acct-042") == partition_of("acct-042")
    used = {partition_of(f"acct-{k:03d}") for k in range(100)}
    assert used == set(range(PARTITIONS))
    assert partition_queue("bank.ledger", 3) == "bank.ledger.p3"
    assert partition_queues("bank.ledger", 2) == ["bank.ledger.p0", "bank.ledger.p1"]


def test_the_partition_is_the_same_in_another_process_with_another_hash_seed():
    keys = [f"acct-{k:03d}" for k in range(50)]
    here = [partition_of(k) for k in keys]
    code = f"from tidings.domain.ordering import partition_of\nprint([partition_of(k) for k in {keys!r}])"
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == str(here)
