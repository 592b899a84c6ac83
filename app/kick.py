"""One pending relay kick at a time: a Redis flag set when a kick is sent, cleared by the relay.

Kicking the relay after every commit sends one relay task per commit; under load those tasks
take worker slots from the handlers. The gate lets a commit skip its kick while an earlier
kick is still queued: the relay clears the flag *before* it claims rows, so that queued relay
claims after this commit and sees its rows. The flag expires (`ttl`), so a lost kick delays
rows by at most that long (the beat tick covers the rest); any Redis error falls back to
kicking, never to dropping.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable

import redis

log = logging.getLogger("tidings.kick")


class KickGate:
    def __init__(self, url: str, key: str, ttl: float = 2.0) -> None:
        self.url, self.key, self.ttl_ms = url, key, int(ttl * 1000)
        self._client: redis.Redis | None = None
        self._pid = 0

    @property
    def client(self) -> redis.Redis:
        if self._client is None or self._pid != os.getpid():  # never share a pool across a fork
            self._client, self._pid = redis.Redis.from_url(self.url), os.getpid()
        return self._client

    def should_kick(self) -> bool:
        """True when no kick is pending (and this caller must send one)."""
        try:
            return bool(self.client.set(self.key, b"1", nx=True, px=self.ttl_ms))
        except redis.RedisError:
            log.debug("kick gate unavailable; kicking anyway", exc_info=True)
            return True

    def relay_starting(self) -> None:
        """Called by the relay before it claims rows: later commits must kick again."""
        try:
            self.client.delete(self.key)
        except redis.RedisError:
            log.debug("could not clear the kick gate; it expires in %d ms", self.ttl_ms)


def gate_for(broker_url: str, transport_options: dict, domain_name: str) -> KickGate | None:
    """A gate on the Redis broker; None on other brokers (every commit kicks)."""
    if not broker_url.startswith(("redis://", "rediss://")):
        return None
    prefix = transport_options.get("global_keyprefix", "")
    return KickGate(broker_url, f"{prefix}tidings:{domain_name}:relay-kick")


EXIT_GRACE_SECONDS = 5.0  # how long an exiting process waits for its last wake-up to be sent


class Kicker:
    """Sends the after-commit wake-ups from a daemon thread, so a commit never waits on the
    broker: the committing thread only records what to wake and sets an event (microseconds).

    With Redis frozen or refusing connections the thread blocks or fails, not the producer;
    the rows are committed either way and the beat-driven relay sends them. Started on first
    use in each process (threads do not survive a fork). Wake-ups that arrive while one is
    being sent are merged into the next.
    """

    def __init__(self, send: Callable[[set[str]], None], name: str) -> None:
        self.send, self.name = send, name  # send(categories just written)
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
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                categories, self._pending, self._sending = self._pending, set(), True
            try:
                self.send(categories)
            except Exception:  # noqa: BLE001 - committed rows are relayed by the next beat tick
                log.warning("could not wake the relay; the next beat tick relays the rows", exc_info=True)
            finally:
                with self._lock:
                    self._sending = False
                    self._lock.notify_all()
