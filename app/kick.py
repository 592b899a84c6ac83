"""How a commit wakes the relay loop (app/relay_loop.py) without a Celery task.

On a Redis broker the wake-up is a Redis list, `<global_keyprefix>tidings:<domain>:relay-wake`:
a commit pushes one item (`LPUSH` + `LTRIM 0 0` in one round trip, so the list never holds
more than one), and each relay loop blocks on `BLPOP` with the idle period as timeout. The
loop pops the item *before* it claims, so a commit that lands during a round pushes again
and is followed by another round: no wake-up is lost, and wake-ups that arrive while a round
runs are merged into the next one. One push wakes one loop (of however many workers run).

Other brokers (RabbitMQ, the SQLAlchemy transport of the demo, memory) have no wake-up: the
loop polls the outbox every `poll` seconds (a claim of nothing costs one indexed SELECT).

Any Redis error falls back to the loop's timed poll, never to dropping rows: the rows are
committed, and the next round sends them.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis

log = logging.getLogger("tidings.kick")


class RelayWake(Protocol):
    """Commits signal it; relay loops wait on it."""

    def signal(self) -> None:
        """Wake one relay loop (called from the kicker's thread after a commit)."""
        ...

    def wait(self, timeout: float) -> bool:
        """Block until signalled or `timeout` seconds passed; True when signalled."""
        ...


class RedisWake:
    """A one-item Redis list: `LPUSH`/`LTRIM` to signal, `BLPOP` to wait."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self._client: redis.Redis | None = None
        self._pid = 0

    @property
    def client(self) -> redis.Redis:
        if self._client is None or self._pid != os.getpid():  # never share a pool across a fork
            self._client, self._pid = redis.Redis.from_url(self.url, health_check_interval=30), os.getpid()
        return self._client

    def signal(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(self.key, b"1")
        pipe.ltrim(self.key, 0, 0)
        pipe.execute()

    def wait(self, timeout: float) -> bool:
        # BLPOP takes fractional seconds (Redis >= 6); 0 would block for ever
        return self.client.blpop([self.key], timeout=max(timeout, 0.01)) is not None


class PollWake:
    """No wake-up on this broker: the loop polls every `poll` seconds."""

    def __init__(self, poll: float) -> None:
        self.poll = poll
        self._event = threading.Event()

    def signal(self) -> None:
        self._event.set()  # wakes a loop of this process only (e.g. a solo worker's own commit)

    def wait(self, timeout: float) -> bool:
        woken = self._event.wait(min(timeout, self.poll))
        self._event.clear()
        return woken

    def interrupt(self) -> None:
        """End a wait now (the loop is stopping)."""
        self._event.set()


def wake_for(broker_url: str, transport_options: dict, domain_name: str, poll: float) -> RelayWake:
    """A Redis list on a Redis broker; a timed poll of the outbox on any other."""
    if not broker_url.startswith(("redis://", "rediss://")):
        return PollWake(poll)
    prefix = transport_options.get("global_keyprefix", "")
    return RedisWake(broker_url, f"{prefix}tidings:{domain_name}:relay-wake")


EXIT_GRACE_SECONDS = 5.0  # how long an exiting process waits for its last wake-up to be sent
# Commits closer together than this share one wake-up: under load a relay round is running or
# due anyway, and each wake-up is a broker round trip for the committing process (a fifth of a
# flat-out producer's Python time when every commit sent one). At 100 commits/s and below no
# wake-up waits; above, one waits at most this long.
MIN_GAP_SECONDS = 0.005


class Kicker:
    """Sends the after-commit wake-ups from a daemon thread, so a commit never waits on the
    broker: the committing thread only records what to wake and sets an event (microseconds).

    With Redis frozen or refusing connections the thread blocks or fails, not the producer;
    the rows are committed either way and the relay loop's timed poll sends them. Started on
    first use in each process (threads do not survive a fork). Wake-ups that arrive while one
    is being sent, or within `gap` seconds of the last one, are merged into the next.
    """

    def __init__(self, send: Callable[[set[str]], None], name: str, gap: float = MIN_GAP_SECONDS) -> None:
        self.send, self.name, self.gap = send, name, gap  # send(categories just written)
        self._lock = threading.Condition()
        self._pending: set[str] = set()
        self._sending = False
        self._wake = threading.Event()
        self._pid = 0

    def committed(self, categories: set[str]) -> None:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._pending, self._wake = set(), threading.Event()
                    threading.Thread(target=self._loop, daemon=True, name=f"tidings-kick-{self.name}").start()
                    self._pid = os.getpid()
                    # a script that commits and exits at once must still wake the relay
                    atexit.register(self.wait_idle, EXIT_GRACE_SECONDS)
        with self._lock:
            self._pending |= categories
        self._wake.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every wake-up recorded so far was sent (or failed); False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._pending and not self._sending, timeout)

    def _loop(self) -> None:
        last = float("-inf")
        while True:
            self._wake.wait()
            self._wake.clear()
            pause = last + self.gap - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # the commits of this pause merge into this wake-up
            last = time.monotonic()
            with self._lock:
                categories, self._pending, self._sending = self._pending, set(), True
            try:
                self.send(categories)
            except Exception:  # noqa: BLE001 - committed rows are relayed by the loop's next poll
                log.warning("could not wake the relay; its next timed round relays the rows", exc_info=True)
            finally:
                with self._lock:
                    self._sending = False
                    self._lock.notify_all()
