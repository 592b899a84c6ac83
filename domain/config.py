"""Domain configuration: defaults, `domain.toml` discovery, `${VAR|default}` and validation."""

from __future__ import annotations

import copy
import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from tidings.domain.brokers import available_providers
from tidings.domain.errors import ConfigurationError

DATABASE_PROVIDERS = {"memory", "sqlite", "postgresql"}
EVENT_STORE_PROVIDERS = {"memory", "sqlite", "postgresql", "message_db"}
PROCESSING_MODES = {"sync", "async"}
AFTER_COMMIT = {"kick", "thread"}  # how a commit gets its outbox rows relayed at once

DEFAULTS: dict[str, Any] = {
    "debug": False,
    "event_processing": "async",
    "command_processing": "async",
    "message_processing": "async",
    "enable_outbox": None,  # None: on exactly when some processing is async
    "databases": {"default": {"provider": "memory"}},
    "brokers": {"default": {"provider": "inline"}},
    "event_store": {"provider": "memory"},
    "outbox": {
        "interval": 1.0,  # seconds between beat-driven relay rounds
        "batch_size": 100,  # rows claimed per round
        "retention": 604800,  # seconds a published row is kept (7 days)
        "backoff_base": 1.0,  # seconds; doubles per failed publish attempt
        "backoff_max": 60.0,
        "broker": "default",
        "after_commit": "kick",  # "kick": a relay task per pending kick; "thread": see app/relay_thread.py
    },
    "server": {
        # Subscription values left unset here come from domain.subscriptions.BUILT_IN, so
        # that `default_subscription_profile` is not shadowed by defaults nobody wrote.
        "default_subscription_type": None,
        "default_subscription_profile": None,
        "messages_per_tick": None,
        "stream_subscription": {},
        "event_store_subscription": {},
        "subscriptions": {},
        "profiles": {},
    },
    "celery": {},  # raw Celery settings, applied last
}

_NUMERIC = {
    ("outbox", "interval"): float,
    ("outbox", "batch_size"): int,
    ("outbox", "retention"): float,
    ("outbox", "backoff_base"): float,
    ("outbox", "backoff_max"): float,
    ("server", "messages_per_tick"): int,
    ("server", "stream_subscription", "blocking_timeout_ms"): int,
    ("server", "stream_subscription", "max_retries"): int,
    ("server", "stream_subscription", "retry_delay_seconds"): float,
    ("server", "stream_subscription", "retry_backoff_max"): float,
    ("server", "event_store_subscription", "position_update_interval"): int,
}
_BOOLEAN = {
    ("debug",),
    ("enable_outbox",),
    ("server", "stream_subscription", "retry_backoff"),
    ("server", "stream_subscription", "retry_jitter"),
    ("server", "stream_subscription", "enable_dlq"),
}
# Sections whose keys are free-form (names chosen by the user, or provider options).
_OPEN_SECTIONS = {
    "databases",
    "brokers",
    "event_store",
    "celery",
    "subscriptions",
    "profiles",
    "stream_subscription",
    "event_store_subscription",
}  # checked by subscriptions.py

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:\|([^}]*))?\}")


def interpolate(value: Any, key: str = "") -> Any:
    """Replace `${VAR}` and `${VAR|default}` in every string, recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, f"{key}.{k}" if key else k) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, key) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigurationError(
                f"config key '{key}': environment variable {name} is not set and has no default "
                f"(write ${{{name}|default}})"
            )
        return default

    return _VAR.sub(replace, value)


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def find_config_file(root: Path) -> tuple[Path, dict] | None:
    """`.domain.toml`, `domain.toml` or `pyproject.toml [tool.tidings]`, here or 2 levels up."""
    for folder in [root, *list(root.parents)[:2]]:
        for name in (".domain.toml", "domain.toml"):
            path = folder / name
            if path.is_file():
                return path, _read_toml(path)
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            section = _read_toml(pyproject).get("tool", {}).get("tidings")
            if section is not None:
                return pyproject, section
    return None


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from exc


def load_config(root: Path | None) -> dict[str, Any]:
    """Defaults merged with the config file found from `root` (raw: validate after overrides)."""
    found = find_config_file(root) if root else None
    return deep_merge(DEFAULTS, found[1] if found else {})


def _suggest(key: str, options: Any) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _check_keys(given: dict, known: dict, path: tuple, problems: list[str]) -> None:
    for key, value in given.items():
        where = ".".join((*path, key))
        if key not in known:
            problems.append(f"unknown config key '{where}'{_suggest(key, known)}")
        elif isinstance(known[key], dict) and key not in _OPEN_SECTIONS and isinstance(value, dict):
            _check_keys(value, known[key], (*path, key), problems)


def _coerce(config: dict, path: tuple, kind: type, problems: list[str]) -> None:
    *parents, last = path
    node = config
    for p in parents:
        node = node.get(p, {})
        if not isinstance(node, dict):
            return
    if last not in node or node[last] is None:
        return
    value, where = node[last], ".".join(path)
    if kind is bool:
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            node[last] = value.lower() in _TRUE
        elif not isinstance(value, bool):
            problems.append(f"config key '{where}' must be true or false, got {value!r}")
        return
    try:
        number = kind(value)
    except (TypeError, ValueError):
        problems.append(f"config key '{where}' must be a number, got {value!r}")
        return
    if (
        isinstance(value, bool)
        or number < 0
        or (number == 0 and last != "retry_delay_seconds" and last != "max_retries")
    ):
        problems.append(f"config key '{where}' must be a positive number, got {value!r}")
        return
    node[last] = number


def validate_config(config: dict[str, Any]) -> list[str]:
    """Coerce typed values in place and return every problem found (empty when valid)."""
    problems: list[str] = []
    _check_keys(config, DEFAULTS, (), problems)
    for path, kind in _NUMERIC.items():
        _coerce(config, path, kind, problems)
    for path in _BOOLEAN:
        _coerce(config, path, bool, problems)
    for key in ("event_processing", "command_processing", "message_processing"):
        if config.get(key) not in PROCESSING_MODES:
            problems.append(f"config key '{key}' must be 'sync' or 'async', got {config.get(key)!r}")
    if config.get("outbox", {}).get("after_commit") not in AFTER_COMMIT:
        problems.append(
            f"config key 'outbox.after_commit' must be one of {sorted(AFTER_COMMIT)}, "
            f"got {config.get('outbox', {}).get('after_commit')!r}"
        )
    _check_providers(config.get("databases", {}), "databases", DATABASE_PROVIDERS, problems)
    _check_providers(config.get("brokers", {}), "brokers", set(available_providers()), problems)
    if "default" not in config.get("databases", {}):
        problems.append("config section 'databases' needs a 'default' database")
    if "default" not in config.get("brokers", {}):
        problems.append("config section 'brokers' needs a 'default' broker")
    store = config.get("event_store", {})
    if store.get("provider") not in EVENT_STORE_PROVIDERS:
        problems.append(
            f"config key 'event_store.provider': unknown provider {store.get('provider')!r}"
            f" (choose from {sorted(EVENT_STORE_PROVIDERS)})"
        )
    elif store.get("provider") == "message_db" and not store.get("database_uri"):
        problems.append(
            "config key 'event_store.database_uri' is required for message_db "
            "(e.g. postgresql://message_store@localhost:5432/message_store)"
        )
    return problems


def _check_providers(section: dict, name: str, allowed: set[str], problems: list[str]) -> None:
    for key, settings in section.items():
        provider = settings.get("provider") if isinstance(settings, dict) else None
        if provider not in allowed:
            problems.append(
                f"config key '{name}.{key}.provider': unknown provider {provider!r}"
                f" (choose from {sorted(allowed)}){_suggest(str(provider), allowed)}"
            )
        elif provider in {"sqlite", "postgresql"} and not settings.get("database_uri"):
            problems.append(f"config key '{name}.{key}.database_uri' is required for {provider}")


def outbox_enabled(config: dict[str, Any]) -> bool:
    """The outbox is on when asked for, or by default whenever some processing is async."""
    if config.get("enable_outbox") is not None:
        return bool(config["enable_outbox"])
    return "async" in (config.get("event_processing"), config.get("command_processing"))
