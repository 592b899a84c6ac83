"""The inline broker: in this process's memory, for sync processing and tests (the
reference's default `inline` provider)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from tidings.domain.brokers import Broker, BrokerCapability
from tidings.domain.settings import BrokerSettings

log = logging.getLogger("tidings.brokers")


@dataclass
class _Group:
    position: int = 0
    pending: dict[str, dict] = field(default_factory=dict)
    returned: deque = field(default_factory=deque)


class InlineBroker(Broker):
    """In-process streams and consumer groups: for development, tests and sync processing."""

    capabilities = BrokerCapability.RELIABLE_MESSAGING

    def __init__(self, name: str, domain: Any, settings: BrokerSettings | Mapping[str, Any]) -> None:
        super().__init__(name, domain, settings)
        self.streams: dict[str, list[tuple[str, dict]]] = {}
        self.groups: dict[tuple[str, str], _Group] = {}

    def _publish(self, stream: str, message: dict) -> str:
        identifier = str(uuid4())
        self.streams.setdefault(stream, []).append((identifier, message))
        return identifier

    def ensure_group(self, stream: str, consumer_group: str) -> None:
        self.groups.setdefault((stream, consumer_group), _Group())

    def _read(self, stream: str, consumer_group: str, n: int) -> list[tuple[str, dict]]:
        group = self.groups.setdefault((stream, consumer_group), _Group())
        out: list[tuple[str, dict]] = []
        while group.returned and len(out) < n:
            identifier = group.returned.popleft()
            out.append((identifier, group.pending[identifier]))
        entries = self.streams.get(stream, [])
        while group.position < len(entries) and len(out) < n:
            identifier, message = entries[group.position]
            group.position += 1
            group.pending[identifier] = message
            out.append((identifier, message))
        return out

    def _pending_in(self, stream: str, identifier: str) -> str | None:
        holding = [g for (s, g), group in self.groups.items() if s == stream and identifier in group.pending]
        return self._holder(stream, identifier, holding)

    def _ack(self, stream: str, consumer_group: str | None, identifier: str) -> bool:
        consumer_group = consumer_group or self._pending_in(stream, identifier)
        group = self.groups.get((stream, consumer_group)) if consumer_group else None
        if group is None or identifier not in group.pending:
            return False
        del group.pending[identifier]
        if identifier in group.returned:
            group.returned.remove(identifier)
        return True

    def _nack(self, stream: str, consumer_group: str | None, identifier: str) -> bool:
        consumer_group = consumer_group or self._pending_in(stream, identifier)
        group = self.groups.get((stream, consumer_group)) if consumer_group else None
        if group is None or identifier not in group.pending or identifier in group.returned:
            return False
        group.returned.append(identifier)
        return True

    def health_stats(self) -> dict[str, Any]:
        groups: dict[str, list[str]] = {}
        for stream, name in self.groups:
            groups.setdefault(stream, []).append(name)
        return {
            "healthy": True,
            "message_counts": {s: len(e) for s, e in self.streams.items()},
            "consumer_groups": groups,
            "dlq_depth": 0,
        }
