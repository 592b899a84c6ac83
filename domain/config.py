"""The raw configuration: defaults, `domain.toml` discovery and `${VAR|default}`.

This is `domain.config`, the dict a user may edit before `init()`; `domain.settings` (typed,
frozen, validated once) is built from it by `domain.settings.parse_settings`.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tidings.domain.errors import ConfigurationError

# The raw defaults `domain.config` starts from (nested dicts, so that a user can edit one key
# before `init()`). The typed defaults live in `domain.settings`; a test keeps the two equal.
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
        "audit_interval": 5.0,  # seconds between delivery audits (beat)
        "audit_grace": 20.0,  # seconds after its publish before a delivery counts as missing
        "audit_batch": 500,  # rows re-sent per audit round at most
        "audit_window": 86400,  # seconds after its publish a row is audited (1 day)
        "audit_backoff_max": 3600.0,  # seconds between two re-sends of one row at most
        "audit_max_resends": 10,
        "inbox_retention": 604800,  # seconds an inbox row is kept (7 days; > audit_window)
        "health_lag": 60.0,  # seconds of outbox or audit lag before `tidings health` degrades
    },
    "server": {
        # Subscription values left unset here come from domain.subscriptions.BUILT_IN, so
        # that `default_subscription_profile` is not shadowed by defaults nobody wrote.
        "default_subscription_type": None,
        "default_subscription_profile": None,
        "messages_per_tick": None,
        "stream_subscription": {},
        "event_store_subscription": {},
        "transient_retry": {},  # see TransientRetrySettings: on by default
        "subscriptions": {},
        "profiles": {},
    },
    "celery": {},  # raw Celery settings, applied last
}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:\|([^}]*))?\}")


def _substitute(value: str, key: str) -> str:
    def replace(match: re.Match[str]) -> str:
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


def interpolate(value: Any, key: str = "") -> Any:
    """Replace `${VAR}` and `${VAR|default}` in every string, recursively (values stay strings:
    the typed settings coerce them); a variable that is unset and has no default raises."""
    if isinstance(value, dict):
        return {k: interpolate(v, f"{key}.{k}" if key else k) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, key) for v in value]
    if not isinstance(value, str):
        return value
    return _substitute(value, key)


def interpolate_collecting(
    value: Mapping[str, Any], report: Callable[[tuple[str, ...], str], None], path: tuple[str, ...] = ()
) -> dict[str, Any]:
    """`interpolate`, but a key that cannot be interpolated is reported and left out, so that the
    other problems of the same configuration are still found."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        here = (*path, key)
        try:
            if isinstance(item, Mapping):
                out[key] = interpolate_collecting(item, report, here)
            else:
                out[key] = interpolate(item, ".".join(here))
        except ConfigurationError as exc:
            report(here, str(exc))
    return out


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
