"""`redis`: Redis Streams with consumer groups (XREADGROUP, XACK) and XAUTOCLAIM of the
entries a dead consumer left pending."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, cast
from uuid import uuid4

import redis

from tidings.app.brokers.redis_base import UNHEALTHY, RedisBroker, RedisOptions
from tidings.domain.brokers import BrokerCapability
from tidings.domain.settings import BrokerOptions, BrokerSettings, PositiveInt

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

FIELD = "data"  # one field per entry, holding the JSON message


class RedisStreamOptions(RedisOptions):
    """`url`, `key_prefix` (isolates streams), `claim_idle_ms` (default 60000: an entry pending
    that long belongs to a dead consumer and is handed to the next reader), `maxlen` (default
    none: keep everything; else trim each stream to about that many entries on publish —
    entries a slow group has not read yet can be trimmed too)."""

    claim_idle_ms: PositiveInt = 60000
    maxlen: PositiveInt | None = None


class RedisStreamBroker(RedisBroker):
    """Settings: see `RedisStreamOptions`."""

    capabilities = BrokerCapability.ORDERED_MESSAGING
    options_model: ClassVar[type[BrokerOptions]] = RedisStreamOptions

    def __init__(self, name: str, domain: Domain, settings: BrokerSettings | Mapping[str, Any]) -> None:
        super().__init__(name, domain, settings)
        options = cast(RedisStreamOptions, self.settings.options)
        self.claim_idle_ms = options.claim_idle_ms
        self.maxlen = options.maxlen
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid4().hex[:6]}"

    def _publish(self, stream: str, message: dict) -> str:
        with self._errors():
            identifier = self.client.xadd(
                self.prefix + stream, {FIELD: json.dumps(message)}, maxlen=self.maxlen, approximate=True
            )
            return cast(str, identifier)  # decode_responses=True: replies are str

    def ensure_group(self, stream: str, consumer_group: str) -> None:
        with self._errors():
            try:  # from "0": a group created late still sees the stream's history
                self.client.xgroup_create(self.prefix + stream, consumer_group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _read(self, stream: str, consumer_group: str, n: int) -> list[tuple[str, dict]]:
        self.ensure_group(stream, consumer_group)
        key = self.prefix + stream
        with self._errors():
            reply = self.client.xautoclaim(
                key, consumer_group, self.consumer, min_idle_time=self.claim_idle_ms, start_id="0-0", count=n
            )
            _, claimed, *_ = reply
            entries = [e for e in claimed if e and e[1]]
            if len(entries) < n:
                fresh_reply = self.client.xreadgroup(
                    consumer_group, self.consumer, {key: ">"}, count=n - len(entries)
                )
                for _, fresh in cast(list[Any], fresh_reply):
                    entries += fresh
        return [(identifier, json.loads(fields[FIELD])) for identifier, fields in entries]

    def _pending_in(self, stream: str, identifier: str) -> str | None:
        key = self.prefix + stream
        with self._errors():
            holding = [
                g["name"]
                for g in self.client.xinfo_groups(key)
                if self.client.xpending_range(key, g["name"], min=identifier, max=identifier, count=1)
            ]
        return self._holder(stream, identifier, holding)

    def _ack(self, stream: str, consumer_group: str | None, identifier: str) -> bool:
        consumer_group = consumer_group or self._pending_in(stream, identifier)
        if consumer_group is None:
            return False
        with self._errors():
            return bool(self.client.xack(self.prefix + stream, consumer_group, identifier))

    def _nack(self, stream: str, consumer_group: str | None, identifier: str) -> bool:
        # Mark the entry idle for longer than claim_idle_ms: the next read reclaims it.
        consumer_group = consumer_group or self._pending_in(stream, identifier)
        if consumer_group is None:
            return False
        with self._errors():
            claimed = self.client.xclaim(
                self.prefix + stream,
                consumer_group,
                self.consumer,
                min_idle_time=0,
                message_ids=[identifier],
                idle=self.claim_idle_ms + 3_600_000,
                justid=True,
            )
        return bool(claimed)

    def health_stats(self) -> dict[str, Any]:
        if not self.ping():
            return dict(UNHEALTHY)
        counts, groups = {}, {}
        with self._errors():
            for key in self.client.scan_iter(match=f"{self.prefix}*", _type="STREAM"):
                stream = key.removeprefix(self.prefix)
                counts[stream] = self.client.xlen(key)
                groups[stream] = {g["name"]: {"pending": g["pending"]} for g in self.client.xinfo_groups(key)}
        return {"healthy": True, "message_counts": counts, "consumer_groups": groups, "dlq_depth": 0}
