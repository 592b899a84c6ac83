"""Subscription settings become Celery task options; the DLQ can be switched off."""

from __future__ import annotations

import logging

from tests.engine import ledger
from tests.engine.ledger import build_ledger, make_entry
from tidings.app.testing import eager_app
from tidings.tasks import dlq


def test_retry_settings_map_onto_the_handlers_celery_task(tmp_path):
    domain = build_ledger(tmp_path)
    domain.config["server"]["subscriptions"] = {
        "Apply": {
            "max_retries": 5,
            "retry_delay_seconds": 2,
            "retry_backoff": True,
            "retry_backoff_max": 30,
            "retry_jitter": True,
        }
    }
    task = eager_app(domain).tasks["tidings.ledger.Apply"]
    assert (task.max_retries, task.default_retry_delay) == (5, 2)
    assert (task.retry_backoff, task.retry_backoff_max, task.retry_jitter) == (2, 30, True)
    assert task.acks_late is True


def test_with_the_dlq_off_a_failed_message_is_dropped_with_an_error_naming_it(tmp_path, caplog):
    ledger.FAILURES.clear()
    domain = build_ledger(tmp_path)
    domain.config["server"]["stream_subscription"]["enable_dlq"] = False
    celery = eager_app(domain)
    with caplog.at_level(logging.ERROR, logger="tidings.tasks"):
        Entry = domain.registry["aggregate"]["Entry"]
        with domain.domain_context():
            entry = Entry(label="doomed")
            ledger.FAILURES[entry.id] = 100
            entry.raise_(domain.registry["event"]["EntryMade"](entry_id=entry.id, label="doomed"))
            domain.repository_for(Entry).add(entry)
    assert "dropped after 4 attempt(s) (DLQ disabled)" in caplog.text
    message_id = domain.event_store_database.read_events("ledger::entry")[0]["message_id"]
    assert message_id in caplog.text
    assert dlq.list_entries(celery, "ledger.apply") == []
    assert make_entry  # the helper stays importable for the other tests
