"""A real Celery worker inside the test process, for tests beyond what eager mode shows.

Celery's docs recommend an embedded worker over `task_always_eager` for anything past unit
tests: messages are serialised, routed to each handler's queue, acknowledged late, retried
with their countdown and dead-lettered exactly as in production. `embedded_worker(domain)`
runs the domain on storage of its own (app/testing.py `isolated`) with an in-process broker
(kombu's `memory://`) and `celery.contrib.testing.worker.start_worker` in a thread:

    with embedded_worker(domain) as worker:
        with domain.domain_context():
            domain.process(PlaceOrder(...))
        worker.wait_until_quiescent()          # relayed, handled, retries done
        assert worker.dead_letters() == []

Quiescence is judged per message, as `tidings server --test-mode` does (app/progress.py):
nothing pending in the outbox, every handler run each message calls for applied or failed
for good, no retry due and nothing queued or held by the worker.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.contrib.testing.worker import start_worker

from tidings.app.bootstrap import create_celery_app
from tidings.app.progress import RunProgress
from tidings.app.server import not_quiescent, wait_until_settled
from tidings.app.testing import DeadLetter, dead_letters, isolated, reset_dlq
from tidings.tasks.naming import relay_queue, relay_task_name

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

IN_PROCESS_BROKER = {"provider": "memory"}  # kombu memory://, shared by the threads of this process


class NotQuiescentError(AssertionError):
    """The worker did not finish what the test gave it in time (an assertion: the test fails)."""


@dataclass(frozen=True)
class EmbeddedWorker:
    """The domain, its Celery app and the worker consuming every one of its queues."""

    domain: Domain
    celery: Celery
    progress: RunProgress

    def wait_until_quiescent(self, timeout: float = 30.0) -> None:
        """Relay and wait until everything committed so far is handled or dead-lettered, no
        retry is due and no queue holds a message; raises `NotQuiescentError` after `timeout`
        seconds, naming what is outstanding."""
        if not wait_until_settled(self.celery, self.domain, self.progress, timeout=timeout):
            raise NotQuiescentError(not_quiescent(self.progress, timeout))

    def dead_letters(self, handler: type | str | None = None) -> list[DeadLetter]:
        """What was dead-lettered: every handler's, or one handler's (its class or name)."""
        return dead_letters(self.domain, handler)


@contextmanager
def embedded_worker(
    domain: Domain, database: Mapping[str, Any] | None = None, *, pool: str = "solo"
) -> Iterator[EmbeddedWorker]:
    """`domain` on storage of its own with a real worker on all its queues (see the module
    docstring); the worker is stopped and everything put back afterwards."""
    with isolated(domain, database, broker=IN_PROCESS_BROKER):
        celery = create_celery_app(domain, broker_url="memory://")  # whatever celeryconfig says
        _empty_queues(celery, domain)  # the memory broker outlives a test: start empty
        progress = RunProgress(celery, domain)
        progress.connect()
        try:
            with (
                start_worker(
                    celery,
                    pool=pool,
                    concurrency=1,
                    perform_ping_check=False,
                    loglevel="WARNING",
                    shutdown_timeout=30,
                ),
                domain.domain_context(),
            ):
                try:
                    yield EmbeddedWorker(domain, celery, progress)
                finally:
                    _wake_to_stop(celery, domain)
        finally:
            progress.disconnect()
            _empty_queues(celery, domain)


def _wake_to_stop(celery: Celery, domain: Domain) -> None:
    """Ask the worker to stop now rather than in up to 4 seconds: Celery's loop notices a stop
    only after its current 2-second wait for a message, and then waits once more (synloop
    runs `maybe_shutdown` with one more cycle in a `finally`). So send two messages, relay
    rounds (harmless), to end both waits."""
    from celery.worker import state

    state.should_terminate = 0  # what start_worker sets on exit, a little earlier
    for _ in range(2):
        celery.send_task(relay_task_name(domain), queue=relay_queue(domain))


def _empty_queues(celery: Celery, domain: Domain) -> None:
    celery.control.purge()  # every queue of the app (task_queues)
    reset_dlq(celery, domain)
