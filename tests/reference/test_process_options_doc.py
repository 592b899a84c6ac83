"""`domain.process(command, asynchronous=None, idempotency_key=None, raise_on_duplicate=False,
..., correlation_id=None, deadline=None, timeout=None)` as the reference study describes it
(`../shared/research/protean.md` §4.8, §3 and §4.1): idempotency keys (a duplicate returns the
first result, sync, or the first message id, async; `raise_on_duplicate` raises
`DuplicateCommandError`), the caller's correlation id, and deadlines (an expired command is
skipped and counted: sync raises `CommandExpiredError`, the async task acknowledges it).

The keys live in the domain's own database (`tidings_command_keys`), so every provider runs
these, and a second process on the same database sees the keys the first one took.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from tidings import CommandExpiredError, Domain, DuplicateCommandError, handle
from tidings.app.testing import eager_app
from tidings.fields import Identifier, Integer


def build(processing: str = "sync", timeout: float | None = None) -> Domain:
    """A ledger whose handler writes one `Entry` per run (not idempotent on purpose) and
    returns its id; `Fail` commands fail while `Ledger.failures` says so."""
    domain = Domain("ledger")
    domain.config["command_processing"] = processing
    domain.config["event_processing"] = processing

    @domain.aggregate
    class Entry:
        ledger_id: Identifier(required=True)
        amount: Integer(required=True)

    @domain.command(part_of=Entry)
    class Record:
        ledger_id: Identifier(required=True)
        amount: Integer(required=True)

    @domain.event(part_of=Entry)
    class Recorded:
        entry_id: Identifier(required=True)
        amount: Integer(required=True)

    failures = {"left": 0}

    options = {"part_of": Entry} if timeout is None else {"part_of": Entry, "timeout": timeout}

    @domain.command_handler(**options)
    class Recorder:
        @handle(Record)
        def record(self, command: Record) -> str:
            if failures["left"] > 0:
                failures["left"] -= 1
                raise RuntimeError("the ledger is closed")
            entry = Entry(ledger_id=command.ledger_id, amount=command.amount)
            entry.raise_(Recorded(entry_id=entry.id, amount=command.amount))
            domain.repository_for(Entry).add(entry)
            return entry.id

    domain.failures = failures  # type: ignore[attr-defined]
    return domain


def entries(domain: Domain) -> int:
    return len(domain.repository_for(domain.registry["aggregate"]["Entry"]).all())


def record(domain: Domain, amount: int = 5):
    return domain.registry["command"]["Record"](ledger_id="L1", amount=amount)


# ---- idempotency keys --------------------------------------------------------------------------
def test_a_duplicate_key_returns_the_first_result_and_processes_nothing_again(use_provider):
    domain = use_provider(build("sync"))
    with domain.domain_context():
        first = domain.process(record(domain), idempotency_key="pay-1")
        again = domain.process(record(domain, amount=99), idempotency_key="pay-1")
        other = domain.process(record(domain), idempotency_key="pay-2")
        assert again == first  # the first command's result, not a second entry's
        assert other != first
        assert entries(domain) == 2
        stored = domain.read_messages("ledger::entry:command")
        assert [m.idempotency_key for m in stored] == ["pay-1", "pay-2"]  # the duplicate: not stored


def test_raise_on_duplicate_raises_duplicate_command_error_with_the_first_result(use_provider):
    domain = use_provider(build("sync"))
    with domain.domain_context():
        first = domain.process(record(domain), idempotency_key="pay-1")
        with pytest.raises(DuplicateCommandError) as raised:
            domain.process(record(domain), idempotency_key="pay-1", raise_on_duplicate=True)
        assert raised.value.key == "pay-1"
        assert raised.value.result == first
        assert entries(domain) == 1


def test_a_failed_command_leaves_its_key_free(use_provider):
    domain = use_provider(build("sync"))
    domain.failures["left"] = 1
    with domain.domain_context():
        with pytest.raises(RuntimeError, match="closed"):
            domain.process(record(domain), idempotency_key="pay-1")
        assert entries(domain) == 0
        entry_id = domain.process(record(domain), idempotency_key="pay-1")  # the retry runs
        assert entries(domain) == 1
        assert domain.process(record(domain), idempotency_key="pay-1") == entry_id


def test_async_duplicate_returns_the_first_message_id_and_relays_one_command(use_provider):
    domain = use_provider(build("async"))
    with domain.domain_context():
        first = domain.process(record(domain), idempotency_key="pay-1")
        again = domain.process(record(domain), idempotency_key="pay-1")
        with pytest.raises(DuplicateCommandError) as raised:
            domain.process(record(domain), idempotency_key="pay-1", raise_on_duplicate=True)
    assert again == first and raised.value.result == first
    assert domain.storage.outbox.status().pending == 1  # one command on its way, not three


@pytest.mark.parametrize("provider", ["sqlite", "postgresql"], indirect=True)
def test_keys_are_durable_a_second_process_on_the_database_sees_them(use_provider, provider):
    first_process = use_provider(build("sync"))
    with first_process.domain_context():
        entry_id = first_process.process(record(first_process), idempotency_key="pay-1")
    second_process = build("sync")  # a new Domain object: nothing shared in memory
    second_process.config["databases"]["default"] = dict(provider)
    second_process.config["event_store"] = {"provider": provider["provider"]}
    second_process.init()
    try:
        with second_process.domain_context():
            assert second_process.process(record(second_process), idempotency_key="pay-1") == entry_id
            assert entries(second_process) == 1
    finally:
        second_process.dispose()


# ---- correlation id ------------------------------------------------------------------------------
def test_the_callers_correlation_id_is_the_commands_and_its_events(use_provider):
    domain = use_provider(build("sync"))
    with domain.domain_context():
        domain.process(record(domain), correlation_id="order-flow-7")
        [command] = domain.read_messages("ledger::entry:command")
        [event] = domain.read_messages("ledger::entry")
    assert command.correlation_id == event.correlation_id == "order-flow-7"
    assert event.causation_id == command.id


# ---- deadlines -----------------------------------------------------------------------------------
def test_sync_an_expired_command_raises_and_is_not_handled_but_counted():
    domain = build("sync").init()
    with domain.domain_context():
        with pytest.raises(CommandExpiredError):
            domain.process(record(domain), deadline=time.time() - 1)  # a Unix time, as the reference
        with pytest.raises(CommandExpiredError):
            domain.process(record(domain), deadline=datetime.now(UTC) - timedelta(seconds=1))
        assert entries(domain) == 0
        assert domain.bus.stats["commands_expired"] == 2
        assert domain.read_messages("ledger::entry:command") == []
        domain.process(record(domain), timeout=60)  # a minute from now: handled
        [command] = domain.read_messages("ledger::entry:command")
    assert entries(domain) == 1
    assert command.deadline is not None
    assert timedelta(seconds=50) < command.deadline - datetime.now(UTC) <= timedelta(seconds=60)


def test_the_handlers_timeout_then_command_default_timeout_set_the_deadline():
    with_handler = build("sync", timeout=30).init()
    defaulted = build("sync")
    defaulted.config["command_default_timeout"] = 90
    defaulted.init()
    for domain, seconds in ((with_handler, 30), (defaulted, 90)):
        with domain.domain_context():
            domain.process(record(domain))
            [command] = domain.read_messages("ledger::entry:command")
        left = (command.deadline - datetime.now(UTC)).total_seconds()
        assert seconds - 10 < left <= seconds
    with build("sync").init().domain_context() as plain:
        plain.process(record(plain))
        assert plain.read_messages("ledger::entry:command")[0].deadline is None  # the default: none


def test_async_the_task_skips_an_expired_command_and_counts_it():
    domain = build("async").init()
    celery = eager_app(domain)
    stats = celery.tidings_runtime.stats
    with domain.domain_context():
        domain.process(record(domain), deadline=time.time() - 1)  # accepted: the worker decides
        domain.process(record(domain), timeout=60)
        assert entries(domain) == 1  # only the live one was handled
    assert stats["expired"] == 1
    assert stats["handled"] == 1
    assert stats["dead_lettered"] == 0  # skipped, with no error path
