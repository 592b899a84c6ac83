"""`redis_pubsub`: Redis lists with one read position per consumer group (simple queuing:
no acknowledgement, a message read is done)."""

from __future__ import annotations

import json
from typing import Any

import redis

from app.brokers import translated, url_of
from domain.brokers import Broker, BrokerCapability

CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError)
# Read up to ARGV[2] entries from the group's position and advance it, atomically, so two
# readers of one group never get the same entry.
_READ = """
local position = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local items = redis.call('LRANGE', KEYS[1], position, position + tonumber(ARGV[2]) - 1)
redis.call('HSET', KEYS[2], ARGV[1], position + #items)
return {position, items}
"""


class RedisListBroker(Broker):
    """Settings: `url`, `key_prefix`. Stream `s` is the list `<prefix>s`; the positions of
    its groups are the hash `<prefix>s:groups`."""

    capabilities = BrokerCapability.SIMPLE_QUEUING
    pulled = True

    def __init__(self, name: str, domain: Any, settings: dict[str, Any]) -> None:
        super().__init__(name, domain, settings)
        self.url = url_of(name, settings)
        self.prefix = str(settings.get("key_prefix", ""))
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(self.url, decode_responses=True,
                                                socket_connect_timeout=2, socket_timeout=5)
        return self._client

    def _errors(self):
        return translated(self.name, self.url, CONNECTION_ERRORS)

    def _publish(self, stream: str, message: dict) -> str:
        with self._errors():
            pipe = self.client.pipeline()
            pipe.rpush(self.prefix + stream, json.dumps(message))
            pipe.sadd(f"{self.prefix}tidings:lists", stream)
            length, _ = pipe.execute()
        return str(length - 1)

    def ensure_group(self, stream: str, consumer_group: str) -> None:
        with self._errors():
            self.client.hsetnx(f"{self.prefix}{stream}:groups", consumer_group, 0)

    def _read(self, stream: str, consumer_group: str, n: int) -> list[tuple[str, dict]]:
        with self._errors():
            position, items = self.client.eval(_READ, 2, self.prefix + stream,
                                               f"{self.prefix}{stream}:groups", consumer_group, n)
        return [(str(int(position) + i), json.loads(item)) for i, item in enumerate(items)]

    def claim_wakeup(self, stream: str, consumer_group: str, ttl: float) -> bool:
        with self._errors():
            return bool(self.client.set(self._wakeup_key(stream, consumer_group), 1, nx=True,
                                        px=int(ttl * 1000)))

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

    def health_stats(self) -> dict[str, Any]:
        if not self.ping():
            return {"healthy": False, "message_counts": {}, "consumer_groups": {}, "dlq_depth": 0}
        counts, groups = {}, {}
        with self._errors():
            for stream in sorted(self.client.smembers(f"{self.prefix}tidings:lists")):
                counts[stream] = self.client.llen(self.prefix + stream)
                groups[stream] = sorted(self.client.hkeys(f"{self.prefix}{stream}:groups"))
        return {"healthy": True, "message_counts": counts, "consumer_groups": groups,
                "dlq_depth": 0}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
