"""Name conversions used for streams, tables, queues and type strings."""

from __future__ import annotations

import re


def snake(name: str) -> str:
    """`OrderLine` -> `order_line`; `my-shop` -> `my_shop`."""
    name = re.sub(r"[^0-9A-Za-z]+", "_", name)
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return name.strip("_").lower()


def camel(name: str) -> str:
    """`my_shop` -> `MyShop`."""
    return "".join(part[:1].upper() + part[1:] for part in snake(name).split("_"))
