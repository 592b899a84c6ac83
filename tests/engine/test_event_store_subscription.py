"""The event_store subscription type: cursor, single active consumer, failures, rebuild."""

from __future__ import annotations

import threading
import time

import pytest

from tests.engine.accounts import CALLS, FAILURES, build_accounts, deposit, open_account, rows
from tidings.domain.naming import snake
from tidings.tasks.dispatch import queued_handlers
from tidings.tasks.naming import poll_task_name, task_name
from tidings.tasks.poller import SETTLE_DELAY_SECONDS, next_poll_in, poll, replay_failed, run_batch
from tidings.tasks.positions import FAILED, position_store
from tidings.tasks.rebuild import rebuild_projection


@pytest.fixture(autouse=True)
def _fresh_counters():
    CALLS.clear()
    FAILURES.clear()
    yield
    FAILURES.clear()


def handler(domain, name):
    return next(
        h for kind in ("projector", "event_handler") for n, h in domain.registry[kind].items() if n == name
    )


def poll_until_idle(domain, name, timeout: float = 30.0) -> int:
    """Poll like the Celery task would, until it would not re-schedule itself; returns polls."""
    h, deadline = handler(domain, name), time.monotonic() + timeout
    polls = 0
    while time.monotonic() < deadline:
        polls += 1
        delay = next_poll_in(domain, h, poll(domain, h))
        if delay is None:
            return polls
        time.sleep(delay)  # the task's own countdown (records waiting for older transactions)
    raise AssertionError("the poller never became idle")


def history(domain) -> dict[str, list[int]]:
    return {r["account_id"]: r["history"] for r in rows(domain, "Statement")}


def test_read_categories_returns_records_in_global_order_from_a_position(use_provider):
    domain = use_provider(build_accounts())
    account = open_account(domain)
    for amount in (10, 20, 30):
        deposit(domain, account, amount)
    store = domain.event_store_database
    everything = store.read_categories(["accounts::account"], 0, 100)
    assert [r["data"]["n"] for r in everything] == [1, 2, 3]
    assert set(everything[0]) == {
        "global_position",
        "message_id",
        "stream",
        "category",
        "position",
        "type",
        "data",
        "metadata",
        "time",
    }
    positions = [r["global_position"] for r in everything]
    assert positions == sorted(positions)
    later = store.read_categories(["accounts::account", "accounts::other"], positions[1], 100)
    assert [r["global_position"] for r in later] == positions[1:]
    assert len(store.read_categories(["accounts::account"], 0, 2)) == 2
    assert store.read_categories(["accounts::nothing"], 0, 100) == []


def test_a_projection_subscription_applies_each_event_once_in_stream_order(use_provider):
    domain = use_provider(build_accounts(messages_per_tick=4, position_update_interval=3))
    first, second = open_account(domain), open_account(domain)
    for amount in range(1, 6):
        deposit(domain, first, amount)
        deposit(domain, second, amount * 10)

    assert poll_until_idle(domain, "StatementProjector") > 2  # 10 events, 4 per tick
    assert history(domain) == {first: [1, 2, 3, 4, 5], second: [1, 2, 3, 4, 5]}
    assert {r["account_id"]: r["total"] for r in rows(domain, "Statement")} == {first: 15, second: 150}
    assert set(CALLS.values()) == {1}
    last = domain.event_store_database.read_categories(["accounts::account"], 0, 100)[-1]
    with position_store(domain).owned(task_name(domain, handler(domain, "StatementProjector"))) as lease:
        assert lease.position() == last["global_position"]


@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_a_commit_waits_for_older_transactions_before_the_poller_reads_it(use_provider):
    domain = use_provider(build_accounts())
    account = open_account(domain)
    poll_until_idle(domain, "StatementProjector")
    older = domain.databases["default"].engine.connect()
    older.exec_driver_sql("SELECT pg_current_xact_id()")  # a transaction with an id, still open
    deposit(domain, account, 10)
    projector = handler(domain, "StatementProjector")
    batch = poll(domain, projector)
    assert batch.read == 0  # committed, but an older transaction could still append before it
    assert next_poll_in(domain, projector, batch) == SETTLE_DELAY_SECONDS
    older.rollback()
    older.close()
    poll_until_idle(domain, "StatementProjector")
    assert history(domain) == {account: [1]}


class RecordingLease:
    name = "recording"

    def __init__(self) -> None:
        self.saves: list[int] = []

    def position(self) -> int:
        return self.saves[-1] if self.saves else 0

    def save(self, position: int) -> None:
        self.saves.append(position)


def test_the_cursor_is_saved_every_position_update_interval_and_at_the_end_of_a_batch():
    domain = build_accounts(position_update_interval=3).init()
    account = open_account(domain)
    for amount in range(7):
        deposit(domain, account, amount)
    lease = RecordingLease()
    batch = run_batch(domain, handler(domain, "StatementProjector"), position_store(domain), lease)
    positions = [
        r["global_position"]
        for r in domain.event_store_database.read_categories(["accounts::account"], 0, 100)
    ]
    assert batch.handled == 7
    assert lease.saves == [positions[2], positions[5], positions[6]]


def test_two_pollers_racing_apply_each_event_once_and_in_stream_order(use_provider):
    domain = use_provider(build_accounts(messages_per_tick=3, position_update_interval=2))
    projector = handler(domain, "StatementProjector")
    ids = [open_account(domain) for _ in range(3)]
    writing = threading.Event()
    writing.set()
    errors: list[BaseException] = []

    def race() -> None:
        try:
            while writing.is_set() or next_poll_in(domain, projector, poll(domain, projector)) is not None:
                poll(domain, projector)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    pollers = [threading.Thread(target=race) for _ in range(2)]
    for thread in pollers:
        thread.start()
    for n in range(1, 9):
        for account in ids:
            deposit(domain, account, n)
    writing.clear()
    for thread in pollers:
        thread.join(timeout=60)
    poll_until_idle(domain, "StatementProjector")

    assert errors == []
    assert history(domain) == {account: list(range(1, 9)) for account in ids}
    assert sum(CALLS.values()) == 24 and set(CALLS.values()) == {1}


def test_a_second_consumer_is_refused_while_the_subscription_is_owned(use_provider):
    domain = use_provider(build_accounts())
    store, name = position_store(domain), task_name(domain, handler(domain, "StatementProjector"))
    with store.owned(name) as owner:
        assert owner is not None
        assert poll(domain, handler(domain, "StatementProjector")).busy
    with store.owned(name) as next_owner:
        assert next_owner is not None  # released at the end of the batch


def test_a_failing_event_is_retried_then_recorded_as_a_failed_position_and_replayed_once(use_provider):
    domain = use_provider(build_accounts())
    auditor = handler(domain, "Auditor")
    account = open_account(domain)
    FAILURES[20] = 10  # fails on every attempt (max_retries = 2 -> 3 attempts)
    for amount in (10, 20, 30):
        deposit(domain, account, amount)

    outcomes = []
    for _ in range(3):
        batch = poll(domain, auditor)
        outcomes.append((batch.handled, batch.retry_in, batch.failed))
    assert outcomes == [(1, 0.0, 0), (0, 0.0, 0), (1, None, 1)]  # 10; retry 20; give up 20, 30
    assert sorted(r["amount"] for r in rows(domain, "Audit")) == [10, 30]

    [failed] = position_store(domain).failures(task_name(domain, auditor), FAILED)
    assert (failed["attempts"], failed["error_type"]) == (3, "ConnectionError")
    assert "audit store down for 20" in failed["error_message"]

    FAILURES.clear()
    assert replay_failed(domain, auditor) == (1, 0)
    assert replay_failed(domain, auditor) == (0, 0)
    assert sorted(r["amount"] for r in rows(domain, "Audit")) == [10, 20, 30]
    assert position_store(domain).failures(task_name(domain, auditor)) == []
    assert CALLS[("Auditor", account, 2)] == 1


def test_a_retry_that_succeeds_leaves_no_failed_position(use_provider):
    domain = use_provider(build_accounts())
    auditor = handler(domain, "Auditor")
    account = open_account(domain)
    FAILURES[20] = 1
    deposit(domain, account, 20)
    assert poll(domain, auditor).retry_in == 0.0
    assert position_store(domain).failures(task_name(domain, auditor))[0]["status"] == "retrying"
    assert poll(domain, auditor).handled == 1
    assert position_store(domain).failures(task_name(domain, auditor)) == []


def test_rebuild_reproduces_the_projection_exactly(use_provider):
    domain = use_provider(build_accounts(messages_per_tick=4))
    ids = [open_account(domain) for _ in range(3)]
    for n in range(1, 6):
        for account in ids:
            deposit(domain, account, n * 7)
    poll_until_idle(domain, "StatementProjector")
    before = sorted(rows(domain, "Statement"), key=lambda r: r["account_id"])
    last = domain.event_store_database.read_categories(["accounts::account"], 0, 100)[-1]

    seen: list[tuple[int, int | None]] = []
    done = rebuild_projection(
        domain, handler(domain, "StatementProjector"), lambda cursor, total: seen.append((cursor, total))
    )

    assert sorted(rows(domain, "Statement"), key=lambda r: r["account_id"]) == before
    assert (done.handled, done.failed, done.cursor) == (15, 0, last["global_position"])
    assert seen[-1] == (last["global_position"], last["global_position"])
    assert all(count == 2 for count in CALLS.values())  # once live, once in the rebuild


def test_source_stream_is_honoured_on_the_event_store_path(use_provider):
    from tidings.app.testing import eager_app

    domain = use_provider(build_accounts())
    eager_app(domain)
    account = open_account(domain)
    deposit(domain, account, 5)  # raised outside any command: origin_stream is None
    MakeDeposit = domain.registry["command"]["MakeDeposit"]
    with domain.domain_context():
        domain.process(MakeDeposit(account_id=account, amount=7))
    poll_until_idle(domain, "CommandedDeposits")
    assert rows(domain, "Commanded") == [{"account_id": account, "count": 1}]
    assert history(domain) == {account: [1, 2]}  # the projector, without source_stream, got both


def test_the_fan_out_sends_nothing_to_event_store_handlers():
    domain = build_accounts().init()
    Deposited = domain.registry["event"]["Deposited"]
    message = domain.event_message(Deposited(account_id="a1", amount=1, n=1))
    assert {h.__name__ for h in domain.handlers_for(message)} == {"StatementProjector", "Auditor"}
    assert queued_handlers(domain, message) == []


def test_the_after_commit_kick_runs_the_pollers_and_an_idle_poller_does_not_reschedule_itself():
    from tidings.app.testing import eager_app

    domain = build_accounts().init()
    celery = eager_app(domain)
    name = poll_task_name(domain, handler(domain, "StatementProjector"))
    account = open_account(domain)
    deposit(domain, account, 3)  # kicks the pollers of accounts::account, eagerly
    assert history(domain) == {account: [1]}

    stats = celery.tidings_runtime.stats
    before = dict(stats)
    celery.tasks[name].apply()
    assert stats[(name, "idle")] == before.get((name, "idle"), 0) + 1
    assert stats[(name, "rescheduled")] == before.get((name, "rescheduled"), 0)
    assert stats[(name, "polls")] == before.get((name, "polls"), 0) + 1


def test_the_beat_schedule_polls_every_event_store_handler_on_its_own_queue():
    from tidings.app.testing import eager_app

    domain = build_accounts().init()
    schedule = eager_app(domain).conf.beat_schedule
    for name in ("StatementProjector", "Auditor", "CommandedDeposits"):
        entry = schedule[poll_task_name(domain, handler(domain, name))]
        assert entry["options"]["queue"] == f"accounts.{snake(name)}"
