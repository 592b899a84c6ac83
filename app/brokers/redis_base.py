"""What the two Redis adapters share: the client, error translation, pump wake-ups, ping."""

from __future__ import annotations

from typing import Any

import redis

from tidings.app.brokers import translated, url_of
from tidings.domain.brokers import Broker

CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError)
UNHEALTHY = {"healthy": False, "message_counts": {}, "consumer_groups": {}, "dlq_depth": 0}


class RedisBroker(Broker):
    """Settings: `url`, `key_prefix` (isolates this broker's keys)."""

    pulled = True

    def __init__(self, name: str, domain: Any, settings: dict[str, Any]) -> None:
        super().__init__(name, domain, settings)
        self.url = url_of(name, settings)
        self.prefix = str(settings.get("key_prefix", ""))
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:  # built on first use, never at import or before a fork
            self._client = redis.Redis.from_url(
                self.url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5
            )
        return self._client

    def _errors(self):
        return translated(self.name, self.url, CONNECTION_ERRORS)

    def claim_wakeup(self, stream: str, consumer_group: str, ttl: float) -> bool:
        with self._errors():
            return bool(
                self.client.set(self._wakeup_key(stream, consumer_group), 1, nx=True, px=int(ttl * 1000))
            )

    def release_wakeup(self, stream: str, consumer_group: str) -> None:
        with self._errors():
            self.client.delete(self._wakeup_key(stream, consumer_group))

    def _wakeup_key(self, stream: str, consumer_group: str) -> str:
        return f"{self.prefix}tidings:wakeup:{stream}:{consumer_group}"

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except (*CONNECTION_ERRORS, OSError):
            return False

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
