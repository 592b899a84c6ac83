"""Retries, the dead-letter queue, replay and poison messages, on Redis with a real worker."""

from __future__ import annotations

import pytest

from tests.engine import ledger
from tests.engine.conftest import running_worker
from tests.engine.ledger import (
    applied,
    build_ledger,
    make_entry,
    make_entry_with_faults,
    make_failing_entry,
)
from tests.waiting import wait_until
from tidings.tasks import dlq

QUEUE = "ledger.apply"


@pytest.fixture
def ledger_app(use_provider, redis_app):
    ledger.FAILURES.clear()
    ledger.FAULTS.clear()
    ledger.ERRORS_SEEN.clear()
    domain = build_ledger()
    # transient retries in tenths of a second, so that six of them fit in a test
    domain.config["server"]["transient_retry"] = {"base_delay_seconds": 0.05, "max_delay_seconds": 0.2}
    domain = use_provider(domain)
    return domain, redis_app(domain)


@pytest.fixture
def short_deadline_app(use_provider, redis_app):
    ledger.FAILURES.clear()
    ledger.FAULTS.clear()
    ledger.ERRORS_SEEN.clear()
    domain = build_ledger()
    domain.config["server"]["transient_retry"] = {
        "base_delay_seconds": 0.05,
        "max_delay_seconds": 0.1,
        "deadline_seconds": 1.0,
    }
    domain = use_provider(domain)
    return domain, redis_app(domain)


@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_a_handler_failing_twice_then_succeeding_is_applied_once_on_the_third_attempt(ledger_app):
    domain, celery = ledger_app
    with running_worker(celery):
        entry_id = make_failing_entry(domain, "twice", failures=2)
        wait_until(lambda: applied(domain, entry_id) == 1, message="applied once")
    # handle_error saw each of the two failures, of the same message
    assert [e[0] for e in ledger.ERRORS_SEEN] == ["DownstreamError", "DownstreamError"]
    assert len({e[1] for e in ledger.ERRORS_SEEN}) == 1
    assert dlq.list_entries(celery, QUEUE) == []


@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_an_always_failing_handler_is_tried_max_retries_plus_one_times_then_dead_lettered(ledger_app):
    domain, celery = ledger_app
    with running_worker(celery):
        entry_id = make_failing_entry(domain, "always", failures=10**6)
        entries = wait_until(lambda: dlq.list_entries(celery, QUEUE), message="a DLQ entry")
        assert len(ledger.ERRORS_SEEN) == 4  # max_retries (3) + 1 attempts
        assert len(entries) == 1
        entry = entries[0]
        assert entry["attempts"] == 4
        assert entry["error_type"] == "DownstreamError"
        assert "flaky downstream" in entry["error_message"]
        assert "Traceback" in entry["traceback"] and entry["failed_at"]
        assert entry["message_id"] == entry["body"]["id"]
        assert applied(domain, entry_id) is None

        ledger.FAILURES[entry_id] = 0  # the fix is deployed
        assert dlq.replay(celery, QUEUE) == 1
        wait_until(lambda: applied(domain, entry_id) == 1, message="applied after replay")
    assert dlq.list_entries(celery, QUEUE) == []
    assert applied(domain, entry_id) == 1


@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_a_poison_message_goes_to_the_dlq_and_the_worker_keeps_running(ledger_app):
    domain, celery = ledger_app
    with running_worker(celery):
        celery.send_task("tidings.ledger.Apply", args=[{"id": "x", "type": "nonsense"}], queue=QUEUE)
        celery.send_task("tidings.ledger.Apply", args=["{not json"], queue=QUEUE)
        entries = wait_until(
            lambda: len(dlq.list_entries(celery, QUEUE)) == 2 and dlq.list_entries(celery, QUEUE),
            message="two poison entries",
        )
        assert {e["error_type"] for e in entries} == {"InvalidMessageError"}
        assert all(e["attempts"] == 1 for e in entries)
        entry_id = make_entry(domain, "after-poison")
        wait_until(lambda: applied(domain, entry_id) == 1, message="worker still handles")
    assert dlq.purge(celery, QUEUE) == 2
    assert dlq.list_entries(celery, QUEUE) == []
    assert celery.tidings_runtime.stats["dead_lettered"] >= 2


@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_a_redelivered_message_is_acknowledged_and_skipped_by_the_inbox(ledger_app):
    domain, celery = ledger_app
    with running_worker(celery):
        entry_id = make_entry(domain, "once")
        wait_until(lambda: applied(domain, entry_id) == 1, message="applied")
        envelope = domain.event_store_database.read_events("ledger::entry")[-1]
        body = {**envelope["metadata"], "data": envelope["data"]}
        stats = celery.tidings_runtime.stats
        before = stats["duplicates"]
        celery.send_task("tidings.ledger.Apply", args=[body], queue=QUEUE)
        wait_until(lambda: stats["duplicates"] == before + 1, message="duplicate skipped")
    assert applied(domain, entry_id) == 1


# ---- transient faults and business rules (issue 10, item 5) --------------------------------------
@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_transient_faults_are_retried_beyond_max_retries_without_spending_them(ledger_app):
    domain, celery = ledger_app
    with running_worker(celery):
        entry_id = make_entry_with_faults(domain, "blip", faults=6)  # max_retries is 3
        wait_until(lambda: applied(domain, entry_id) == 1, message="applied after six transient faults")
    assert [e[0] for e in ledger.ERRORS_SEEN] == ["ConnectionError"] * 6
    assert dlq.list_entries(celery, QUEUE) == []


@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_transient_faults_then_ordinary_failures_keep_the_full_max_retries(ledger_app):
    domain, celery = ledger_app
    with running_worker(celery):
        entry_id = make_entry_with_faults(domain, "mixed", faults=5, failures=3)
        wait_until(lambda: applied(domain, entry_id) == 1, message="applied on the last allowed attempt")
    kinds = [e[0] for e in ledger.ERRORS_SEEN]
    assert kinds.count("DownstreamError") == 3 and kinds.count("ConnectionError") == 5
    assert dlq.list_entries(celery, QUEUE) == []


@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_a_transient_fault_past_its_deadline_counts_as_a_failure_and_is_dead_lettered(short_deadline_app):
    domain, celery = short_deadline_app
    with running_worker(celery):
        entry_id = make_entry_with_faults(domain, "outage", faults=10**6)
        [entry] = wait_until(lambda: dlq.list_entries(celery, QUEUE), timeout=30, message="a DLQ entry")
    assert entry["error_type"] == "ConnectionError"
    assert entry["attempts"] == 4  # past the deadline: max_retries (3) + 1 ordinary attempts
    assert applied(domain, entry_id) is None


@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
@pytest.mark.parametrize(("label", "error"), [("closed-1", "LedgerClosed"), ("refused-1", "EntryRefused")])
def test_a_business_rule_error_is_dead_lettered_at_once_and_handle_error_still_runs(ledger_app, label, error):
    domain, celery = ledger_app
    with running_worker(celery):
        entry_id = make_entry(domain, label)
        [entry] = wait_until(lambda: dlq.list_entries(celery, QUEUE), message="a DLQ entry")
        after = make_entry(domain, "after")  # the queue goes on
        wait_until(lambda: applied(domain, after) == 1, message="the next message applied")
    assert entry["attempts"] == 1  # never retried
    assert entry["error_type"] == error and label in entry["error_message"]
    assert [(error, entry["message_id"])] == ledger.ERRORS_SEEN  # handle_error, once
    assert applied(domain, entry_id) is None


@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_a_business_rule_error_is_dropped_when_the_dlq_is_off(use_provider, redis_app):
    ledger.ERRORS_SEEN.clear()
    domain = build_ledger()
    domain.config["server"]["stream_subscription"]["enable_dlq"] = False
    domain = use_provider(domain)
    celery = redis_app(domain)
    with running_worker(celery):
        make_entry(domain, "closed-2")
        after = make_entry(domain, "after")
        wait_until(lambda: applied(domain, after) == 1, message="the next message applied")
        wait_until(lambda: len(ledger.ERRORS_SEEN) == 1, message="handle_error called")
    assert [e[0] for e in ledger.ERRORS_SEEN] == ["LedgerClosed"]
    assert dlq.list_entries(celery, QUEUE) == []
