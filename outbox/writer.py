"""Turns envelopes into outbox rows; called by the unit of work inside its transaction."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from tidings.outbox.tables import PENDING


class Envelope(Protocol):
    id: str
    stream: str
    type: str

    def to_json(self) -> str: ...


def outbox_rows(messages: list[Envelope], domain: str, now: datetime | None = None) -> list[dict[str, Any]]:
    """The rows `domain` inserts for these messages, due at once (its relay claims them)."""
    now = now or datetime.now(UTC)
    return [
        {
            "message_id": m.id,
            "domain": domain,
            "stream": m.stream,
            "type": m.type,
            "envelope": m.to_json(),
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "published_at": None,
            "last_error": None,
        }
        for m in messages
    ]
