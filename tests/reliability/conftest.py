"""Fixtures of the fault suite: services of its own, the audited domain, worker subprocesses,
and the scenario table printed at the end of the run.

Every scenario ends with `run.report(...)`, which audits committed / applied / doubled /
dead-lettered per handler and prints one row:

    scenario | events | lost | doubled | dead-lettered | recovery s
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.reliability.audit import HANDLERS, HandlerAudit, audit, build_audit, handler_queue
from tests.reliability.audit_worker import celery_overrides
from tests.reliability.services import PostgresCluster, RedisServer, own_postgres, own_redis
from tests.reliability.workers import Worker
from tests.waiting import wait_until
from tidings.app.bootstrap import create_celery_app
from tidings.tasks import dlq

ROWS: list[str] = []  # the scenario table, printed in the terminal summary
HEADER = "scenario | events | lost | doubled | dead-lettered | recovery s | commit p99 ms"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if ROWS:
        terminalreporter.section("fault scenarios")
        terminalreporter.write_line(HEADER)
        for row in ROWS:
            terminalreporter.write_line(row)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A `redis-server` of this test's own (kill, freeze and restart it at will)."""
    with own_redis() as server:
        yield server


@pytest.fixture
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of this test's own (stop it immediately and restart it at will)."""
    with own_postgres() as cluster:
        yield cluster


@dataclass
class AuditRun:
    """One scenario: the audited domain on a database and a Redis, seen from the test process
    (which commits, relays and audits), and the worker subprocesses it starts."""

    domain: Any
    celery: Any
    database_url: str
    broker_url: str
    keyprefix: str
    workdir: Path
    visibility_timeout: float = 300
    workers: list[Worker] = field(default_factory=list)

    def worker(self, beat: bool = False, **env: str) -> Worker:
        """Start a worker subprocess (always killed at the end of the test); `beat` embeds the
        domain's beat schedule in it (`-B`)."""
        worker = Worker(
            self.workdir / f"worker-{len(self.workers) + 1}.log",
            self.domain.name,
            {
                "AUDIT_DOMAIN": self.domain.name,
                "AUDIT_DATABASE_URL": self.database_url,
                "AUDIT_BROKER_URL": self.broker_url,
                "AUDIT_KEYPREFIX": self.keyprefix,
                "AUDIT_VISIBILITY_TIMEOUT": str(self.visibility_timeout),
                **env,
            },
            beat=beat,
        )
        self.workers.append(worker)
        return worker

    def logs(self) -> str:
        return "\n".join(f"--- {w.log.name} ---\n{w.output()}" for w in self.workers)

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        """`wait_until`, with the workers' logs when it times out."""
        try:
            return wait_until(condition, timeout=timeout, interval=0.2, message=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def dead_lettered(self) -> dict[str, int]:
        """Dead letters per handler, from the domain's table (they survive the broker)."""
        return {h: dlq.depth(self.celery, handler_queue(self.domain, h)) for h in HANDLERS}

    def audit(self) -> dict[str, HandlerAudit]:
        return audit(self.domain, self.dead_lettered())

    def settled(self) -> bool:
        """Every committed message applied or dead-lettered by every handler."""
        return all(a.lost <= 0 for a in self.audit().values())

    def report(
        self, scenario: str, recovery: float | None, commit_p99: float | None = None
    ) -> dict[str, HandlerAudit]:
        """Audit, print the scenario's table row and return the audit per handler."""
        result = self.audit()
        row = " | ".join(
            [
                scenario,
                str(max(a.committed for a in result.values())),
                str(sum(a.lost for a in result.values())),
                str(sum(a.doubled for a in result.values())),
                str(sum(a.dead_lettered for a in result.values())),
                "-" if recovery is None else f"{recovery:.1f}",
                "-" if commit_p99 is None else f"{commit_p99 * 1000:.0f}",
            ]
        )
        ROWS.append(row)
        print(f"\n{HEADER}\n{row}")
        return result


@contextmanager
def audit_run(
    database_url: str, broker_url: str, workdir: Path, keyprefix: str = "", visibility_timeout: float = 300
) -> Iterator[AuditRun]:
    """The audited domain on `database_url` (tables created) and `broker_url`."""
    domain = build_audit(f"audit_{uuid.uuid4().hex[:8]}")
    domain.config["databases"]["default"] = {"provider": "postgresql", "database_uri": database_url}
    domain.config["event_store"] = {"provider": "postgresql"}
    domain.config["brokers"]["default"] = {"provider": "redis", "url": broker_url}
    domain.init()
    domain.drop_tables()  # the previous scenario's, on the same database
    domain.create_tables()
    celery = create_celery_app(domain, **celery_overrides(broker_url, keyprefix, visibility_timeout))
    run = AuditRun(domain, celery, database_url, broker_url, keyprefix, workdir, visibility_timeout)
    try:
        yield run
    finally:
        for worker in run.workers:
            worker.kill()
        celery.close()
        try:
            domain.drop_tables()
        except sa.exc.OperationalError:
            pass  # the test's own database server is down (the test failed mid-fault)
        finally:
            domain.dispose()


@pytest.fixture
def fault_run(redis_server, postgres_url, tmp_path) -> Iterator[AuditRun]:
    """The audited domain on the session's database of the shared PostgreSQL and on this
    test's own Redis (the only broker a test may kill)."""
    with audit_run(postgres_url, redis_server.url, tmp_path) as run:
        yield run


def since(start: float) -> float:
    return time.monotonic() - start
