"""One pending relay kick at a time: a Redis flag set when a kick is sent, cleared by the relay.

Kicking the relay after every commit sends one relay task per commit; under load those tasks
take worker slots from the handlers. The gate lets a commit skip its kick while an earlier
kick is still queued: the relay clears the flag *before* it claims rows, so that queued relay
claims after this commit and sees its rows. The flag expires (`ttl`), so a lost kick delays
rows by at most that long (the beat tick covers the rest); any Redis error falls back to
kicking, never to dropping.
"""

from __future__ import annotations

import logging
import os

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
