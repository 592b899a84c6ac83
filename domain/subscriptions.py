"""Subscription settings per handler: profiles, the priority order, and where each value came from.

Resolution, highest first: handler `subscription_config` -> handler `subscription_profile`
-> handler `subscription_type` -> `[server.subscriptions.<Handler>]` -> server defaults
(`default_subscription_type`, `messages_per_tick`, `[server.stream_subscription]`,
`[server.event_store_subscription]`) -> `server.default_subscription_profile` -> built-in defaults.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tidings.domain.profiles import BUILT_IN, PROFILES

if TYPE_CHECKING:
    from tidings.domain.handlers import ElementClass
    from tidings.domain.settings import ServerSettings

TYPES = {"stream", "event_store"}
_POSITIVE = {
    "messages_per_tick",
    "blocking_timeout_ms",
    "position_update_interval",
    "retry_backoff_max",
    "circuit_breaker_reset_seconds",
}
_NON_NEGATIVE = {"max_retries", "retry_delay_seconds", "circuit_breaker_threshold"}
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
    """Check options written in a handler's declaration (the configuration's are checked by
    `domain.settings` when it is parsed)."""
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


def profile_values(name: str, server: ServerSettings, handler: str, where: str) -> dict[str, Any]:
    """A built-in or custom profile (`[server.profiles.<name>]`, `inherits = "<built-in>"`)."""
    if name in PROFILES:
        return dict(PROFILES[name])
    custom = server.profiles.get(name)
    if custom is None:  # only a handler's own subscription_profile can get here: the
        # settings parse has checked every profile named in the configuration
        known = sorted(PROFILES) + sorted(server.profiles)
        raise SettingsError(f"{handler}: unknown profile {name!r} in {where} (known: {known})")
    base = dict(PROFILES[custom.inherits]) if custom.inherits else {}
    return {**base, **custom.values()}


def resolve(handler: ElementClass, server: ServerSettings) -> SubscriptionSettings:
    """The handler's settings, merged by the priority order above. The server's values were
    validated when the settings were parsed; only the handler's own options are checked here."""
    name = handler.__name__
    meta = handler.meta_
    per_handler = server.subscriptions.get(name)
    layers: list[tuple[str, dict[str, Any]]] = []  # lowest first
    layers.append(("built-in default", dict(BUILT_IN)))
    named_profile = bool(meta.get("subscription_profile")) or bool(per_handler and per_handler.profile)
    default_profile = server.default_subscription_profile
    if default_profile and not named_profile:
        layers.append(
            (
                f"server.default_subscription_profile ({default_profile})",
                profile_values(default_profile, server, name, "server.default_subscription_profile"),
            )
        )
    defaults: dict[str, Any] = {}
    if server.default_subscription_type:
        defaults["subscription_type"] = server.default_subscription_type
    if server.messages_per_tick:
        defaults["messages_per_tick"] = server.messages_per_tick
    layers.append(("server defaults", defaults))
    layers.append(("server.stream_subscription", server.stream_subscription.values()))
    interval = server.event_store_subscription.position_update_interval
    store = {} if interval is None else {"position_update_interval": interval}
    layers.append(("server.event_store_subscription", store))
    if per_handler and per_handler.profile:
        layers.append(
            (
                f"server.subscriptions.{name}.profile ({per_handler.profile})",
                profile_values(per_handler.profile, server, name, f"server.subscriptions.{name}"),
            )
        )
    layers.append((f"server.subscriptions.{name}", per_handler.values() if per_handler else {}))
    if meta.get("subscription_type"):
        own_type = {"subscription_type": meta["subscription_type"]}
        _check(name, "handler subscription_type", own_type)
        layers.append(("handler subscription_type", own_type))
    if meta.get("subscription_profile"):
        profile = meta["subscription_profile"]
        layers.append(
            (
                f"handler subscription_profile ({profile})",
                profile_values(profile, server, name, "subscription_profile"),
            )
        )
    own_config = dict(meta.get("subscription_config") or {})
    _check(name, "handler subscription_config", own_config)
    layers.append(("handler subscription_config", own_config))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for where, layer in layers:
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
