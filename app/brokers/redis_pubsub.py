"""`redis_pubsub`: Redis lists with one read position per consumer group (simple queuing:
no acknowledgement, a message read is done)."""

from __future__ import annotations

import json
from typing import Any, cast

from tidings.app.brokers.redis_base import UNHEALTHY, RedisBroker
from tidings.domain.brokers import BrokerCapability

# Read up to ARGV[2] entries from the group's position and advance it, atomically, so two
# readers of one group never get the same entry.
_READ = """
local position = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local items = redis.call('LRANGE', KEYS[1], position, position + tonumber(ARGV[2]) - 1)
redis.call('HSET', KEYS[2], ARGV[1], position + #items)
return {position, items}
"""


class RedisListBroker(RedisBroker):
    """Settings: `url`, `key_prefix`. Stream `s` is the list `<prefix>s`; the positions of
    its groups are the hash `<prefix>s:groups`."""

    capabilities = BrokerCapability.SIMPLE_QUEUING

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
            position, items = self.client.eval(
                _READ, 2, self.prefix + stream, f"{self.prefix}{stream}:groups", consumer_group, n
            )
        return [(str(int(position) + i), json.loads(item)) for i, item in enumerate(items)]

    def health_stats(self) -> dict[str, Any]:
        if not self.ping():
            return dict(UNHEALTHY)
        counts, groups = {}, {}
        with self._errors():
            streams = cast(set[str], self.client.smembers(f"{self.prefix}tidings:lists"))  # decoded replies
            for stream in sorted(streams):
                counts[stream] = self.client.llen(self.prefix + stream)
                groups[stream] = sorted(self.client.hkeys(f"{self.prefix}{stream}:groups"))
        return {"healthy": True, "message_counts": counts, "consumer_groups": groups, "dlq_depth": 0}
