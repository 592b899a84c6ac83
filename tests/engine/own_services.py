"""A PostgreSQL cluster and a `redis-server` of a test's own, on free ports: a test may stop
and restart them. The shared services are never touched. Always stopped and removed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import redis
import sqlalchemy as sa

from tests.services import unavailable
from tests.waiting import wait_until
from tidings.domain.sql import normalize_uri

PG_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    found = shutil.which(name) or next((str(d / name) for d in PG_DIRS if (d / name).exists()), None)
    if not found:
        unavailable(f"`{name}` is not installed: this test starts its own service")
    return found  # type: ignore[return-value]


class Postgres:
    """initdb + pg_ctl in a temporary directory, as the `postgres` OS user when run as root."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.port = workdir, free_port()
        self.data = workdir / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=90)

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres")
        self._run(_binary("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            _binary("pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.workdir / "log"),
            "-w",
            "start",
        )
        wait_until(self.answers, timeout=30, message=f"PostgreSQL on port {self.port}")

    def stop(self) -> None:
        """An immediate stop: connections are cut, as a crash or a failover would."""
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def answers(self) -> bool:
        engine = sa.create_engine(normalize_uri(self.url), connect_args={"connect_timeout": 1})
        try:
            with engine.connect() as conn:
                return conn.exec_driver_sql("SELECT 1").scalar() == 1
        except sa.exc.OperationalError:
            return False
        finally:
            engine.dispose()


@contextmanager
def own_postgres() -> Iterator[Postgres]:
    workdir = Path(tempfile.mkdtemp(prefix="tidings-pg-"))
    server = Postgres(workdir)
    try:
        server.init()
        server.start()
        yield server
    finally:
        with suppress(Exception):
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def own_redis() -> Iterator[str]:
    """A `redis-server` (no persistence) on a free port; yields its URL."""
    workdir = Path(tempfile.mkdtemp(prefix="tidings-redis-"))
    port = free_port()
    process = subprocess.Popen(
        [
            _binary("redis-server"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"

    def answers() -> bool:
        try:
            with redis.Redis.from_url(url, socket_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_until(answers, timeout=10, message=f"redis-server on port {port}")
        yield url
    finally:
        process.kill()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
