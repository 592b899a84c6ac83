"""The relay loop: one long-lived thread per worker that relays in rounds, woken by commits.

A Celery worker bootstep (`relay_loop_step`) starts it in the worker's main process once the
pool is up (so prefork children are forked before the thread exists and never inherit it)
and stops it at shutdown. The loop:

1. relays everything due, in rounds of `[outbox] batch_size` (claim with `SKIP LOCKED`,
   publish pipelined, mark; see outbox/relay.py), while rounds come back full;
2. waits for a wake-up (app/kick.py: a Redis `BLPOP`, or a timed poll on other brokers) for
   at most `[outbox] interval` seconds, then goes back to 1.

Its chores (the purge of old published and inbox rows, the delivery audit) run on a second
thread, so a slow chore never delays a round.

The timed round at the end of each idle period is the safety net for a lost wake-up (a
producer that died between its commit and its push, Redis down): no beat task, no Celery
task per round, and nothing logged above DEBUG while idle. Several workers run several
loops; `SKIP LOCKED` keeps them from publishing a row twice, and a row's stream order holds
because a failed row backs off the rest of its round (outbox/relay.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery import Celery, bootsteps

from tidings.app import metrics
from tidings.app.kick import RedisWake, RelayWake
from tidings.tasks.audit import audit_deliveries
from tidings.tasks.naming import handler_queues, specs

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

log = logging.getLogger("tidings.relay")

STOP_TIMEOUT = 10.0  # seconds a stopping worker waits for the round in progress


@dataclass
class Chore:
    """Something the loop runs every `every` seconds between rounds (never concurrently)."""

    name: str
    run: Callable[[], Any]
    every: float
    last: float | None = field(default=None)  # monotonic time of the last run; None: never

    def due(self, now: float) -> bool:
        return self.last is None or now - self.last >= self.every


class RelayLoop:
    def __init__(
        self,
        relay: Callable[[], int],
        wake: RelayWake,
        idle: float,
        name: str,
        chores: list[Chore] | None = None,
        linger: float = 0.0,
    ) -> None:
        self.relay, self.wake, self.idle, self.name = relay, wake, idle, name
        # Seconds a round waits after a wake-up while traffic is live (the last round
        # published): more rows are due by then, so rounds and packs fill (packed handlers).
        self.linger = linger
        self.chores = chores or []
        self.rounds = 0  # rounds run, published or not (for tests and status)
        self.published = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._chores: threading.Thread | None = None
        self._failing: set[str] = set()  # what is failing now: warned once, until it recovers

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"tidings-relay-loop-{self.name}")
        self._thread.start()
        if self.chores:
            self._chores = threading.Thread(
                target=self._run_chores, daemon=True, name=f"tidings-relay-chores-{self.name}"
            )
            self._chores.start()
        log.debug("relay loop %s started", self.name)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        self._stop.set()
        interrupt = getattr(self.wake, "interrupt", None)  # else the wait ends within `idle`
        if interrupt is not None:
            interrupt()
        for thread in (self._thread, self._chores):
            if thread is not None:
                thread.join(timeout)
        self._thread = self._chores = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        published = 0
        while not self._stop.is_set():
            if published and self.linger:
                self._stop.wait(self.linger)
            published = self._guarded("relay", self.relay) or 0
            self.rounds += 1
            if published:
                self.published += published
                log.debug("relay loop %s: published %d", self.name, published)
            if self._stop.is_set():
                break
            if self._guarded("wake", lambda: self.wake.wait(self.idle)) is None:
                self._stop.wait(self.idle)  # Redis unreachable: poll on the idle period

    def _run_chores(self) -> None:
        tick = min(chore.every for chore in self.chores)
        while not self._stop.is_set():
            now = time.monotonic()
            for chore in self.chores:
                if chore.due(now) and not self._stop.is_set():
                    chore.last = now
                    self._guarded(chore.name, chore.run)
            self._stop.wait(min(tick, self.idle))

    def _guarded(self, what: str, step: Callable[[], Any]) -> Any:
        """Run one step; a failure is warned once (then DEBUG until it recovers): the rows
        stay pending and the next round retries them."""
        try:
            result = step()
        except Exception:  # noqa: BLE001 - the loop must outlive any broker or database outage
            if what in self._failing:
                log.debug("relay loop %s: %s still failing", self.name, what, exc_info=True)
            else:
                self._failing.add(what)
                log.warning(
                    "relay loop %s: %s failed; retried every %.1fs", self.name, what, self.idle, exc_info=True
                )
            return None
        if what in self._failing:
            self._failing.discard(what)
            log.warning("relay loop %s: %s recovered", self.name, what)
        return result


def relay_loop_step(loop: RelayLoop, queue: str) -> type[bootsteps.StartStopStep]:
    """A worker bootstep running `loop` in the worker's main process, after the pool started,
    in a worker that consumes the relay's `queue` (a plain `celery worker` consumes every queue;
    under `tidings server` that is the relay's lane only: one loop per server, not one per
    handler lane, each of which would otherwise claim every second)."""

    class RelayLoopStep(bootsteps.StartStopStep):
        requires = ("celery.worker.components:Pool",)
        label = "tidings relay loop"

        def include_if(self, worker: Any) -> bool:
            # without -Q a worker consumes every declared queue, the relay's among them
            return queue in worker.app.amqp.queues.consume_from

        def create(self, worker: Any) -> RelayLoop:
            return loop  # bootsteps start, stop and terminate `obj`

    return RelayLoopStep


def audit_turn(celery: Celery, domain: Domain, stats: Counter[Any], wake: RelayWake) -> Callable[[], None]:
    """The delivery audit (tasks/audit.py) as a chore of the relay loops.

    On Redis, one loop of all the workers' takes the round (a `SET NX` turn that lasts the
    audit interval), and a round waits while any handler queue still holds messages: a
    delivery unconfirmed after `audit_grace` may just be queued behind a backlog, and
    re-sending it then only doubles the backlog (the inbox would absorb the copies). What a
    broker lost is re-sent once the queues have drained."""
    every_ms = int(domain.settings.outbox.audit_interval * 1000)
    prefix = (celery.conf.broker_transport_options or {}).get("global_keyprefix", "")
    queues = [  # every queue a handler's messages wait in: its own, backfill, partitions
        f"{prefix}{q}" for spec in specs(domain) if not spec.polled for q in handler_queues(domain, spec)
    ]
    turn = f"{prefix}tidings:{domain.name}:audit-turn"

    def run() -> None:
        if isinstance(wake, RedisWake):
            pipe = wake.client.pipeline(transaction=False)
            for queue in queues:
                pipe.llen(queue)
            if any(pipe.execute()):
                log.debug("audit round skipped: handler queues still hold messages")
                return
            if not wake.client.set(turn, b"1", nx=True, px=max(every_ms - 50, 1)):
                return  # another worker's loop has this turn
        outcome = audit_deliveries(celery, domain)
        stats["audit_rounds"] += 1
        stats["audit_resent"] += outcome.resent
        stats["audit_deliveries"] += outcome.deliveries
        metrics.count_resent(domain.name, outcome.resent)

    return run
