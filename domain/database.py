"""The persistence port of a unit of work: a Database opens Sessions; a Session is one
transaction. The protocols themselves live in `tidings.domain.ports`."""

from __future__ import annotations

from typing import Any

from tidings.domain.ports import Database, Row, Session

__all__ = ["Database", "Row", "Session", "event_record"]


def event_record(envelope: dict[str, Any]) -> dict[str, Any]:
    """An envelope as an event-store record (position fields are set by the store)."""
    meta = {k: v for k, v in envelope.items() if k != "data"}
    return {
        "message_id": envelope["id"],
        "stream": envelope["stream"],
        "category": envelope["stream_category"],
        "type": envelope["type"],
        "data": envelope["data"],
        "metadata": meta,
        "time": envelope["time"],
    }
