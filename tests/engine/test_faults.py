"""Fault injection: a worker killed mid-handler, a broker down during commits, racing relays,
and the retry/DLQ flow on RabbitMQ. Real services (PostgreSQL, Redis, RabbitMQ), real workers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from kombu import Connection, Exchange, Queue

from tests.engine import ledger
from tests.engine.conftest import running_worker
from tests.engine.ledger import applied, build_ledger, make_entry, make_failing_entry
from tests.engine.ledger_worker import build_named_ledger, celery_overrides
from tests.services import BROKER_URL, REDIS_URL, require_rabbitmq
from tests.waiting import wait_until
from tidings.app.bootstrap import create_celery_app
from tidings.domain.sql import make_engine
from tidings.outbox.relay import Backoff, SqlOutbox, relay_pending_messages
from tidings.outbox.tables import PENDING, PUBLISHED
from tidings.outbox.writer import outbox_rows
from tidings.tasks import dlq
from tidings.tasks.relay import outbox_store, relay_now

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _quiet_celery_logs(caplog):
    caplog.set_level("WARNING")


# ---- helpers ---------------------------------------------------------------------------------
def outbox_rows_of(domain) -> list[dict]:
    t = domain.outbox_database.outbox_table
    with domain.outbox_database.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(t).order_by(t.c.id))]


def inbox_count(domain) -> int:
    t = domain.outbox_database.inbox_table
    with domain.outbox_database.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class Broker:
    """One real broker for one test: its URL, isolation and how to count what it still holds."""

    kind: str
    url: str
    domain_name: str
    keyprefix: str = ""

    def queue_names(self) -> list[str]:
        return [f"{self.domain_name}.apply", f"{self.domain_name}.outbox"]

    def held(self) -> int:
        """Messages the broker still holds for this domain: queued, or delivered but unacked."""
        if self.kind == "redis":
            with redis.Redis.from_url(self.url) as client:
                return sum(client.llen(self.keyprefix + q) for q in self.queue_names()) + client.hlen(
                    self.keyprefix + "unacked"
                )
        with Connection(self.url) as conn:
            channel = conn.default_channel
            return sum(
                Queue(q, routing_key=q)(channel).queue_declare(passive=True).message_count
                for q in self.queue_names()
            )


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def broker(request):
    name = f"ledger_{uuid.uuid4().hex[:8]}"
    if request.param == "redis":
        yield Broker("redis", REDIS_URL, name, keyprefix=request.getfixturevalue("redis_prefix"))
        return
    require_rabbitmq()
    yield Broker("rabbitmq", BROKER_URL, name)
    delete_rabbitmq_queues(name)


def delete_rabbitmq_queues(domain_name: str) -> None:
    """Remove what a test domain declared on the shared RabbitMQ (its queues and exchange)."""
    with Connection(BROKER_URL) as conn:
        for suffix in ("apply", "outbox", "apply.dlq"):
            Queue(f"{domain_name}.{suffix}")(conn.default_channel).delete()
        Exchange(f"{domain_name}.outbox")(conn.default_channel).delete()


# The `celery` command reads these (BROKER_URL becomes CELERY_BROKER_URL, which then overrides
# the app's broker_url): tests/services.py's BROKER_URL (RabbitMQ) must not reach the worker.
CELERY_CLI_ENV = {"APP", "BROKER_URL", "RESULT_BACKEND", "LOADER", "CONFIG_MODULE"}


class WorkerProcess:
    """`celery worker` (prefork, 2 processes) for the ledger domain in its own process group,
    so that SIGKILL reaches the main process and its pool children at once."""

    def __init__(self, log: Path, env: dict[str, str], domain_name: str, number: int) -> None:
        self.log = log
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.engine.ledger_worker",
            "worker",
            "-Q",
            f"{domain_name}.apply,{domain_name}.outbox",
            "--pool",
            "prefork",
            "-c",
            "2",
            "-l",
            "WARNING",
            "-n",
            f"{domain_name}-{number}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> int:
        """SIGKILL the whole process group; returns the main process's exit code."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextmanager
def worker_process(
    tmp_path: Path, broker: Broker, database_url: str, number: int, env: dict | None = None, **files: Path
):
    """A worker subprocess, always killed on exit; `files` set LEDGER_<NAME>_FILE, `env` more."""
    extra = env or {}
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in CELERY_CLI_ENV and not k.startswith(("CELERY_", "LEDGER_"))
    }
    env.update(
        PYTHONPATH=str(ROOT),
        LEDGER_DOMAIN=broker.domain_name,
        LEDGER_DATABASE_URL=database_url,
        LEDGER_BROKER_URL=broker.url,
        LEDGER_KEYPREFIX=broker.keyprefix,
    )
    env.update({f"LEDGER_{name.upper()}_FILE": str(path) for name, path in files.items()})
    worker = WorkerProcess(tmp_path / f"worker-{number}.log", {**env, **extra}, broker.domain_name, number)
    try:
        yield worker
    finally:
        worker.kill()


def results(path: Path) -> dict[str, list[str]]:
    """What a worker's Apply tasks returned, by entry id (see LEDGER_RESULTS_FILE)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        out.setdefault(record["entry_id"], []).append(record["result"])
    return out


def written(path: Path, content: str) -> bool:
    return path.exists() and path.read_text() == content


def wait_for(worker: WorkerProcess, condition, what: str, timeout: float = 30) -> None:
    """`wait_until`, reporting the worker's log when it times out."""
    try:
        wait_until(condition, timeout=timeout, message=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- worker log ---\n{worker.output()}") from None


@pytest.fixture
def crash_ledger(broker, use_provider):
    """A ledger domain on PostgreSQL and `broker`, with its Celery app (for the relay kicks)."""
    domain = use_provider(build_named_ledger(broker.domain_name))
    domain.config["brokers"]["default"] = {
        "provider": "redis" if broker.kind == "redis" else "amqp",
        "url": broker.url,
    }
    domain.init()
    celery = create_celery_app(domain, **celery_overrides(broker.url, broker.keyprefix))
    yield domain, celery
    celery.close()


# ---- 1. SIGKILL in the middle of a handler ------------------------------------------------------
@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_a_worker_killed_with_sigkill_mid_handler_applies_every_entry_exactly_once_after_restart(
    crash_ledger, broker, postgres_url, tmp_path
):
    domain, celery = crash_ledger
    slow_file, stall_file = tmp_path / "slow-entry", tmp_path / "stall-entry"
    first_results, second_results = tmp_path / "results-1.jsonl", tmp_path / "results-2.jsonl"

    with worker_process(
        tmp_path, broker, postgres_url, 1, slow=slow_file, stall=stall_file, results=first_results
    ) as first:
        before = [make_entry(domain, f"before-{i}") for i in range(3)]  # relayed by the kicks
        wait_for(
            first,
            lambda: all(applied(domain, e) == 1 for e in before),
            "the first worker to apply the first entries",
        )
        # Both pool processes get stuck: one inside the handler (before its commit), the
        # other after the commit but before the message is acknowledged.
        slow = make_entry(domain, "slow-1")
        stall = make_entry(domain, "stall-1")
        wait_for(
            first,
            lambda: written(slow_file, slow) and written(stall_file, stall),
            "both pool processes to be stuck",
            timeout=20,
        )
        after = [make_entry(domain, f"after-{i}") for i in range(3)]
        relay_now(celery, domain)  # beside the worker's relay loop, which may hold some rows
        wait_until(
            lambda: {r["status"] for r in outbox_rows_of(domain)} == {PUBLISHED},
            message="every row in the broker",
        )

        assert first.kill() == -signal.SIGKILL
        assert applied(domain, slow) is None  # killed before its commit
        assert applied(domain, stall) == 1  # killed after its commit, before the ack
        assert all(applied(domain, e) is None for e in after)
        assert inbox_count(domain) == len(before) + 1

    everything = [*before, slow, stall, *after]
    with worker_process(tmp_path, broker, postgres_url, 2, results=second_results) as second:
        wait_for(
            second,
            lambda: all(applied(domain, e) for e in everything) and stall in results(second_results),
            "the restarted worker to get every message",
        )
        wait_for(second, lambda: broker.held() == 0, "the broker to hold nothing left to deliver", timeout=15)
        assert second.alive(), second.output()
    assert {e: applied(domain, e) for e in everything} == {e: 1 for e in everything}
    assert inbox_count(domain) == len(everything)
    redelivered = results(second_results)
    assert redelivered[stall] == ["duplicate"]  # redelivered, then skipped by the inbox
    assert redelivered[slow] == ["handled"]
    assert all(redelivered[e] == ["handled"] for e in after)
    assert not set(before) & set(redelivered)  # acknowledged messages are not delivered again


# ---- 2. Broker unreachable during commits ---------------------------------------------------------
@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_commits_succeed_while_the_broker_is_down_and_every_row_is_delivered_once_it_is_back(
    use_provider, redis_app, caplog
):
    domain = use_provider(build_ledger())
    dead_url = f"redis://127.0.0.1:{closed_port()}/0"
    domain.config["brokers"]["default"] = {"provider": "redis", "url": dead_url}
    domain.config["outbox"]["backoff_base"] = 60.0  # no failed row comes due during the test
    domain.init()
    # A publish to a refused port fails after task_publish_retry_policy's retries (3 x 0.2 s by
    # default); broker_connection_timeout bounds the connect to a host that does not answer.
    dead = create_celery_app(
        domain,
        broker_connection_timeout=1,
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.1,
            "interval_max": 0.1,
        },
    )

    started = datetime.now(UTC)
    entries = [make_entry(domain, f"offline-{i}") for i in range(5)]
    assert datetime.now(UTC) - started < timedelta(seconds=10)  # no commit waits on the broker
    assert domain.engine.kicker.wait_idle(timeout=30)  # the kicker's thread tried, and gave up
    kick_failures = [
        r
        for r in caplog.records
        if r.name == "tidings.kick"
        and r.levelname == "WARNING"
        and r.exc_info
        and isinstance(r.exc_info[1], redis.ConnectionError)
    ]
    # the relay wake-ups failed and were logged (wake-ups arriving meanwhile are merged into one)
    assert 1 <= len(kick_failures) <= len(entries)
    rows = outbox_rows_of(domain)
    assert [r["status"] for r in rows] == [PENDING] * len(entries)

    # Relay ticks while the broker is down: nothing is published, every row stays pending and
    # each one tried is backed off with its error (at most one tick per row to try them all).
    for _ in range(len(entries)):
        assert relay_now(dead, domain) == 0
        rows = outbox_rows_of(domain)
        if all(r["attempts"] > 0 for r in rows):
            break
    now = datetime.now(UTC)
    assert [r["status"] for r in rows] == [PENDING] * len(entries)
    assert all(r["attempts"] == 1 for r in rows), rows
    assert all("OperationalError" in r["last_error"] for r in rows)
    assert all(aware(r["next_attempt_at"]) > now + timedelta(seconds=30) for r in rows)
    assert outbox_store(domain).status().failing == len(entries)
    assert all(applied(domain, e) is None for e in entries)

    # The broker is back (a new app on the real Redis); the backoff has run out.
    live = redis_app(domain)
    t = domain.outbox_database.outbox_table
    with domain.outbox_database.engine.begin() as conn:
        conn.execute(sa.update(t).values(next_attempt_at=datetime.now(UTC)))
    with running_worker(live):  # its relay loop publishes them; no kick needed
        wait_until(
            lambda: all(applied(domain, e) is not None for e in entries), message="every entry applied"
        )
    assert [applied(domain, e) for e in entries] == [1] * len(entries)
    assert inbox_count(domain) == len(entries)
    rows = outbox_rows_of(domain)
    assert [r["status"] for r in rows] == [PUBLISHED] * len(entries)
    assert all(r["last_error"] is None for r in rows)


# ---- 3. Two relays racing over 5,000 rows ---------------------------------------------------------
ROWS = 5000


def write_outbox_rows(domain, count: int) -> set[str]:
    """`count` EntryMade envelopes written as outbox rows (what a unit of work writes)."""
    EntryMade = domain.registry["event"]["EntryMade"]
    messages = [
        domain.event_message(EntryMade(entry_id=str(uuid.uuid4()), label=f"race-{i}")) for i in range(count)
    ]
    with domain.outbox_database.engine.begin() as conn:
        conn.execute(sa.insert(domain.outbox_database.outbox_table), outbox_rows(messages, domain.name))
    return {m.id for m in messages}


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["postgresql", "sqlite"], indirect=True)
def test_two_relays_racing_over_5000_rows_publish_every_row_exactly_once(use_provider, provider):
    domain = use_provider(build_ledger())
    ids = write_outbox_rows(domain, ROWS)
    table = domain.outbox_database.outbox_table
    start = threading.Barrier(2)

    def relay() -> list[str]:
        published: list[str] = []
        engine = make_engine(domain.outbox_database.uri)  # its own pool, as another process
        try:
            start.wait(timeout=10)
            relay_pending_messages(
                SqlOutbox(engine, table, domain.name),
                lambda envelope: published.append(json.loads(envelope)["id"]),
                batch_size=100,
                backoff=Backoff(),
            )
        finally:
            engine.dispose()
        return published

    with ThreadPoolExecutor(2) as pool:
        first, second = [f.result(timeout=120) for f in [pool.submit(relay), pool.submit(relay)]]

    assert len(first) == len(set(first)) and len(second) == len(set(second))
    both = set(first) & set(second)
    assert not both, f"{len(both)} rows were published by both relays"
    assert set(first) | set(second) == ids
    assert len(first) + len(second) == ROWS
    assert {r["status"] for r in outbox_rows_of(domain)} == {PUBLISHED}
    if provider["provider"] == "postgresql":  # SKIP LOCKED: neither relay waits for the other
        assert first and second, f"one relay did everything: {len(first)} / {len(second)}"


# ---- 4. Retries, DLQ and replay on RabbitMQ ---------------------------------------------------------
@pytest.fixture
def rabbit_ledger(use_provider):
    require_rabbitmq()
    ledger.FAILURES.clear()
    ledger.ERRORS_SEEN.clear()
    name = f"ledger_{uuid.uuid4().hex[:8]}"
    domain = use_provider(build_named_ledger(name))
    domain.config["brokers"]["default"] = {"provider": "amqp", "url": BROKER_URL}
    domain.init()
    # The in-process worker's event loop only notices `stop()` when its poll returns: on
    # RabbitMQ with no timer due that is up to 10 s, as long as start_worker's shutdown_timeout.
    # An AMQP heartbeat every 2 s (a timer at 1 s) makes it stop in about a second.
    celery = create_celery_app(domain, broker_heartbeat=2)
    yield domain, celery, f"{name}.apply"
    celery.close()
    delete_rabbitmq_queues(name)


@pytest.mark.postgres
@pytest.mark.rabbitmq
@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_on_rabbitmq_an_always_failing_handler_is_tried_max_retries_plus_one_times_then_dead_lettered(
    rabbit_ledger,
):
    domain, celery, queue = rabbit_ledger
    assert celery.conf.broker_url.startswith("amqp://")
    with running_worker(celery):
        entry_id = make_failing_entry(domain, "always", failures=10**6)
        entries = wait_until(lambda: dlq.list_entries(celery, queue), message="a DLQ entry")
        assert len(ledger.ERRORS_SEEN) == 4  # max_retries (3) + 1 attempts
        assert len({message_id for _, message_id in ledger.ERRORS_SEEN}) == 1
        assert len(entries) == 1
        entry = entries[0]
        assert entry["attempts"] == 4
        assert entry["queue"] == queue and entry["task"] == f"tidings.{domain.name}.Apply"
        assert entry["error_type"] == "DownstreamError"
        assert "flaky downstream" in entry["error_message"]
        assert "Traceback" in entry["traceback"] and entry["failed_at"]
        assert entry["message_id"] == entry["body"]["id"]
        assert applied(domain, entry_id) is None
        assert dlq.list_entries(celery, queue) == entries  # listing leaves the entry in place

        ledger.FAILURES[entry_id] = 0  # the fix is deployed
        assert dlq.replay(celery, queue) == 1
        wait_until(lambda: applied(domain, entry_id) == 1, message="applied after replay")
    assert dlq.list_entries(celery, queue) == []
    assert applied(domain, entry_id) == 1
    assert len(ledger.ERRORS_SEEN) == 4  # the replay succeeded at once


def test_a_failed_publish_holds_back_the_rest_of_its_batch_in_order(tmp_path):
    """Rows after the failed one wait with it, so a stream's later rows never overtake it."""
    from datetime import UTC, datetime, timedelta

    import sqlalchemy as sa

    from tidings.outbox.relay import Backoff, SqlOutbox
    from tidings.outbox.tables import define_outbox
    from tidings.outbox.writer import outbox_rows

    class Row:
        def __init__(self, n):
            self.id, self.stream, self.type = f"m{n}", "s::a-1", "T"

        def to_json(self):
            return json.dumps({"id": self.id})

    engine = sa.create_engine(f"sqlite:///{tmp_path}/o.db")
    table = define_outbox(sa.MetaData())
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(table), outbox_rows([Row(n) for n in range(3)], "ledger"))
    published: list[str] = []

    def broker_down(envelope: str) -> None:
        raise ConnectionError("broker down")

    outbox = SqlOutbox(engine, table, "ledger")
    assert outbox.relay_batch(broker_down, 10, Backoff(base=60)) == 0
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.attempts, table.c.next_attempt_at)).all()
    assert [r.attempts for r in rows] == [1, 1, 1]
    later = datetime.now(UTC) + timedelta(seconds=30)
    assert all(r.next_attempt_at.replace(tzinfo=UTC) > later for r in rows)
    assert outbox.relay_batch(lambda e: published.append(e), 10, Backoff()) == 0  # none due yet
    assert published == []
