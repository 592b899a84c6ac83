"""Subscription settings per handler: profiles, the priority order, and where each value came from.

Resolution, highest first: handler `subscription_config` -> handler `subscription_profile`
-> handler `subscription_type` -> `[server.subscriptions.<Handler>]` -> server defaults
(`default_subscription_type`, `messages_per_tick`, `[server.stream_subscription]`,
`[server.event_store_subscription]`) -> `server.default_subscription_profile` -> built-in defaults.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

BUILT_IN: dict[str, Any] = {  # the reference's effective defaults for a stream subscription
    "subscription_type": "stream",
    "messages_per_tick": 100,
    "blocking_timeout_ms": 100,
    "max_retries": 3,
    "retry_delay_seconds": 1,
    "retry_backoff": False,
    "retry_backoff_max": 60,
    "retry_jitter": False,
    "enable_dlq": True,
    "position_update_interval": 10,
    "batch_delivery": False,  # stream: pack up to messages_per_tick messages into one task
}

PROFILES: dict[str, dict[str, Any]] = {
    "production": {
        "subscription_type": "stream",
        "messages_per_tick": 100,
        "blocking_timeout_ms": 5000,
        "max_retries": 3,
        "retry_delay_seconds": 1,
        "enable_dlq": True,
        "position_update_interval": 10,
    },
    "fast": {
        "subscription_type": "stream",
        "messages_per_tick": 10,
        "blocking_timeout_ms": 100,
        "max_retries": 2,
        "retry_delay_seconds": 0,
        "enable_dlq": True,
        "position_update_interval": 5,
    },
    "batch": {
        "subscription_type": "stream",
        "messages_per_tick": 500,
        "blocking_timeout_ms": 10000,
        "max_retries": 5,
        "retry_delay_seconds": 2,
        "enable_dlq": True,
        "position_update_interval": 50,
        "batch_delivery": True,
    },
    "debug": {
        "subscription_type": "stream",
        "messages_per_tick": 1,
        "blocking_timeout_ms": 1000,
        "max_retries": 1,
        "retry_delay_seconds": 0,
        "enable_dlq": False,
        "position_update_interval": 1,
    },
    "projection": {
        "subscription_type": "event_store",
        "messages_per_tick": 100,
        "max_retries": 3,
        "retry_delay_seconds": 1,
        "enable_dlq": False,
        "position_update_interval": 10,
    },
}
TYPES = {"stream", "event_store"}
_POSITIVE = {"messages_per_tick", "blocking_timeout_ms", "position_update_interval", "retry_backoff_max"}
_NON_NEGATIVE = {"max_retries", "retry_delay_seconds"}
_BOOLEAN = {"retry_backoff", "retry_jitter", "enable_dlq", "batch_delivery"}


@dataclass
class SubscriptionSettings:
    """The resolved settings of one handler, and the source of every value."""

    handler: str
    values: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


class SettingsError(ValueError):
    pass


def _check(handler: str, where: str, values: dict[str, Any]) -> None:
    for key, value in values.items():
        if key == "profile":
            continue
        if key not in BUILT_IN:
            close = difflib.get_close_matches(key, list(BUILT_IN), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise SettingsError(f"{handler}: unknown option '{key}' in {where}{hint}")
        if key == "subscription_type" and value not in TYPES:
            raise SettingsError(
                f"{handler}: {where} subscription_type must be one of {sorted(TYPES)}, got {value!r}"
            )
        if key in _BOOLEAN and not isinstance(value, bool):
            raise SettingsError(f"{handler}: {where} {key} must be true or false, got {value!r}")
        if key in _POSITIVE | _NON_NEGATIVE and (
            isinstance(value, bool) or not isinstance(value, int | float)
        ):
            raise SettingsError(f"{handler}: {where} {key} must be a number, got {value!r}")
        if key in _POSITIVE and value <= 0:
            raise SettingsError(f"{handler}: {where} {key} must be > 0, got {value!r}")
        if key in _NON_NEGATIVE and value < 0:
            raise SettingsError(f"{handler}: {where} {key} must be >= 0, got {value!r}")


def profile_values(name: str, server: dict[str, Any], handler: str, where: str) -> dict[str, Any]:
    """A built-in or custom profile (`[server.profiles.<name>]`, `inherits = "<built-in>"`)."""
    if name in PROFILES:
        return dict(PROFILES[name])
    custom = server.get("profiles", {}).get(name)
    if custom is None:
        known = sorted(PROFILES) + sorted(server.get("profiles", {}))
        raise SettingsError(f"{handler}: unknown profile {name!r} in {where} (known: {known})")
    custom = dict(custom)
    parent = custom.pop("inherits", None)
    base = {}
    if parent is not None:
        if parent not in PROFILES:
            raise SettingsError(f"profile {name!r} inherits {parent!r}, which is not built in")
        base = dict(PROFILES[parent])
    _check(handler, f"profile {name!r}", custom)
    return {**base, **custom}


def resolve(handler: type, server: dict[str, Any]) -> SubscriptionSettings:
    """The handler's settings, merged by the priority order above."""
    name = handler.__name__
    meta = handler.meta_
    layers: list[tuple[str, dict[str, Any]]] = []  # lowest first
    layers.append(("built-in default", dict(BUILT_IN)))
    named_profile = bool(meta.get("subscription_profile")) or "profile" in server.get(
        "subscriptions", {}
    ).get(name, {})
    default_profile = server.get("default_subscription_profile")
    if default_profile and not named_profile:
        layers.append(
            (
                f"server.default_subscription_profile ({default_profile})",
                profile_values(default_profile, server, name, "server.default_subscription_profile"),
            )
        )
    defaults: dict[str, Any] = {}
    if server.get("default_subscription_type"):
        defaults["subscription_type"] = server["default_subscription_type"]
    if server.get("messages_per_tick"):
        defaults["messages_per_tick"] = server["messages_per_tick"]
    layers.append(("server defaults", defaults))
    layers.append(("server.stream_subscription", dict(server.get("stream_subscription", {}))))
    store = {
        k: v for k, v in server.get("event_store_subscription", {}).items() if k == "position_update_interval"
    }
    layers.append(("server.event_store_subscription", store))
    per_handler = dict(server.get("subscriptions", {}).get(name, {}))
    if "profile" in per_handler:
        profile = per_handler.pop("profile")
        layers.append(
            (
                f"server.subscriptions.{name}.profile ({profile})",
                profile_values(profile, server, name, f"server.subscriptions.{name}"),
            )
        )
    layers.append((f"server.subscriptions.{name}", per_handler))
    if meta.get("subscription_type"):
        layers.append(("handler subscription_type", {"subscription_type": meta["subscription_type"]}))
    if meta.get("subscription_profile"):
        profile = meta["subscription_profile"]
        layers.append(
            (
                f"handler subscription_profile ({profile})",
                profile_values(profile, server, name, "subscription_profile"),
            )
        )
    layers.append(("handler subscription_config", dict(meta.get("subscription_config") or {})))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for where, layer in layers:
        _check(name, where, layer)
        for key, value in layer.items():
            if value is not None:
                values[key], sources[key] = value, where
    if values["subscription_type"] == "event_store":
        if values.get("enable_dlq") and sources["enable_dlq"] not in (
            "built-in default",
            "server.stream_subscription",
        ):
            raise SettingsError(
                f"{name}: enable_dlq is not available on an event_store "
                f"subscription (set in {sources['enable_dlq']})"
            )
        values["enable_dlq"] = False
        sources["enable_dlq"] = "forced off for event_store"
    return SubscriptionSettings(name, values, sources)
