"""Envelopes for the domain's events and commands: stream, type, correlation and causation."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import uuid4

from tidings.domain.context import current_message
from tidings.domain.envelope import Message, MessageKind
from tidings.domain.errors import IncorrectUsageError
from tidings.domain.naming import Names, snake
from tidings.domain.ports import EventStore
from tidings.domain.priority import PRIORITY_KEY, Priority, current_priority


class Envelopes:
    """Builds the envelope of an event or command of one domain.

    The message being handled (if any) is the cause: the new message inherits its correlation
    id, names it as causation and records its stream as the origin.
    """

    def __init__(self, names: Names) -> None:
        self.names = names

    def event(self, event: Any, aggregate: Any | None = None) -> Message:
        """The envelope for an event raised by `aggregate` (or published on its own)."""
        self._check_registered(event, "event")
        agg_cls = self.names.part_of(type(event))
        category = self.names.category(agg_cls)
        if aggregate is not None:
            identity, sequence = aggregate.identity, aggregate.version
        else:
            identity, sequence = _identity_in(event, agg_cls), None
        message = self._new(event, MessageKind.EVENT, f"{category}-{identity}", category, sequence)
        event._message = message
        return message

    def stream_of(self, event: Any, aggregate: Any) -> str:
        """The stream `event` goes to when `aggregate` raised it (as `event` builds it)."""
        return f"{self.names.category(self.names.part_of(type(event)))}-{aggregate.identity}"

    def command(
        self,
        command: Any,
        *,
        correlation_id: str | None = None,
        idempotency_key: str | None = None,
        deadline: datetime | None = None,
    ) -> Message:
        """The envelope for a command; the caller's `correlation_id` overrides the inherited
        one, and `deadline` the one inherited from the message being handled."""
        self._check_registered(command, "command")
        agg_cls = self.names.part_of(type(command))
        category = self.names.category(agg_cls) + ":command"
        identity = _identity_in(command, agg_cls)
        message = self._new(command, MessageKind.COMMAND, f"{category}-{identity}", category, None)
        given = {"correlation_id": correlation_id, "idempotency_key": idempotency_key, "deadline": deadline}
        update = {k: v for k, v in given.items() if v is not None}
        if update:
            message = message.model_copy(update=update)
        command._message = message
        return message

    def _new(self, obj: Any, kind: MessageKind, stream: str, category: str, sequence: int | None) -> Message:
        parent: Message | None = current_message.get()
        extra: dict[str, Any] = {}
        if parent is not None:
            extra = {
                "origin_stream": parent.stream,
                "correlation_id": parent.correlation_id,
                "causation_id": parent.id,
                "deadline": parent.deadline,  # deadlines propagate down the chain
            }
        priority = current_priority(parent)
        if priority != Priority.NORMAL:  # a NORMAL message carries none (domain/priority.py)
            extra["metadata"] = {PRIORITY_KEY: priority}
        return Message(
            type=self.names.type_of(type(obj)),
            kind=kind,
            stream=stream,
            stream_category=category,
            sequence=sequence,
            data=obj.model_dump(mode="json"),
            **extra,
        )

    def _check_registered(self, obj: Any, kind: str) -> None:
        cls = type(obj)
        if self.names.registry[kind].get(cls.__name__) is not cls:
            raise IncorrectUsageError(f"{cls.__name__} is not a registered {kind} of '{self.names.name}'")


def _identity_in(obj: Any, agg_cls: Any) -> str:
    """The aggregate identity a message carries (`<aggregate>_id` or the id field)."""
    for name in (f"{snake(agg_cls.__name__)}_{agg_cls._id_field}", agg_cls._id_field):
        value = getattr(obj, name, None)
        if value:
            return str(value)
    return str(uuid4())


def stored_messages(
    store: EventStore, stream_or_category: str, from_position: int, limit: int
) -> list[Message]:
    """Envelopes of the stored events and commands of a stream or category, oldest first."""
    return [
        Message.from_dict(
            {
                **r["metadata"],
                "data": r["data"],
                "metadata": {
                    **r["metadata"].get("metadata", {}),
                    "global_position": r["global_position"],
                    "position": r["position"],
                },
            }
        )
        for r in store.read_events(stream_or_category, from_position, limit)
    ]
