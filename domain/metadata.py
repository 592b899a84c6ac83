"""`element._metadata`: the reference's view of a message's envelope, read-only.

The reference groups an envelope's fields as `headers` (id, type, stream, time),
`envelope` (specversion, checksum), `domain` (fqn, kind, stream_category, origin_stream,
version, sequence_id, correlation_id, causation_id) and `event_store` (position,
global_position). Tidings keeps one flat `Message`; this module presents it in those groups,
and with the flat names of the reference's earlier releases (`id`, `type`, `stream`, `kind`,
`timestamp`, ...) as shortcuts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class MessageHeaders:
    id: str
    type: str
    stream: str
    time: datetime


@dataclass(frozen=True)
class MessageEnvelope:
    specversion: str
    checksum: str | None


@dataclass(frozen=True)
class DomainMeta:
    fqn: str
    kind: str
    stream_category: str
    origin_stream: str | None
    version: int
    sequence_id: str | None
    correlation_id: str
    causation_id: str | None


@dataclass(frozen=True)
class EventStoreMeta:
    position: int | None
    global_position: int | None


@dataclass(frozen=True)
class Metadata:
    """A message's metadata in the reference's layout; build it with `Metadata.of(message, cls)`."""

    headers: MessageHeaders
    envelope: MessageEnvelope
    domain: DomainMeta
    event_store: EventStoreMeta

    @classmethod
    def of(cls, message: Any, element_cls: type) -> Metadata:
        stored = message.metadata or {}
        return cls(
            headers=MessageHeaders(message.id, message.type, message.stream, message.time),
            envelope=MessageEnvelope("1.0", message.checksum),
            domain=DomainMeta(
                fqn=f"{element_cls.__module__}.{element_cls.__qualname__}",
                kind=str(message.kind),
                stream_category=message.stream_category,
                origin_stream=message.origin_stream,
                version=int(getattr(element_cls, "meta_", {}).get("version", 1)),
                sequence_id=None if message.sequence is None else str(message.sequence),
                correlation_id=message.correlation_id,
                causation_id=message.causation_id,
            ),
            event_store=EventStoreMeta(stored.get("position"), stored.get("global_position")),
        )

    # the flat names of the reference's earlier releases
    @property
    def id(self) -> str:
        return self.headers.id

    @property
    def type(self) -> str:
        return self.headers.type

    @property
    def stream(self) -> str:
        return self.headers.stream

    @property
    def timestamp(self) -> datetime:
        return self.headers.time

    @property
    def kind(self) -> str:
        return self.domain.kind

    @property
    def fqn(self) -> str:
        return self.domain.fqn

    @property
    def stream_category(self) -> str:
        return self.domain.stream_category

    @property
    def origin_stream(self) -> str | None:
        return self.domain.origin_stream

    @property
    def sequence_id(self) -> str | None:
        return self.domain.sequence_id

    @property
    def correlation_id(self) -> str:
        return self.domain.correlation_id

    @property
    def causation_id(self) -> str | None:
        return self.domain.causation_id

    def to_dict(self) -> dict[str, Any]:
        """`{"headers": ..., "envelope": ..., "domain": ..., "event_store": ...}`, JSON-ready."""
        out = asdict(self)
        out["headers"]["time"] = self.headers.time.isoformat()
        return out
