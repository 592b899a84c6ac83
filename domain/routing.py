"""Routing: which handlers receive a message, and which of their methods run.

Built once by `domain.init()` from the registry; every lookup on the hot path is a dict read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tidings.domain.envelope import Message, stream_matches
from tidings.domain.errors import (
    IncorrectUsageError,
    InvalidMessageError,
    UnknownMessageTypeError,
    ValidationError,
)
from tidings.domain.naming import Names
from tidings.domain.registry import handler_targets
from tidings.domain.specs import HandlerSpec

if TYPE_CHECKING:
    from tidings.domain.elements import ElementClass

HANDLER_KINDS_WITH_STREAMS = ("event_handler", "command_handler", "projector")


class Routes:
    """Message type -> class, stream category -> handlers, (handler, type) -> methods."""

    def __init__(self, names: Names, specs: dict[ElementClass, HandlerSpec] | None = None) -> None:
        self.names = names
        self.specs = specs or {}  # every handler's spec (domain/specs.py), by class
        registry = names.registry
        self.types: dict[str, type] = {
            names.type_of(c): c for k in ("event", "command") for c in registry[k].values()
        }
        self.by_category: dict[str, list[ElementClass]] = {}
        for kind in HANDLER_KINDS_WITH_STREAMS:
            for handler in registry[kind].values():
                for category in names.handler_categories(handler):
                    self.by_category.setdefault(category, []).append(handler)
        self._methods: dict[tuple[ElementClass, str], list[str]] = {}

    def spec(self, handler: ElementClass) -> HandlerSpec:
        """The handler's spec; a class that is not a registered handler is a usage error."""
        try:
            return self.specs[handler]
        except KeyError:
            raise IncorrectUsageError(f"{handler.__name__} is not a registered handler") from None

    def handlers_for(self, message: Message) -> list[ElementClass]:
        """Every handler that must receive this message (category, type and source_stream)."""
        return [h for h in self.by_category.get(message.stream_category, []) if self.receives(h, message)]

    def receives(self, handler: ElementClass, message: Message) -> bool:
        """Does `handler` handle this message's type, and does its `source_stream` (if any) match?"""
        if not self.methods_for(handler, message.type):
            return False
        source = handler.meta_.get("source_stream")
        return not source or stream_matches(message.origin_stream, source)

    def methods_for(self, handler: ElementClass, type_string: str) -> list[str]:
        """The handler's methods for a message type; memoised (it runs for every message)."""
        cached = self._methods.get((handler, type_string))
        if cached is None:
            cached = self._methods[(handler, type_string)] = methods_for(self.names, handler, type_string)
        return cached

    def subscriber_methods(self, subscriber: ElementClass, payload: dict[str, Any]) -> list[str]:
        """A subscriber's methods for an external payload, by its `"type"` and its
        `"event_type"` (the brokers document's shape); `"$any"` methods take every payload."""
        keys = [str(payload[k]) for k in ("type", "event_type") if payload.get(k)] or [""]
        return list(dict.fromkeys(m for key in keys for m in self.methods_for(subscriber, key)))

    def subscribers_for(self, stream: str) -> list[ElementClass]:
        return [
            s
            for s in self.names.registry["subscriber"].values()
            if stream_matches(stream, s.meta_["stream"]) or s.meta_["stream"] == stream
        ]

    def decode(self, message: Message | dict[str, Any]) -> Any:
        """The typed event/command in an envelope; unknown type or bad data is a typed error."""
        if not isinstance(message, Message):
            message = Message.from_dict(message)
        cls = self.types.get(message.type)
        if cls is None:
            raise UnknownMessageTypeError(f"unknown message type {message.type!r} in {self.names.name}")
        try:
            obj = cls(**message.data)
        except ValidationError as exc:
            raise InvalidMessageError(f"{message.type}: {exc}") from exc
        obj._message = message
        return obj


def methods_for(names: Names, handler: ElementClass, type_string: str) -> list[str]:
    """The methods of `handler` decorated for `type_string` (or the `$any` catch-all)."""
    found: list[str] = []
    for target, methods in handler_targets(handler).items():
        key = target_type(names, handler, target)
        if key == type_string or key == "$any":
            found += methods
    return found


def target_type(names: Names, handler: ElementClass, target: Any) -> str:
    """The type string a `@handle` target stands for: a class's type; for handlers of the
    domain's own messages, the name of a registered event or command (`"BookAdded"`) is that
    class's type; any other string (a type string, `"$any"`, an external message type) stands
    for itself."""
    if not isinstance(target, str):
        return names.type_of(target)
    if handler.element_kind != "subscriber":
        for kind in ("event", "command"):
            if target in names.registry[kind]:
                return names.type_of(names.registry[kind][target])
    return target
