"""`tidings demo`: the bookshelf service, async, as real processes — a worker with beat and the
API — driven over HTTP through a scripted scenario; exits 0 only if the end state is right."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

console = Console()
POISON = {
    "id": "poison-0001",
    "type": "Bookshelf.NoSuchEvent.v1",
    "kind": "EVENT",
    "stream": "bookshelf::book-x",
    "stream_category": "bookshelf::book",
    "data": {},
}


def service_env(workdir: Path, redis: bool, postgres: bool) -> dict[str, str]:
    """The environment the bookshelf's domain.toml reads, for the embedded default or real services."""
    env = {
        "TIDINGS_EVENT_PROCESSING": "async",
        "TIDINGS_COMMAND_PROCESSING": "async",
        "TIDINGS_MESSAGE_PROCESSING": "async",
    }
    if postgres:
        env["TIDINGS_DATABASE_PROVIDER"] = "postgresql"
        env["DATABASE_URL"] = os.environ.get(
            "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/bookshelf_demo"
        )
    else:
        env["TIDINGS_DATABASE_PROVIDER"] = "sqlite"
        env["DATABASE_URL"] = f"sqlite:///{workdir}/bookshelf.db"
    if redis:
        env["TIDINGS_BROKER_PROVIDER"] = "redis"
        env["BROKER_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    else:
        env["TIDINGS_BROKER_PROVIDER"] = "sqlalchemy"
        env["BROKER_URL"] = f"sqla+sqlite:///{workdir}/broker.db"
    return env


def ensure_postgres_database(url: str) -> None:
    import sqlalchemy as sa

    from tidings.domain.sql import normalize_uri

    base, name = normalize_uri(url).rsplit("/", 1)
    admin = sa.create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def process(name: str, argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process in its own group, stopped (TERM, then KILL) however the block ends."""
    with log.open("w") as out:
        child = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    console.print(f"[dim]started {name} (pid {child.pid}), log {log}[/dim]")
    try:
        yield child
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        console.print(f"[dim]stopped {name}[/dim]")


def wait_for(condition: Callable[[], Any], timeout: float, what: str, children: list[Any]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            if child.poll() is not None:
                raise RuntimeError(
                    f"a child process exited ({child.args[:3]}...) while waiting for {what}; see its log"
                )
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def run(redis: bool = False, postgres: bool = False) -> int:
    """Run the demo; returns the exit code."""
    workdir = (Path(".tidings") / "demo").resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    env_vars = service_env(workdir, redis, postgres)
    os.environ.update(env_vars)
    if postgres:
        ensure_postgres_database(env_vars["DATABASE_URL"])
    child_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]),
    }

    from tidings.app.bootstrap import create_celery_app
    from tidings.examples.bookshelf.domain import domain

    domain.init()
    domain.drop_tables()
    domain.create_tables()
    celery = create_celery_app(domain)
    celery.control.purge()  # leftovers of an earlier run on a shared broker

    database = env_vars["TIDINGS_DATABASE_PROVIDER"]
    broker = env_vars["TIDINGS_BROKER_PROVIDER"]
    console.print(
        Panel.fit(
            f"Tidings bookshelf demo — database: [bold]{database}[/bold], "
            f"broker: [bold]{broker}[/bold]\nworkdir {workdir}"
        )
    )
    port = free_port()
    with ExitStack() as stack:
        worker = stack.enter_context(
            process(
                "worker + beat",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "tidings.examples.bookshelf.worker",
                    "worker",
                    "-B",
                    "-s",
                    str(workdir / "celerybeat-schedule"),
                    "--pool",
                    "prefork",
                    "-c",
                    "2",
                    "-l",
                    "WARNING",
                ],
                child_env,
                workdir / "worker.log",
            )
        )
        api = stack.enter_context(
            process(
                "api",
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "tidings.examples.bookshelf.api:app",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ],
                child_env,
                workdir / "api.log",
            )
        )
        client = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10))
        return drive(domain, celery, client, [worker, api])


def drive(domain: Domain, celery: Any, client: httpx.Client, children: list) -> int:
    from tidings.app.progress import deliveries, latencies
    from tidings.examples.bookshelf.scenario import (
        HttpDriver,
        expected_final_state,
        final_state,
        run_scenario,
    )
    from tidings.tasks import dlq

    def api_up() -> bool:
        try:
            return client.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(api_up, 60, "the API to answer /health", children)
    console.print("[green]✓[/green] API is up")
    externals = [0]
    driver = HttpDriver(client, domain)
    restock = driver.supplier_restock

    def counted_restock(isbn: str, quantity: int) -> None:
        externals[0] += 1
        restock(isbn, quantity)

    driver.supplier_restock = counted_restock
    step = [0]

    def settle() -> None:
        step[0] += 1
        state = wait_for(
            lambda: (d := deliveries(domain, externals[0])).settled() and d,
            60,
            "the worker to handle everything",
            children,
        )
        console.print(f"[green]✓[/green] step {step[0]:>2}: settled — {state.done} handler run(s) applied")

    started = time.monotonic()
    ids = run_scenario(driver, settle)
    elapsed = time.monotonic() - started

    queue = "bookshelf.book_catalog_projector"
    celery.send_task("tidings.bookshelf.BookCatalogProjector", args=[POISON], queue=queue)
    entries = wait_for(
        lambda: dlq.list_entries(celery, queue), 60, "the poison message to reach the DLQ", children
    )
    console.print(f"[green]✓[/green] a poison message went to {queue}.dlq; the worker kept going")

    state = final_state(driver, ids)
    expected = expected_final_state(ids)
    report(state, entries[0], latencies(domain), elapsed)
    if state != expected:
        console.print("[bold red]✗ the end state is wrong[/bold red]")
        console.print({"expected": expected, "got": state})
        return 1
    console.print("[bold green]✓ end state is exactly as expected[/bold green]")
    return 0


def report(state: dict, dead: dict, lat: dict[str, float], elapsed: float) -> None:
    catalog = Table(title="Catalog")
    for col in ("title", "author", "price", "in_stock"):
        catalog.add_column(col)
    for entry in state["catalog"]:
        catalog.add_row(entry["title"], entry["author"], f"{entry['price']:.2f}", str(entry["in_stock"]))
    orders = Table(title="Orders")
    for col in ("order", "status", "reason"):
        orders.add_column(col)
    for name, order in state["orders"].items():
        orders.add_row(name, order["status"], order["cancellation_reason"] or "")
    console.print(catalog, orders)
    console.print(
        Panel.fit(
            f"message {dead['message_id']} on {dead['queue']}\n"
            f"{dead['error_type']}: {dead['error_message']}\n"
            f"attempts {dead['attempts']}, failed at {dead['failed_at']}",
            title="Dead-letter queue",
        )
    )
    if lat:
        console.print(
            Panel.fit(
                f"{lat['handled']} handler runs in {elapsed:.1f}s of scenario "
                f"({lat['per_second']}/s while busy)\ncommit → handled: p50 {lat['p50_ms']} ms, "
                f"p95 {lat['p95_ms']} ms, max {lat['max_ms']} ms",
                title="Throughput and latency",
            )
        )
