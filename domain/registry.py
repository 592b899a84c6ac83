"""Turning user classes into registered elements: the decorators only record."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any, cast

from tidings.domain import elements as el
from tidings.domain import handlers as hd

BASES: dict[str, hd.ElementClass] = {
    "aggregate": el.BaseAggregate,
    "entity": el.BaseEntity,
    "value_object": el.BaseValueObject,
    "event": el.BaseEvent,
    "command": el.BaseCommand,
    "projection": el.BaseProjection,
    "query": el.BaseQuery,
    "event_handler": hd.BaseEventHandler,
    "command_handler": hd.BaseCommandHandler,
    "projector": hd.BaseProjector,
    "subscriber": hd.BaseSubscriber,
    "query_handler": hd.BaseQueryHandler,
}
HANDLER_KINDS = {"event_handler", "command_handler", "projector", "subscriber", "query_handler"}

# The options each kind accepts; anything else is a typo, reported at registration.
OPTIONS: dict[str, set[str]] = {
    "aggregate": {"provider", "stream_category", "table"},
    "entity": {"part_of"},
    "value_object": {"part_of"},
    "event": {"part_of", "version", "published"},
    "command": {"part_of", "version"},
    "projection": {"provider", "table"},
    "query": {"part_of"},
    "event_handler": {
        "part_of",
        "stream_category",
        "source_stream",
        "subscription_type",
        "subscription_profile",
        "subscription_config",
        "throws",
        "sequential_by",
    },
    "command_handler": {
        "part_of",
        "timeout",
        "subscription_type",
        "subscription_profile",
        "subscription_config",
        "throws",
        "sequential_by",
    },
    "projector": {
        "projector_for",
        "aggregates",
        "stream_categories",
        "subscription_type",
        "subscription_profile",
        "subscription_config",
        "throws",
    },
    "subscriber": {
        "stream",
        "broker",
        "event",
        "subscription_type",
        "subscription_profile",
        "subscription_config",
        "throws",
    },
    "query_handler": {"part_of"},
}


def domain_event_subscriber(cls: type, options: dict[str, Any]) -> type:
    """`@domain.subscriber(event=OrderCancelled)`: a subscriber of one of the domain's own
    events, called as `subscriber(event_data_dict)` each time that event commits. It runs as
    an event handler (its own queue, unit of work, retries and DLQ) on the event's stream."""
    from tidings.domain.errors import ConfigurationError

    clash = {"stream", "broker"} & set(options)
    if clash:
        raise ConfigurationError(
            f"{cls.__name__}: a subscriber of a domain event takes 'event', not {sorted(clash)} "
            f"(those are for external broker streams)"
        )

    def receive(self: Any, event: Any) -> Any:
        return self(event.to_dict())

    receive._tidings_handles = options["event"]  # type: ignore[attr-defined]
    namespace = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "element_kind": "event_handler",
        "_tidings_receive_event": receive,
    }
    return type(cls.__name__, (cls,), namespace)


def derive_element(kind: str, cls: type, options: dict[str, Any]) -> hd.ElementClass:
    """The registered class: `cls` itself when it already subclasses the base, else a copy."""
    base = BASES[kind]
    new_cls: hd.ElementClass
    if issubclass(cls, base):
        new_cls = cls
    elif kind in HANDLER_KINDS:
        # type() and new_class() are typed as returning a plain type; the class subclasses `base`.
        new_cls = cast(
            hd.ElementClass,
            type(
                cls.__name__,
                (cls, base),
                {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__},
            ),
        )
    else:
        namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
        parents = tuple(b for b in cls.__bases__ if b is not object)
        new_cls = cast(
            hd.ElementClass,
            types.new_class(cls.__name__, (*parents, base), {}, lambda ns: ns.update(namespace)),
        )
        _rebind_class_cells(namespace, cls, new_cls)
    new_cls.meta_ = {**getattr(cls, "meta_", {}), **options}
    return new_cls


def _rebind_class_cells(namespace: dict[str, Any], old: type, new: type) -> None:
    """Zero-argument `super()` finds its class in the method's `__class__` cell; the copied
    methods still point at the undecorated class, so point them at the registered one."""
    for value in namespace.values():
        functions: list[Callable[..., Any] | None]
        if isinstance(value, classmethod | staticmethod):
            functions = [value.__func__]
        elif isinstance(value, property):
            functions = [value.fget, value.fset, value.fdel]
        else:
            functions = [value]
        for fn in functions:
            code = getattr(fn, "__code__", None)
            if code is not None and "__class__" in code.co_freevars:
                # a free variable lives in a closure cell: a function with __class__ has one
                closure = getattr(fn, "__closure__", None)
                assert closure is not None
                cell = closure[code.co_freevars.index("__class__")]
                if cell.cell_contents is old:
                    cell.cell_contents = new


def handler_targets(cls: type) -> dict[Any, list[str]]:
    """Method names by the message class/type string they handle (`@handle`, `@on`)."""
    targets: dict[Any, list[str]] = {}
    for klass in reversed(cls.__mro__):
        for name, attr in vars(klass).items():
            target = getattr(attr, "_tidings_handles", None)
            if target is not None:
                methods = targets.setdefault(target, [])
                if name not in methods:
                    methods.append(name)
    return targets


def query_targets(cls: type) -> dict[Any, str]:
    return {
        a._tidings_reads: n
        for klass in reversed(cls.__mro__)
        for n, a in vars(klass).items()
        if getattr(a, "_tidings_reads", None) is not None
    }
