"""`tidings server`: the lanes' Celery workers (app/lanes.py) and beat, or a test-mode run."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.contrib.testing.worker import start_worker

from tidings.app.progress import RunProgress
from tidings.domain.parsing import check_server_broker
from tidings.tasks import dlq
from tidings.tasks.naming import async_handlers, handler_queues, queue_name, relay_queue, specs
from tidings.tasks.poller import poll_all
from tidings.tasks.relay import relay_now

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

log = logging.getLogger("tidings.server")


def subscription_lines(domain: Domain) -> list[str]:
    """`Handler -> stream (queue)`, one per handler, as the reference prints them."""
    lines = []
    for handler in async_handlers(domain):
        if handler.element_kind == "subscriber":
            streams = [handler.meta_["stream"]]
        else:
            streams = domain.names.handler_categories(handler)
        kind = domain.subscription_settings(handler).subscription_type
        lines.append(f"{handler.__name__} -> {', '.join(streams)} ({queue_name(domain, handler)}, {kind})")
    return lines


def all_queues(domain: Domain) -> list[str]:
    """The relay's queue, then every handler's queues (interactive, then backfill), then the
    sequential handlers' partition queues (tasks/ordering.py)."""
    queues = [relay_queue(domain)]
    return queues + [q for spec in specs(domain) for q in handler_queues(domain, spec)]


def worker_argv(domain: Domain, *, pool: str, concurrency: int | None, beat: bool, debug: bool) -> list[str]:
    """The `celery worker` arguments of one worker on every queue (`tidings server --no-lanes`,
    the topology before lanes). Refuses an in-process default broker
    first: the worker would run on memory:// and consume nothing (see `check_server_broker`)."""
    check_server_broker(domain.settings)
    argv = [
        "worker",
        "-Q",
        ",".join(all_queues(domain)),
        "--pool",
        pool,
        "-l",
        "DEBUG" if debug else "INFO",
        "-n",
        f"{domain.name}@%h",
    ]
    if concurrency:
        argv += ["-c", str(concurrency)]
    if beat:
        schedule = Path(".tidings") / f"celerybeat-schedule-{domain.name}"
        schedule.parent.mkdir(exist_ok=True)
        argv += ["-B", "-s", str(schedule)]
    return argv


def queued(celery: Celery, queues: list[str]) -> int:
    """Messages waiting in these queues (not the ones a worker holds: those are counted per
    message by `RunProgress`)."""
    total = 0
    with celery.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in queues:
            try:
                total += channel.queue_declare(queue=queue, passive=True).message_count
            except Exception:  # noqa: BLE001 - a queue nobody declared yet holds nothing
                channel = conn.channel()
    return total


def wait_until_settled(
    celery: Celery, domain: Domain, progress: RunProgress, *, timeout: float, settle: int = 3
) -> bool:
    """Relay what is due until every handler run `progress` knows of is applied or failed for
    good, with no retry due and no handler queue holding a message, `settle` checks in a row
    (a message between its queue and its worker is in neither for a moment). False when
    `timeout` seconds passed first."""
    started, calm = time.monotonic(), 0
    handler_queues = all_queues(domain)[1:]
    while time.monotonic() - started < timeout:
        relay_now(celery, domain)
        calm = calm + 1 if progress.settled(queued(celery, handler_queues)) else 0
        if calm >= settle:
            return True
        time.sleep(0.1)  # poll interval while the worker works
    return False


def not_quiescent(progress: RunProgress, timeout: float) -> str:
    pending, owed = progress.outstanding()
    return f"not quiescent after {timeout:.0f}s: {pending} outbox rows, {len(owed)} runs owed"


def run_until_quiescent(
    celery: Celery,
    domain: Domain,
    *,
    timeout: float = 120.0,
    pool: str = "solo",
    settle: int = 3,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Start an in-process worker, relay and process everything of this run — including what
    handlers raise — until every message of the run has had each of its handler runs applied
    or failed for good, with no retry due and nothing left in a handler queue (`settle`
    checks in a row; see `RunProgress`), then stop. Returns a summary."""
    if domain.storage.is_persistent:
        domain.create_tables()
    started = time.monotonic()
    stats = celery.tidings_runtime.stats
    handled_before = dict(stats)
    handler_queues = all_queues(domain)[1:]
    progress = RunProgress(celery, domain)
    progress.connect()
    try:
        with start_worker(
            celery,
            pool=pool,
            concurrency=1,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=30,
        ):
            poll_all(celery, domain)  # event_store handlers catch up with what is already stored
            quiescent = wait_until_settled(celery, domain, progress, timeout=timeout, settle=settle)
            if not quiescent:
                report(not_quiescent(progress, timeout))
    finally:
        progress.disconnect()
    dead = {q: dlq.depth(celery, q) for q in handler_queues}
    return {
        "handled": stats["handled"] - handled_before.get("handled", 0),
        "duplicates": stats["duplicates"] - handled_before.get("duplicates", 0),
        "dead_lettered": {q: n for q, n in dead.items() if n},
        "failed_this_run": len(progress.failed),
        "quiescent": quiescent,
        "seconds": round(time.monotonic() - started, 2),
    }
