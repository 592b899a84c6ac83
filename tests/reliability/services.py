"""Services of the fault suite's own: a `redis-server` and a PostgreSQL cluster on free ports,
which a test may kill, freeze and restart. The shared services are never touched.

Each is stopped and its files removed whatever the test's outcome; when the binaries are
missing the test is skipped with the reason (failed under CI=true, see tests/services.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import redis

from tests.services import unavailable
from tests.waiting import wait_until


def free_port() -> int:
    """A local TCP port nothing listens on right now (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name: str, *extra_dirs: str) -> str:
    """The path of `name` on PATH (or in `extra_dirs`), or skip the test."""
    found = shutil.which(name) or next(
        (str(Path(d) / name) for d in extra_dirs if (Path(d) / name).exists()), None
    )
    if not found:
        unavailable(f"`{name}` is not installed: the fault suite starts its own services")
    return found  # type: ignore[return-value]


class RedisServer:
    """A `redis-server` of the test's own, without persistence (as `.ci/run` runs it): a kill
    and a restart on the same port start it empty."""

    def __init__(self, workdir: Path) -> None:
        self.executable = binary("redis-server")
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.workdir / f"redis-{self.starts}.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(self.answers, timeout=10, message=f"redis-server on port {self.port}")

    def answers(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL: whatever sat in its lists is gone (no persistence)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)  # a frozen server must die too
        self.process.kill()
        self.process.wait(timeout=10)

    def restart(self) -> None:
        """A new, empty server on the same port."""
        self.start()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP for the duration of the block (connections stay open, nothing answers)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.kill()


@contextmanager
def own_redis() -> Iterator[RedisServer]:
    """A started `RedisServer`, always killed and its directory removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="tidings-redis-"))
    server = RedisServer(workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


PG_DIRS = [str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]


class PostgresCluster:
    """A PostgreSQL cluster of the test's own (initdb + pg_ctl, run as the `postgres` OS user
    when the tests run as root, since PostgreSQL refuses to run as root), on a free port."""

    def __init__(self, workdir: Path) -> None:
        self.initdb = binary("initdb", *PG_DIRS)
        self.pg_ctl = binary("pg_ctl", *PG_DIRS)
        self.workdir = workdir
        self.data = workdir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str, timeout: float = 60) -> None:
        prefix: list[str] = []
        if os.geteuid() == 0:
            prefix = [binary("runuser"), "-u", "postgres", "--"]
        result = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=timeout, cwd=self.workdir
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stdout}\n{result.stderr}")

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        # fsync off: the suite tests crash semantics of the *clients*, not of PostgreSQL's WAL.
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            self.pg_ctl,
            "-D",
            str(self.data),
            "-l",
            str(self.workdir / "pg.log"),
            "-w",
            "-o",
            options,
            "start",
        )

    def stop_immediately(self) -> None:
        """`pg_ctl stop -m immediate`: every backend is killed, no checkpoint (a crash)."""
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def restart(self) -> None:
        self.start()

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def stop(self) -> None:
        if self.running():
            with suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop_immediately()


@contextmanager
def own_postgres() -> Iterator[PostgresCluster]:
    """A started `PostgresCluster`, always stopped and its files removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="tidings-pg-"))
    cluster = PostgresCluster(workdir)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def elapsed_since(start: float) -> float:
    return round(time.monotonic() - start, 1)
