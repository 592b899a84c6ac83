"""`tidings server --test-mode` (`run_until_quiescent`) judges quiescence per message over the
messages of its run (issue 10, item 8): it settles after a DLQ purge, waits for a retry that is
due, and counts external broker messages."""

from __future__ import annotations

import pytest

from tests.engine import feeds, ledger
from tests.engine.feeds import POISON, build_feeds, welcomed
from tests.engine.ledger import applied, build_ledger, make_entry, make_failing_entry
from tidings.app.server import run_until_quiescent
from tidings.tasks import dlq

QUEUE = "ledger.apply"


def quiet(_: str) -> None:
    pass


@pytest.fixture
def ledger_app(use_provider, redis_app):
    ledger.FAILURES.clear()
    ledger.ERRORS_SEEN.clear()
    domain = build_ledger()
    # one failure costs a 1.5 s countdown: the run must wait for the retry
    domain.config["server"]["stream_subscription"].update(max_retries=3, retry_delay_seconds=1.5)
    domain = use_provider(domain)
    return domain, redis_app(domain)


@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_it_is_not_quiescent_while_a_retry_is_due(ledger_app):
    domain, celery = ledger_app
    # an earlier poison message left a dead letter: a count that must not stand in for this run's
    dlq.dead_letter(celery, queue=QUEUE, task="t", body="{garbage", error=ValueError("poison"), attempts=1)
    entry_id = make_failing_entry(domain, "retried", failures=2)
    summary = run_until_quiescent(celery, domain, timeout=60, report=quiet)
    assert summary["quiescent"]
    assert applied(domain, entry_id) == 1  # both retries ran before it said so
    assert summary["seconds"] >= 3.0  # two countdowns of 1.5 s
    assert [e[0] for e in ledger.ERRORS_SEEN] == ["DownstreamError"] * 2


@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_it_settles_after_a_dlq_purge_and_counts_only_this_run(ledger_app):
    domain, celery = ledger_app
    make_entry(domain, "closed-1")  # a business rule: dead-lettered at once
    first = run_until_quiescent(celery, domain, timeout=60, report=quiet)
    assert first["quiescent"] and first["failed_this_run"] == 1
    assert first["dead_lettered"] == {QUEUE: 1}
    assert dlq.purge(celery, QUEUE) == 1

    entry_id = make_entry(domain, "second-run")
    second = run_until_quiescent(celery, domain, timeout=30, report=quiet)
    assert second["quiescent"], second  # the purged message of the first run is not owed
    assert second["failed_this_run"] == 0 and second["dead_lettered"] == {}
    assert applied(domain, entry_id) == 1


@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_it_waits_for_external_broker_messages_applied_or_dead_lettered(use_provider, redis_app):
    feeds.ERRORS_SEEN.clear()
    domain = use_provider(build_feeds({"provider": "inline"}))
    celery = redis_app(domain)
    with domain.domain_context():  # sent to the subscriber's queue before the run starts
        domain.brokers.publish("signups", {"user": POISON}, broker="feed")
        for user in ("ada", "bob"):
            domain.brokers.publish("signups", {"user": user}, broker="feed")
    summary = run_until_quiescent(celery, domain, timeout=60, report=quiet)
    assert summary["quiescent"]
    assert welcomed(domain) == {"ada": 1, "bob": 1}
    assert summary["failed_this_run"] == 1  # the poison user, after its retries
    assert feeds.ERRORS_SEEN == ["MailRefused"] * 3
