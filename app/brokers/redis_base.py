"""What the two Redis adapters share: the client, error translation, pump wake-ups, ping."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar, cast

import redis

from tidings.app.brokers import UrlOptions, translated
from tidings.domain.brokers import Broker
from tidings.domain.settings import BrokerOptions, BrokerSettings

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError)
UNHEALTHY = {"healthy": False, "message_counts": {}, "consumer_groups": {}, "dlq_depth": 0}


class RedisOptions(UrlOptions):
    """`url`, `key_prefix` (isolates this broker's keys)."""

    key_prefix: str = ""


class RedisBroker(Broker):
    """Settings: see `RedisOptions`."""

    pulled = True
    options_model: ClassVar[type[BrokerOptions]] = RedisOptions

    def __init__(self, name: str, domain: Domain, settings: BrokerSettings | Mapping[str, Any]) -> None:
        super().__init__(name, domain, settings)
        options = cast(RedisOptions, self.settings.options)
        self.url = options.url
        self.prefix = options.key_prefix
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:  # built on first use, never at import or before a fork
            self._client = redis.Redis.from_url(
                self.url, decode_responses=True, socket_connect_timeout=2, socket_timeout=5
            )
        return self._client

    def _errors(self) -> AbstractContextManager[None]:
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
