"""`tidings status`: per handler what waits in its queue, what runs, what it has not handled
yet and since when, its dead letters and its workers; read cheaply enough to watch."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from kombu import Queue
from rich.console import Console

from tests.engine.conftest import running_worker
from tests.engine.test_delivery_audit import applied, dead_lettered, keys, published
from tests.reliability.audit import build_audit, make_entries
from tests.waiting import wait_until
from tidings.app.bootstrap import create_celery_app
from tidings.app.cli_status import render
from tidings.app.status import read_status
from tidings.tasks.audit import audit_routes
from tidings.tasks.relay import relay_now


@pytest.fixture
def audited(use_provider):
    domain = use_provider(build_audit(f"status_{uuid.uuid4().hex[:8]}"))
    celery = create_celery_app(domain, task_always_eager=False)  # nothing consumes the queues
    yield domain, celery
    celery.close()


def by_handler(status):
    return {h.handler: h for h in status.handlers}


def test_the_backlog_counts_per_handler_what_it_has_neither_applied_nor_dead_lettered(audited):
    domain, celery = audited
    apply, count = keys(domain)
    routes, deliveries = audit_routes(domain), domain.storage.deliveries
    since = datetime.now(UTC) - timedelta(days=1)
    make_entries(domain, ["pending-1", "pending-2"])  # committed, not relayed
    assert {k: b.messages for k, b in deliveries.backlog(routes, since).items()} == {apply: 2, count: 2}
    summary = deliveries.pending_summary()
    assert (summary.pending, summary.failing) == (2, 0) and summary.oldest is not None

    done, dead, waiting = published(domain, celery, 3)[-3:]  # relays the two pending rows too
    applied(domain, apply, done), applied(domain, count, done)
    applied(domain, apply, dead), dead_lettered(domain, count, dead)
    applied(domain, count, waiting)
    backlog = deliveries.backlog(routes, since)
    assert {k: b.messages for k, b in backlog.items()} == {apply: 3, count: 2}
    assert all(b.oldest is not None for b in backlog.values())
    assert deliveries.pending_summary().pending == 0
    assert domain.storage.dead_letters.counts() == {"q": 1}
    # rows published before the audit window are not looked at (as the audit does not)
    assert deliveries.backlog(routes, datetime.now(UTC) + timedelta(seconds=1)) == {}


@pytest.mark.parametrize("provider", ["sqlite"], indirect=True)
def test_status_on_redis_reads_depth_in_flight_lag_and_dead_letters(use_provider, redis_app):
    domain = use_provider(build_audit(f"status_{uuid.uuid4().hex[:8]}"))
    celery = redis_app(domain, task_always_eager=False)
    make_entries(domain, [f"e-{i}" for i in range(4)])
    assert relay_now(celery, domain) == 4
    apply_queue = by_handler(read_status(domain, celery, workers=False))["Apply"].queue
    with celery.connection_for_write() as conn:
        held = conn.SimpleQueue(Queue(apply_queue, routing_key=apply_queue), accept=["json"])
        message = held.get(block=False)  # delivered, not acknowledged: in flight
        envelope = message.payload[0][0] if isinstance(message.payload, list) else message.payload
        domain.storage.dead_letters.record(
            {
                "entry_id": uuid.uuid4().hex,
                "handler": keys(domain)[0],
                "queue": apply_queue,
                "task": keys(domain)[0],
                "body": envelope,
                "message_id": envelope["id"],
                "error_type": "ValueError",
                "error_message": "bug",
                "attempts": 4,
                "failed_at": datetime.now(UTC).isoformat(),
            }
        )
        read_status(domain, celery, workers=False)  # the first reading also opens the pools
        status = read_status(domain, celery, workers=False)
        message.ack()
        held.close()
    rows = by_handler(status)
    assert (rows["Apply"].queue_depth, rows["Apply"].in_flight) == (3, 1)
    assert (rows["Count"].queue_depth, rows["Count"].in_flight) == (4, 0)
    assert (rows["Apply"].lag_messages, rows["Count"].lag_messages) == (3, 4)  # the dead letter is done
    assert rows["Apply"].lag_seconds > 0 and rows["Apply"].dead_letters == 1
    assert rows["Apply"].breaker is None and rows["Apply"].workers is None  # no breaker; not asked
    assert (status.outbox.pending, status.outbox.failing) == (0, 0)
    # cheap: the same four statements whatever the number of handlers or rows
    assert status.cost.statements == 4
    assert json.loads(json.dumps(status.to_dict()))["handlers"][0]["queue"] == status.handlers[0].queue
    console = Console(width=200, record=True)
    console.print(render(status))
    text = console.export_text()
    assert "Apply" in text and "outbox: 0 pending" in text


@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_status_sees_the_workers_and_the_lag_drain_to_zero(use_provider, redis_app):
    domain = use_provider(build_audit(f"status_{uuid.uuid4().hex[:8]}"))
    celery = redis_app(domain)
    with running_worker(celery):
        make_entries(domain, [f"e-{i}" for i in range(5)])

        def drained():
            status = read_status(domain, celery, workers=True, timeout=0.5)
            rows = by_handler(status).values()
            return status if all(h.lag_messages == 0 and h.workers == 1 for h in rows) else None

        status = wait_until(drained, timeout=30, message="every handler caught up, one worker each")
    assert status.workers.checked and len(status.workers.names) == 1
    assert all(h.queue_depth == 0 and h.in_flight == 0 for h in status.handlers)


def test_the_command_prints_json_and_names_the_fix_when_the_tables_are_missing(tmp_path):
    """`tidings status` as a user runs it, on the bookshelf's embedded SQLite default."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tidings = str(Path(sys.executable).with_name("tidings"))
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TIDINGS_", "DATABASE_URL", "BROKER_URL"))
    }

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [tidings, *argv, "--domain", "tidings.examples.bookshelf"]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    missing = run("status")
    assert missing.returncode == 1
    assert (
        "`tidings db create` with the same --domain" in missing.stderr and "Traceback" not in missing.stderr
    )
    assert run("db", "create").returncode == 0
    shown = run("status", "--json")
    assert shown.returncode == 0, shown.stderr
    reading = json.loads(shown.stdout)
    assert reading["transport"] == "sqla" and reading["workers"]["checked"] is False
    rows = {h["handler"]: h for h in reading["handlers"]}
    assert rows["BookCommandHandler"]["queue_depth"] == 0 and rows["BookCommandHandler"]["lag_messages"] == 0
    assert (
        rows["SupplierRestockSubscriber"]["lag_messages"] is None
    )  # a subscriber: no outbox rows of its own
