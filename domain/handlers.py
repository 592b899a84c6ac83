"""Handler bases (plain classes: behaviour, not data) and the decorators that bind their
methods to messages: `@handle`, `@on`, `@read`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeAlias, TypeVar

from tidings.domain.elements import BaseElement


# Handlers are plain classes: they hold behaviour, not data.
class BaseHandler:
    element_kind: ClassVar[str] = "handler"
    meta_: ClassVar[dict[str, Any]] = {}

    @classmethod
    def handle_error(cls, exc: Exception, message: Any) -> None:
        """Called on every failure; override to compensate or alert. Must not raise."""


class BaseEventHandler(BaseHandler):
    element_kind: ClassVar[str] = "event_handler"


class BaseCommandHandler(BaseHandler):
    element_kind: ClassVar[str] = "command_handler"


class BaseProjector(BaseHandler):
    element_kind: ClassVar[str] = "projector"


class BaseSubscriber(BaseHandler):
    element_kind: ClassVar[str] = "subscriber"

    def __call__(self, payload: dict) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define __call__ or @handle methods")


class BaseQueryHandler(BaseHandler):
    element_kind: ClassVar[str] = "query_handler"


# A registered element class: the registry hands out only subclasses of the bases above, so
# every one has `meta_` (its options, set at registration) and `element_kind`.
ElementClass: TypeAlias = type[BaseElement] | type[BaseHandler]


_F = TypeVar("_F", bound=Callable[..., Any])


def handle(target: Any) -> Callable[[_F], _F]:
    """Bind a handler method to one message class (or a type string, or "$any")."""

    def decorator(fn: _F) -> _F:
        setattr(fn, "_tidings_handles", target)  # noqa: B010 - a typed callable declares no such attribute
        return fn

    return decorator


on = handle  # projectors say @on(Event)


def read(query_cls: Any) -> Callable[[_F], _F]:
    """Bind a query handler method to one query class."""

    def decorator(fn: _F) -> _F:
        setattr(fn, "_tidings_reads", query_cls)  # noqa: B010 - a typed callable declares no such attribute
        return fn

    return decorator
