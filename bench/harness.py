"""What every scenario shares: services, worker processes, statistics and the results file."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import psutil
import redis
import sqlalchemy as sa

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
BROKER_URL = os.environ.get("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parent.parent

# Every worker in every scenario: what Tidings' celeryconfig uses (prefork, 2 processes,
# acks_late, prefetch 1), without task events (Flower's live view costs extra everywhere).
POOL, CONCURRENCY = "prefork", 2
WORKER_ENV = {"TIDINGS_TASK_EVENTS": "false", "PYTHONPATH": str(ROOT)}


@dataclass
class Figure:
    """One measured quantity: every run's value, reported as median (min-max)."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def row(self) -> str:
        return (
            f"| {self.name} | {_fmt(self.median)} {self.unit} | "
            f"{_fmt(min(self.values))}-{_fmt(max(self.values))} | {len(self.values)} |"
        )


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"


@dataclass
class Report:
    """The figures of one scenario; printed as a Markdown table and saved as JSON."""

    scenario: str
    params: dict[str, Any]
    figures: dict[str, Figure] = field(default_factory=dict)

    def add(self, name: str, unit: str, value: float) -> None:
        self.figures.setdefault(name, Figure(name, unit)).values.append(value)

    def median(self, name: str) -> float:
        return self.figures[name].median

    def table(self) -> str:
        head = f"### {self.scenario} ({', '.join(f'{k}={v}' for k, v in self.params.items())})\n\n"
        rows = [f.row() for f in self.figures.values()]
        return head + "| figure | median | min-max | runs |\n|---|---:|---:|---:|\n" + "\n".join(rows)

    def save(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        path = RESULTS / f"{stamp}-{self.scenario}.json"
        data = {
            "scenario": self.scenario,
            "params": self.params,
            "at": stamp,
            "figures": {k: {**asdict(f), "median": f.median} for k, f in self.figures.items()},
        }
        path.write_text(json.dumps(data, indent=2))
        return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# ---- services ------------------------------------------------------------------------------
def masked(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        parsed = parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@"))
    return urlunparse(parsed)


@contextmanager
def scratch_database() -> Iterator[str]:
    """A PostgreSQL database of this run's own, dropped afterwards."""
    name = f"tidings_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(_psycopg2(DATABASE_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield urlunparse(urlparse(DATABASE_URL)._replace(path=f"/{name}"))
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _psycopg2(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


def engine_for(url: str) -> sa.Engine:
    return sa.create_engine(_psycopg2(url), pool_size=10, max_overflow=10)


@contextmanager
def redis_prefix() -> Iterator[str]:
    """A Redis key prefix of this run's own (`global_keyprefix`); its keys are deleted after."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])


# ---- worker processes ----------------------------------------------------------------------
@contextmanager
def worker(
    app: str, queues: list[str], env: dict[str, str], concurrency: int = CONCURRENCY
) -> Iterator[subprocess.Popen]:
    """`celery -A app worker` with the settings every scenario shares; stopped on exit."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-P",
        POOL,
        "-c",
        str(concurrency),
        "--prefetch-multiplier",
        "1",
        "-Q",
        ",".join(queues),
        "-l",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"bench-{uuid.uuid4().hex[:6]}@%h",
    ]
    with process(argv, env) as proc:
        yield proc


@contextmanager
def process(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    RESULTS.mkdir(exist_ok=True)
    log = open(RESULTS / "processes.log", "a")  # noqa: SIM115 - worker banners, out of the tables
    proc = subprocess.Popen(
        argv, env={**os.environ, **WORKER_ENV, **env}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MiB."""
    parent = psutil.Process(pid)
    procs = [parent, *parent.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
