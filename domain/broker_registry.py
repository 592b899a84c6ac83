"""Broker adapters by provider name, from the `tidings.brokers` entry points of every
installed package (a custom adapter registers the same way)."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from tidings.domain.errors import ConfigurationError

ENTRY_POINT_GROUP = "tidings.brokers"


def available_providers() -> dict[str, EntryPoint]:
    """Provider name -> entry point, from every installed package."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def broker_class(provider: str) -> Any:
    """The adapter class (a `tidings.domain.brokers.Broker`) registered for `provider`."""
    providers = available_providers()
    if provider not in providers:
        raise ConfigurationError(
            f"unknown broker provider {provider!r} (installed: {sorted(providers)}); a custom "
            f"adapter registers under the entry point group '{ENTRY_POINT_GROUP}'"
        )
    return providers[provider].load()
