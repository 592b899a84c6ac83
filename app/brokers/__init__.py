"""Broker adapters that need a driver (redis, kombu); registered under `tidings.brokers`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tidings.domain.brokers import mask_url
from tidings.domain.errors import BrokerConnectionError, ConfigurationError


def url_of(name: str, settings: dict[str, Any]) -> str:
    """The `url` (or the reference's `URI`) of a `[brokers.<name>]` table."""
    url = settings.get("url") or settings.get("URI") or settings.get("uri")
    if not url:
        raise ConfigurationError(f"broker '{name}' (provider {settings.get('provider')!r}) needs a 'url'")
    return str(url)


@contextmanager
def translated(name: str, url: str, errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Driver connection errors become BrokerConnectionError, with the password masked."""
    try:
        yield
    except errors as exc:
        raise BrokerConnectionError(
            f"broker '{name}' cannot be reached at {mask_url(url)}: {type(exc).__name__}"
        ) from exc
