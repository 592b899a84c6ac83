"""A `tidings server` on the lanes domain (tests/lanes/lanes_app.py), as a real process tree,
with a PostgreSQL database and broker namespace of each test's own."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from tests.services import (
    BROKER_URL,
    DATABASE_URL,
    REDIS_URL,
    require_postgres,
    require_rabbitmq,
    require_redis,
)
from tests.test_demo import TIDINGS
from tests.waiting import wait_until
from tidings.domain.sql import normalize_uri

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LanesRun:
    """One test's domain (built in this process from `env`, as the server's children build
    it), its effects table and its server's log."""

    env: dict[str, str]
    domain: Any
    engine: sa.Engine
    workdir: Path

    def post(self, event: str, count: int = 1, **fields: Any) -> list[str]:
        """Commit `count` events of type `event` (one transaction each); their message ids."""
        cls = self.domain.registry["event"][event]
        ids = []
        with self.domain.domain_context():
            for _ in range(count):
                ids += [
                    m.id
                    for m in self.domain.publish(
                        cls(job_id=str(uuid.uuid4()), posted_at=time.time(), **fields)
                    )
                ]
        return ids

    def effects(self, handler: str | None = None) -> list[Any]:
        from tests.lanes.lanes_app import EFFECTS

        query = sa.select(EFFECTS).order_by(EFFECTS.c.id)
        if handler:
            query = query.where(EFFECTS.c.handler == handler)
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    def depth(self, celery: Any, queue: str) -> int:
        """Messages waiting in `queue` (on Redis: its list under the run's key prefix)."""
        prefix = self.env.get("LANES_KEYPREFIX")
        if prefix is not None:
            return int(redis.Redis.from_url(REDIS_URL).llen(f"{prefix}{queue}"))
        with celery.connection_for_write() as conn:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = 40.0) -> Any:
        return wait_until(condition, timeout=timeout, message=what)


@contextmanager
def lanes_run(tmp_path: Path, broker: str, **extra: str) -> Iterator[LanesRun]:
    require_postgres()
    name = f"lanes_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(normalize_uri(DATABASE_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    parsed = DATABASE_URL.rsplit("/", 1)[0]
    env = {"LANES_DOMAIN": name, "LANES_DATABASE_URL": f"{parsed}/{name}", **extra}
    if broker == "redis":
        require_redis()
        env.update(LANES_BROKER_URL=REDIS_URL, LANES_KEYPREFIX=f"{name}:")
    else:
        require_rabbitmq()
        require_redis()  # the breakers' shared store
        env.update(LANES_BROKER_URL=BROKER_URL, LANES_BREAKER_STORE=REDIS_URL)
    from tests.lanes.lanes_app import EFFECTS, build_domain
    from tidings.app.bootstrap import runtime_for

    domain = build_domain(env)
    domain.init()
    domain.create_tables()
    engine = sa.create_engine(normalize_uri(env["LANES_DATABASE_URL"]))
    EFFECTS.metadata.create_all(engine)
    celery = runtime_for(domain).celery  # the producer's after-commit kick of the relay
    try:
        yield LanesRun(env, domain, engine, tmp_path)
    finally:
        _forget_queues(celery, domain, broker, name)
        domain.dispose()
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _forget_queues(celery: Any, domain: Any, broker: str, name: str) -> None:
    if broker == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"{name}:*")) + list(client.scan_iter(f"tidings:{name}:*"))
        if keys:
            client.delete(*keys)
        return
    from tidings.app.server import all_queues
    from tidings.tasks.naming import dlq_name

    with celery.connection_for_write() as conn:
        for queue in all_queues(domain):
            for q in (queue, dlq_name(queue)):
                with suppress(Exception):
                    conn.default_channel.queue_delete(q)
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"tidings:{name}:*"))
    if keys:
        client.delete(*keys)


class Server:
    """`tidings server --domain tests.lanes.lanes_app` with `options`; its log in workdir."""

    def __init__(self, run: LanesRun, *options: str) -> None:
        self.log = run.workdir / f"server-{uuid.uuid4().hex[:4]}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "LANES_", "TIDINGS_"))}
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [TIDINGS, "server", "--domain", "tests.lanes.lanes_app", *options],
                cwd=run.workdir,
                env={**base, "PYTHONPATH": str(ROOT), "TIDINGS_TASK_EVENTS": "false", **run.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                # the children die with it (PR_SET_PDEATHSIG, app/processes.py)
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@contextmanager
def served(run: LanesRun, *options: str) -> Iterator[Server]:
    server = Server(run, *options)
    try:
        # up when every lane consumes: a message to the fast handler is applied
        run.post("FastPosted", kind="warm-up")
        run.wait(lambda: run.effects("FastNotice"), "the server to start", timeout=60)
        yield server
    except BaseException:
        print(server.output()[-6000:])
        raise
    finally:
        server.stop()


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest) -> str:
    return str(request.param)
