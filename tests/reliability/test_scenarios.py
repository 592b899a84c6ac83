"""Fault scenarios on services of the suite's own, audited per handler: every committed message
is applied exactly once or dead-lettered (0 lost, 0 doubled). A scenario that does not hold
yet is a strict xfail naming its gap in issue 10: it runs, proves the gap, and flips when fixed."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from tests.reliability.audit import HandlerAudit, make_entries
from tests.reliability.conftest import AuditRun, audit_run, since
from tidings.domain.sql import make_engine
from tidings.outbox.relay import Backoff, SqlOutbox, relay_pending_messages
from tidings.outbox.tables import PUBLISHED
from tidings.tasks.relay import outbox_store, relay_now

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

EVENTS = 200  # per scenario: enough to have deliveries in every state when the fault hits


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level("ERROR")


def assert_nothing_lost_or_doubled(result: dict[str, HandlerAudit]) -> None:
    for handler, a in result.items():
        assert a.committed > 0, f"{handler}: nothing was committed"
        assert (a.lost, a.doubled) == (0, 0), f"{handler}: {a}"


class Producer:
    """Commits entries from a thread, as an API would under load; a commit that fails (the
    database is down) is retried, so `committed` counts only what really committed."""

    def __init__(self, run: AuditRun, count: int, prefix: str = "load", pace: float = 0.01) -> None:
        self.run, self.count, self.prefix, self.pace = run, count, prefix, pace
        self.committed = 0
        self.failures = 0
        self.latencies: list[float] = []  # seconds per successful commit, faults included
        self.thread = threading.Thread(target=self._produce, daemon=True)

    def _produce(self) -> None:
        while self.committed < self.count:
            begun = time.monotonic()
            try:
                make_entries(self.run.domain, [f"{self.prefix}-{self.committed}"])
            except Exception:  # noqa: BLE001 - the database is down: try again
                self.failures += 1
                time.sleep(0.05)  # not waiting on a result: pacing the retries of a producer
                continue
            self.latencies.append(time.monotonic() - begun)
            self.committed += 1
            time.sleep(self.pace)  # a steady load of about 1/pace commits per second

    def __enter__(self) -> Producer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(timeout=120)

    def p99(self) -> float | None:
        """The 99th percentile commit time over the run (a fault's commits included)."""
        return p99(self.latencies) if self.latencies else None

    def join(self) -> None:
        self.thread.join(timeout=120)
        assert not self.thread.is_alive(), "the producer did not finish"


def drain(run: AuditRun, timeout: float = 60) -> None:
    """Relay whatever is still pending (as beat would) until every handler settled."""

    def tick() -> bool:
        if outbox_store(run.domain).status().pending:
            relay_now(run.celery, run.domain)
        return run.settled()

    run.wait(tick, "every committed message applied or dead-lettered", timeout=timeout)


def ready(run: AuditRun) -> None:
    """Wait until the workers handle messages (one warm-up entry applied by both handlers)."""
    make_entries(run.domain, ["warm-up"])
    run.wait(lambda: all(a.applied for a in run.audit().values()), "the worker to be ready")


def under_load(run: AuditRun, producer: Producer) -> None:
    """Wait until the load is well under way: a quarter committed, some of it applied."""
    run.wait(
        lambda: producer.committed >= EVENTS // 4 and run.audit()["Apply"].applied > 0,
        "the load to be under way",
    )


# ---- holds today -------------------------------------------------------------------------------
def test_sigterm_of_a_worker_under_load_loses_and_doubles_nothing(fault_run):
    run = fault_run
    first = run.worker()
    ready(run)
    with Producer(run, EVENTS) as producer:
        under_load(run, producer)
        at_fault = producer.committed
        start = time.monotonic()
        assert first.terminate() == 0, first.output()  # warm shutdown: running tasks finish
        assert at_fault < EVENTS  # the fault hit while the load was running
        run.worker()
        producer.join()
    drain(run)
    assert_nothing_lost_or_doubled(run.report("SIGTERM of a worker under load", since(start), producer.p99()))


def test_postgresql_stopped_immediately_and_restarted_under_load_loses_and_doubles_nothing(
    postgres_cluster, redis_server, tmp_path
):
    with audit_run(postgres_cluster.url, redis_server.url, tmp_path) as run:
        worker = run.worker()
        ready(run)
        with Producer(run, EVENTS) as producer:
            under_load(run, producer)
            postgres_cluster.stop_immediately()  # every backend killed mid-transaction
            start = time.monotonic()
            assert producer.committed < EVENTS  # the fault hit while the load was running
            postgres_cluster.restart()
            producer.join()
        drain(run)
        result = run.report("PostgreSQL immediate stop + restart", since(start), producer.p99())
        assert worker.alive(), worker.output()
    assert_nothing_lost_or_doubled(result)


def test_racing_relays_publish_each_row_once_and_every_handler_applies_it_once(fault_run):
    run = fault_run
    domain = run.domain
    ids = write_outbox_rows(domain, EVENTS * 2)
    published: list[list[str]] = [[], []]
    start_line = threading.Barrier(2)

    def relay(n: int) -> None:
        engine = make_engine(domain.outbox_database.uri)  # its own pool, as another process
        try:
            start_line.wait(timeout=10)
            from tidings.tasks.relay import publisher

            with publisher(run.celery, domain) as publish:

                def counted(envelope: str) -> None:
                    publish(envelope)
                    published[n].append(envelope)

                relay_pending_messages(
                    SqlOutbox(
                        SimpleNamespace(engine=engine), domain.outbox_database.outbox_table, domain.name
                    ),
                    counted,
                    50,
                    Backoff(),
                )
        finally:
            engine.dispose()

    start = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(relay, 0), pool.submit(relay, 1)]:
            future.result(timeout=120)
    assert len(published[0]) + len(published[1]) == len(ids)  # each row published once
    assert published[0] and published[1], "one relay did everything"
    run.worker()
    drain(run)
    assert_nothing_lost_or_doubled(run.report("racing relays", since(start)))
    assert {r for r in outbox_statuses(run)} == {PUBLISHED}


def settle(run: AuditRun, timeout: float) -> bool:
    """`drain`, reporting instead of raising: an xfail scenario prints its row, then fails."""
    try:
        drain(run, timeout=timeout)
    except AssertionError:
        return False
    return True


def write_outbox_rows(domain, count: int) -> set[str]:
    """`count` EntryMade messages written straight into the outbox, as units of work would."""
    import sqlalchemy as sa

    from tidings.outbox.writer import outbox_rows

    EntryMade = domain.registry["event"]["EntryMade"]
    messages = [
        domain.event_message(EntryMade(entry_id=f"race-{i}", label=f"race-{i}")) for i in range(count)
    ]
    with domain.outbox_database.engine.begin() as conn:
        conn.execute(sa.insert(domain.outbox_database.outbox_table), outbox_rows(messages, domain.name))
    return {m.id for m in messages}


def outbox_statuses(run: AuditRun) -> Iterator[str]:
    import sqlalchemy as sa

    t = run.domain.outbox_database.outbox_table
    with run.domain.outbox_database.engine.connect() as conn:
        yield from conn.execute(sa.select(t.c.status)).scalars()


@pytest.mark.parametrize("moment", ["before", "after"])
def test_sigkill_of_a_worker_child_mid_task_is_absorbed_by_the_inbox(
    redis_server, postgres_url, tmp_path, moment
):
    """The child running `Apply` is SIGKILLed inside the handler (`before` its commit) or after
    the commit but before the ack (`after`): the message is delivered again and the inbox
    makes the second run of a committed message a no-op."""
    pause = tmp_path / "paused-pid"
    with audit_run(postgres_url, redis_server.url, tmp_path, visibility_timeout=4) as run:
        worker = run.worker(AUDIT_PAUSE_FILE=str(pause), AUDIT_PAUSE_LABEL="victim", AUDIT_PAUSE_AT=moment)
        make_entries(run.domain, [f"k-{i}" for i in range(10)])
        make_entries(run.domain, ["victim"])
        child = int(run.wait(lambda: pause.exists() and pause.read_text(), "the child to pause"))
        make_entries(run.domain, [f"k-{i}" for i in range(10, EVENTS // 4)])
        os.kill(child, signal.SIGKILL)
        start = time.monotonic()
        drain(run)
        recovery = since(start)
        assert worker.alive(), worker.output()
        result = run.report(f"SIGKILL of a worker child mid-task ({moment} commit)", recovery)
    assert_nothing_lost_or_doubled(result)


def test_redis_sigkilled_and_restarted_without_persistence_loses_nothing(fault_run, redis_server):
    """Every delivery sits in a handler queue when Redis is SIGKILLed and restarted empty: the
    delivery audit, run by the worker's embedded beat with the default settings, sends each
    again once its grace (`audit_grace`, 20 s) has passed; all are applied within 60 s."""
    run = fault_run
    assert run.domain.settings.outbox.audit_grace == 20.0  # the default: nothing tuned here
    make_entries(run.domain, [f"queued-{i}" for i in range(EVENTS // 2)])
    relay_now(run.celery, run.domain)  # every delivery now sits in a handler queue on Redis
    assert set(outbox_statuses(run)) == {PUBLISHED}
    redis_server.kill()
    redis_server.restart()  # empty: no persistence
    start = time.monotonic()
    assert redis_server.client().dbsize() == 0  # the queues are gone
    run.worker(beat=True)
    settled = settle(run, timeout=60)
    result = run.report("Redis SIGKILL + restart without persistence", since(start) if settled else None)
    assert settled, run.logs()
    assert since(start) <= 60
    assert_nothing_lost_or_doubled(result)
    assert all(a.dead_lettered == 0 for a in result.values())


FREEZE_SECONDS = 10


def commit_latencies(run: AuditRun, count: int, prefix: str) -> list[float]:
    latencies = []
    for i in range(count):
        begun = time.monotonic()
        make_entries(run.domain, [f"{prefix}-{i}"])
        latencies.append(time.monotonic() - begun)
    return latencies


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_commits_do_not_wait_while_redis_is_frozen_for_10_seconds(fault_run, redis_server):
    run = fault_run
    run.worker()
    normal = p99(commit_latencies(run, 30, "normal"))
    during: list[float] = []
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.is_set():
            begun = time.monotonic()
            make_entries(run.domain, [f"frozen-{i}"])
            during.append(time.monotonic() - begun)
            i += 1

    producer = threading.Thread(target=produce, daemon=True)
    with redis_server.frozen():
        producer.start()
        stop.wait(FREEZE_SECONDS)  # the fault's duration, not a wait for a result
        stop.set()
    start = time.monotonic()
    producer.join(timeout=60)
    assert during, "no commit was attempted while Redis was frozen"
    # Recovery: what a frozen publish lost is re-sent by the audit once it is `audit_grace`
    # (20 s) old and the queues have drained, plus the drain of what the producer committed
    # meanwhile (~5,000 commits in 10 s: ~40 s here). The bound grows with that backlog, at
    # a drain of 100 events/s (a loaded CI machine; one worker drains 200-400/s here).
    settled = settle(run, timeout=45 + len(during) / 100)
    timing = f"commit p99 {p99(during) * 1000:.0f} ms, normal {normal * 1000:.0f} ms"
    run.report(f"Redis frozen {FREEZE_SECONDS} s ({timing})", since(start) if settled else None, p99(during))
    assert settled
    # Within 2x the normal p99 (a 50 ms floor: the normal p99 of a local commit is a few ms).
    assert p99(during) <= max(2 * normal, 0.05), f"commit p99 {p99(during):.3f}s vs normal {normal:.3f}s"
