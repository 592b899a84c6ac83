"""Turns envelopes into outbox rows; called by the unit of work inside its transaction."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from tidings.outbox.tables import PENDING


class Envelope(Protocol):  # read-only: a Message is a frozen model
    @property
    def id(self) -> str: ...
    @property
    def stream(self) -> str: ...
    @property
    def type(self) -> str: ...

    def to_json(self) -> str: ...


class ExternalEnvelope(Envelope, Protocol):
    @property
    def stream_category(self) -> str: ...

    def to_external_dict(self) -> dict[str, Any]: ...


# An external row's envelope is `{"target_broker": ..., "stream": ..., "message": {...}}`,
# written with `target_broker` first so that a reader tells it apart without parsing.
EXTERNAL_PREFIX = '{"target_broker":'


def is_external(envelope: str) -> bool:
    """Is this outbox envelope bound for an external broker (no handler of the domain's)?"""
    return envelope.startswith(EXTERNAL_PREFIX)


@dataclass(frozen=True)
class ExternalDispatch:
    """An outbox row bound for a broker outside the domain: publish `message` on `stream`."""

    broker: str
    stream: str
    message: dict[str, Any]


def external_dispatch(envelope: str) -> ExternalDispatch | None:
    """The external dispatch an outbox envelope stands for, or None for the domain's own."""
    if not is_external(envelope):
        return None
    raw = json.loads(envelope)
    return ExternalDispatch(raw["target_broker"], raw["stream"], raw["message"])


def external_row_id(message_id: str, broker: str) -> str:
    """The outbox `message_id` of a message's row for an external broker (unique per broker)."""
    return f"{message_id}@{broker}"


def outbox_rows(
    messages: Sequence[ExternalEnvelope],
    domain: str,
    now: datetime | None = None,
    external: Callable[[Any], Sequence[str]] | None = None,
) -> list[dict[str, Any]]:
    """The rows `domain` inserts for these messages, due at once (its relay claims them):
    one per message, plus one per broker `external(message)` names (its `published=True`
    events for `[outbox] external_brokers`)."""
    now = now or datetime.now(UTC)
    rows = [_row(m.id, domain, m.stream, m.type, m.to_json(), now) for m in messages]
    for m in messages if external is not None else ():
        assert external is not None  # the loop runs only with one
        for broker in external(m):
            body = {"target_broker": broker, "stream": m.stream_category, "message": m.to_external_dict()}
            envelope = json.dumps(body, separators=(",", ":"))
            rows.append(_row(external_row_id(m.id, broker), domain, m.stream, m.type, envelope, now))
    return rows


def _row(
    message_id: str, domain: str, stream: str, type_: str, envelope: str, now: datetime
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "domain": domain,
        "stream": stream,
        "type": type_,
        "envelope": envelope,
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "published_at": None,
        "last_error": None,
    }
