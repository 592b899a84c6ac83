"""Scenario `lanes` (issue 12 item 1): a fast handler's commit -> handled latency while 16 slow
(1.5 s) messages are queued for another handler, under `tidings server` as real processes:

- before: one worker child on every queue (`tidings server --no-lanes --pool prefork
  --concurrency 2`, the topology the issue measured at 12.5 s);
- after: the default lanes (a worker child per handler, threads x2, and the relay's own).

Rounds interleave before/after; each round has a database and domain (queues) of its own.
`python -m bench lanes [--n FAST] [--runs R]`; target: after p99 <= 100 ms.

This module is also the benchmark's domain for the server's children: with BENCH_LANES_DB
set, importing it builds `domain` (TIDINGS_DOMAIN=bench.lanes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import sqlalchemy as sa

from bench.harness import (
    REDIS_URL,
    RESULTS,
    ROOT,
    WORKER_ENV,
    Report,
    engine_for,
    percentile,
    scratch_database,
    wait_for,
)
from bench.harness import redis_prefix as keyprefix
from tidings import Domain, handle
from tidings.domain.context import current_uow
from tidings.fields import Float, Identifier

SLOW, SLOW_SECONDS = 16, 1.5
RECORD = sa.text(
    "INSERT INTO bench_lane_effect (message_id, handler, posted_at, applied_at) "
    "VALUES (:id, :handler, :posted, extract(epoch from clock_timestamp()))"
)
TOPOLOGIES = {  # label -> (server options, slow messages queued first, [outbox] after_commit)
    "single worker (prefork 2)": (["--no-lanes", "--pool", "prefork", "--concurrency", "2"], SLOW, "kick"),
    "lanes (default)": ([], SLOW, "kick"),
    # the same pipeline with nothing slow queued: what the commit -> relay -> handler path costs
    "lanes, nothing slow queued": ([], 0, "kick"),
    # the producer relays its own commits from a thread (no relay task hop; see "The outbox relay")
    "lanes, after_commit = thread": ([], SLOW, "thread"),
}


def build_domain(
    name: str, database_url: str, broker_url: str, prefix: str, after_commit: str = "kick"
) -> Domain:
    domain = Domain(name)
    domain.config["outbox"]["after_commit"] = after_commit
    domain.config["databases"]["default"] = {"provider": "postgresql", "database_uri": database_url}
    domain.config["event_store"] = {"provider": "postgresql"}
    domain.config["brokers"]["default"] = {"provider": "celery", "url": broker_url}
    domain.config["celery"] = {"broker_transport_options": {"global_keyprefix": prefix}}

    @domain.aggregate
    class Ticket:
        pass

    @domain.event(part_of=Ticket)
    class ReportRequested:
        ticket_id: Identifier(required=True)
        posted_at: Float(required=True)

    @domain.event(part_of=Ticket)
    class NoticeRequested:
        ticket_id: Identifier(required=True)
        posted_at: Float(required=True)

    @domain.event_handler(part_of=Ticket)
    class BuildReport:
        @handle(ReportRequested)
        def build(self, event: Any) -> None:
            time.sleep(SLOW_SECONDS)
            _record("BuildReport", event)

    @domain.event_handler(part_of=Ticket)
    class SendNotice:
        @handle(NoticeRequested)
        def send(self, event: Any) -> None:
            _record("SendNotice", event)

    return domain


def _record(handler: str, event: Any) -> None:
    session = current_uow.get().session_for(_database())
    session.conn.execute(RECORD, {"id": event._message.id, "handler": handler, "posted": event.posted_at})


def _database() -> Any:
    from tidings import current_domain

    return current_domain.databases["default"]


def _post(domain: Domain, event: str) -> None:
    cls = domain.registry["event"][event]
    with domain.domain_context():
        domain.publish(cls(ticket_id=str(uuid.uuid4()), posted_at=time.time()))


def _round(options: list[str], fast: int, slow: int, after_commit: str) -> tuple[float, float]:
    """One server, `slow` slow messages then `fast` fast ones at 10/s: the fast p50 and p99 in ms."""
    from tidings.app.bootstrap import runtime_for

    name = f"bench_lanes_{uuid.uuid4().hex[:6]}"
    with scratch_database() as url, keyprefix() as prefix:
        env = {"BENCH_LANES_DB": url, "BENCH_LANES_NAME": name, "BENCH_LANES_PREFIX": prefix}
        domain = build_domain(name, url, REDIS_URL, prefix, after_commit)
        domain.init()
        domain.create_tables()
        engine = engine_for(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE bench_lane_effect (message_id text, handler text, posted_at float8, "
                "applied_at float8)"
            )
        runtime_for(domain)  # the after-commit kick of the relay
        server = _server(options, env)
        try:

            def handled(handler: str) -> list[Any]:
                with engine.connect() as conn:
                    return list(
                        conn.execute(
                            sa.text("SELECT posted_at, applied_at FROM bench_lane_effect WHERE handler = :h"),
                            {"h": handler},
                        )
                    )

            _post(domain, "NoticeRequested")  # warm-up: every child is up
            wait_for(lambda: handled("SendNotice"), 90, "the server to start", interval=0.1)
            with engine.begin() as conn:
                conn.exec_driver_sql("DELETE FROM bench_lane_effect")
            for _ in range(slow):
                _post(domain, "ReportRequested")
            for _ in range(fast):
                _post(domain, "NoticeRequested")
                time.sleep(0.1)
            rows = wait_for(
                lambda: (r := handled("SendNotice")) and len(r) >= fast and r,
                SLOW * SLOW_SECONDS + 60,
                "the fast messages",
                interval=0.1,
            )
            latencies = [(a - p) * 1000 for p, a in rows]
            return percentile(latencies, 50), percentile(latencies, 99)
        finally:
            _stop(server)
            domain.dispose()
            engine.dispose()


def _server(options: list[str], env: dict[str, str]) -> subprocess.Popen:
    RESULTS.mkdir(exist_ok=True)
    log = open(RESULTS / "processes.log", "a")  # noqa: SIM115 - the server's lines, out of the tables
    tidings = os.path.join(os.path.dirname(sys.executable), "tidings")
    return subprocess.Popen(
        [tidings, "server", "--domain", "bench.lanes", "--no-beat", *options],
        env={**os.environ, **WORKER_ENV, **env},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)  # its children die with it (PR_SET_PDEATHSIG)
        server.wait()


def lanes(n: int, runs: int) -> Report:
    """Before (one worker on every queue) and after (lanes), interleaved round by round."""
    report = Report("lanes", {"slow": SLOW, "slow_seconds": SLOW_SECONDS, "fast": n, "runs": runs})
    for _ in range(runs):
        for label, (options, slow, after_commit) in TOPOLOGIES.items():
            p50, p99 = _round(options, n, slow, after_commit)
            report.add(f"{label}: fast handler commit->handled p50", "ms", p50)
            report.add(f"{label}: fast handler commit->handled p99", "ms", p99)
    return report


def ratio_lines(report: Report | None) -> list[str]:
    """The target row for `python -m bench`'s summary."""
    name = "lanes (default): fast handler commit->handled p99"
    if report is None or name not in report.figures:
        return []
    after = report.median(name)
    before = report.median("single worker (prefork 2): fast handler commit->handled p99")
    idle = report.median("lanes, nothing slow queued: fast handler commit->handled p99")
    thread = report.median("lanes, after_commit = thread: fast handler commit->handled p99")
    return [
        f"| lanes, after_commit = thread: fast p99 with 16 slow queued <= 100 ms | {thread:.0f} ms"
        f" | {'met' if thread <= 100 else 'not met'} |",
        f"| lanes: fast p99 with 16 slow queued <= 100 ms | {after:.0f} ms (single worker: {before:,.0f} ms)"
        f" | {'met' if after <= 100 else 'not met'} |",
        f"| lanes: fast p99 with 16 slow queued / with none | {after / idle:.2f} | - |",
    ]


if os.environ.get("BENCH_LANES_DB"):  # a child of the benchmark's `tidings server`
    domain = build_domain(
        os.environ["BENCH_LANES_NAME"],
        os.environ["BENCH_LANES_DB"],
        REDIS_URL,
        os.environ.get("BENCH_LANES_PREFIX", ""),
    )
