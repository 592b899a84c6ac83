"""Name conversions used for streams, tables, queues and type strings."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from tidings.domain.errors import ConfigurationError

if TYPE_CHECKING:
    from tidings.domain.elements import ElementClass


def snake(name: str) -> str:
    """`OrderLine` -> `order_line`; `my-shop` -> `my_shop`."""
    name = re.sub(r"[^0-9A-Za-z]+", "_", name)
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return name.strip("_").lower()


def camel(name: str) -> str:
    """`my_shop` -> `MyShop`."""
    return "".join(part[:1].upper() + part[1:] for part in snake(name).split("_"))


Registry = dict[str, dict[str, "ElementClass"]]  # element kind -> class name -> registered class


class Names:
    """Stream categories and type strings, derived from the registry (never listed by hand).

    `shop` + aggregate `Order` -> category `shop::order`, its commands on `shop::order:command`,
    event `OrderShipped` -> type `Shop.OrderShipped.v1`.
    """

    def __init__(self, domain_name: str, registry: Registry) -> None:
        self.name = snake(domain_name)
        self.camel_name = camel(domain_name)
        self.prefix = f"{self.name}::"
        self.registry = registry

    def category(self, aggregate: ElementClass | str) -> str:
        name = aggregate if isinstance(aggregate, str) else aggregate.__name__
        cls = self.registry["aggregate"].get(name)
        custom = cls.meta_.get("stream_category") if cls else None
        if custom:
            return custom if "::" in custom else self.prefix + custom
        return self.prefix + snake(name)

    def qualify(self, category: str) -> str:
        """`order` -> `shop::order`; already-qualified names pass through."""
        return category if "::" in category else self.prefix + category

    def type_of(self, cls: ElementClass) -> str:
        return f"{self.camel_name}.{cls.__name__}.v{cls.meta_.get('version', 1)}"

    def part_of(self, cls: ElementClass) -> ElementClass:
        """The aggregate (or projection) an element belongs to."""
        target = cls.meta_.get("part_of")
        name = target if isinstance(target, str) else getattr(target, "__name__", None)
        for kind in ("aggregate", "projection"):
            if name in self.registry[kind]:
                return self.registry[kind][name]
        raise ConfigurationError(f"{cls.__name__}: part_of {target!r} is not registered")

    def handler_categories(self, handler: ElementClass) -> list[str]:
        """The stream categories a handler reads."""
        kind, meta = handler.element_kind, handler.meta_
        if kind == "command_handler":
            return [self.category(self.part_of(handler)) + ":command"]
        if kind == "projector":
            if meta.get("stream_categories"):
                return [self.qualify(c) for c in meta["stream_categories"]]
            return [self.category(a) for a in meta.get("aggregates") or []]
        if kind == "event_handler":
            if meta.get("event") is not None:  # a subscriber of a domain event: its stream
                name = meta["event"] if isinstance(meta["event"], str) else meta["event"].__name__
                return [self.category(self.part_of(self.registry["event"][name]))]
            if meta.get("stream_category"):
                return [self.qualify(meta["stream_category"])]
            return [self.category(self.part_of(handler))]
        return []
