"""Broker adapters that need a driver (redis, kombu); registered under `tidings.brokers`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import AliasChoices, Field

from tidings.domain.brokers import mask_url
from tidings.domain.errors import BrokerConnectionError
from tidings.domain.settings import BrokerOptions


class UrlOptions(BrokerOptions):
    """Options of an adapter that connects somewhere: `url` (or the reference's `URI`) is required."""

    url: str = Field(validation_alias=AliasChoices("url", "URI", "uri"))


@contextmanager
def translated(name: str, url: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Driver connection errors become BrokerConnectionError, with the password masked."""
    try:
        yield
    except errors as exc:
        raise BrokerConnectionError(
            f"broker '{name}' cannot be reached at {mask_url(url)}: {type(exc).__name__}"
        ) from exc
