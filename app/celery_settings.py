"""Celery settings in layers, and the few settings Tidings' guarantees rest on.

From the bottom up (a later layer wins, key by key; `broker_transport_options` is merged key by
key instead, so a user who adds one transport option keeps Tidings' others):

1. Tidings' defaults: the module `tidings.celeryconfig` (data; `TIDINGS_<NAME>` in the
   environment adjusts some of them).
2. The user's Celery config module, as Celery users write it: `[celery] config_module` in
   domain.toml if set, else the environment variable `CELERY_CONFIG_MODULE` (Celery's own
   name for it), else a module named `celeryconfig` if one is importable from the working
   directory (Celery's conventional name). An empty `config_module` / `CELERY_CONFIG_MODULE`
   turns the lookup off; a module named explicitly must import.
3. What the domain decides: `broker_url` from `[brokers.default]`, one queue and route per
   handler, the polling interval.
4. The domain's `[celery]` table in domain.toml.
5. The keyword overrides of `create_celery_app(domain, **overrides)`.

The result is then checked against `GUARANTEES`: a value that weakens one is refused with a
one-line `ConfigurationError` naming the key, the value, the layer it came from and the
opt-out, `[celery] allow_unsafe = ["<key>", ...]` (or `allow_unsafe=[...]` in the overrides).
Everything else — prefetch, concurrency, time limits, events, results, transport options — is
the user's to tune.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from tidings.domain.errors import ConfigurationError

DEFAULTS_MODULE = "tidings.celeryconfig"
CONVENTIONAL_MODULE = "celeryconfig"  # the name Celery's docs and first steps use
ENV_VARIABLE = "CELERY_CONFIG_MODULE"  # Celery's own variable for it (`config_from_envvar`)

# Keys of the `[celery]` table (and of the overrides) that are Tidings' own, never Celery's.
CONFIG_MODULE_KEY = "config_module"
ALLOW_UNSAFE_KEY = "allow_unsafe"
MERGED_KEYS = frozenset({"broker_transport_options"})
# Not a Celery setting: the check that the Redis visibility timeout exceeds the handler timeout
# plus the longest retry countdown (app/factory.py `check_recovery_bound`).
RECOVERY_BOUND_KEY = "visibility_timeout"
JSON_CONTENT = frozenset({"json", "application/json"})


@dataclass(frozen=True)
class Layer:
    """One source of Celery settings: `source` names it in messages ("celeryconfig", ...)."""

    source: str
    values: Mapping[str, Any]


@dataclass(frozen=True)
class CelerySettings:
    """The layered result: the values, the layer each key last came from, and the opt-outs."""

    values: dict[str, Any]
    origins: dict[str, str]
    allow_unsafe: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Guarantee:
    """A setting Tidings' delivery guarantees rest on: `holds(value)` is true when it is kept;
    `required` says what it must be, `weakened` what a different value costs."""

    holds: Callable[[Any], bool]
    required: str
    weakened: str


def _is_true(value: Any) -> bool:
    return value is True


def _is_json(value: Any) -> bool:
    return value == "json" or value == "application/json"


def _json_only(value: Any) -> bool:
    if isinstance(value, str):
        value = [value]
    return isinstance(value, list | tuple | set | frozenset) and bool(value) and set(value) <= JSON_CONTENT


def _json_only_or_unset(value: Any) -> bool:
    return value is None or _json_only(value)  # None: results accept `accept_content`


# The exact set, each with why. Checked on the final settings, whatever layer set them.
GUARANTEES: dict[str, Guarantee] = {
    # Ack after the handler ran, not before: a worker that dies mid-handler gets the message
    # delivered again (the inbox makes the rerun harmless).
    "task_acks_late": Guarantee(_is_true, "True", "loses messages when a worker dies"),
    # Even with late acks, Celery acks (drops) a message whose worker process was killed
    # (OOM, SIGKILL) unless this is on: then it is rejected and delivered again.
    "task_reject_on_worker_lost": Guarantee(
        _is_true, "True", "loses the message of a worker process that is killed (OOM, SIGKILL)"
    ),
    # Celery 5.7: a killed worker counts as one attempt against the handler's max_retries, so a
    # message that kills its worker ends in the DLQ instead of being redelivered forever.
    "task_retry_on_worker_lost": Guarantee(
        _is_true, "True", "redelivers a message that kills its worker forever, never dead-lettering it"
    ),
    # With late acks, False rejects *and requeues* a handler killed by its hard time limit:
    # the same message times out again and again and never reaches the DLQ.
    "task_acks_on_timeout": Guarantee(
        _is_true, "True", "requeues a handler killed by its hard time limit forever, never dead-lettering it"
    ),
    # JSON only, in every direction: a pickled message runs code on whoever loads it, and
    # Tidings' envelopes, DLQ entries and events are JSON by contract.
    "task_serializer": Guarantee(_is_json, '"json"', "sends messages that are not JSON"),
    "result_serializer": Guarantee(_is_json, '"json"', "stores results that are not JSON"),
    "event_serializer": Guarantee(_is_json, '"json"', "sends worker events that are not JSON"),
    "accept_content": Guarantee(
        _json_only, '["json"]', "lets workers load non-JSON messages (pickle runs code on load)"
    ),
    "result_accept_content": Guarantee(
        _json_only_or_unset, 'None or ["json"]', "lets clients load non-JSON results (pickle runs code)"
    ),
}


def module_settings(module: ModuleType | object) -> dict[str, Any]:
    """The settings a config module defines, as Celery reads them: its public lower-case names
    (upper-case pre-4.0 names such as `CELERY_ACKS_LATE` are translated to the new ones;
    other upper-case names are the module's own constants), minus imports and functions."""
    from celery.app.defaults import _TO_NEW_KEY  # Celery's table of old -> new setting names

    values: dict[str, Any] = {}
    for name in dir(module):
        if name.startswith("_"):
            continue
        value = getattr(module, name)
        if isinstance(value, ModuleType) or type(value).__module__ == "__future__" or callable(value):
            continue  # imports, `from __future__ import annotations`, helpers
        if name.islower():
            values[name] = value
        elif name in _TO_NEW_KEY:
            values[_TO_NEW_KEY[name]] = value
    return values


def defaults_layer() -> Layer:
    """Layer 1: Tidings' defaults."""
    return Layer(DEFAULTS_MODULE, module_settings(importlib.import_module(DEFAULTS_MODULE)))


def config_module_name(table: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[str | None, bool]:
    """The user's config module to read and whether it was named explicitly: `[celery]
    config_module`, else `CELERY_CONFIG_MODULE`, else `celeryconfig` (only if it exists).
    An empty name means none."""
    if CONFIG_MODULE_KEY in table:
        name = table[CONFIG_MODULE_KEY]
        if name is not None and not isinstance(name, str):
            raise ConfigurationError(
                f"tidings: [celery] {CONFIG_MODULE_KEY} must be a module name, got {name!r}"
            )
        return name or None, True
    if ENV_VARIABLE in environ:
        return environ[ENV_VARIABLE] or None, True
    return CONVENTIONAL_MODULE, False


def user_layer(name: str | None, explicit: bool, cwd: Path | None = None) -> Layer | None:
    """Layer 2: the user's Celery config module, imported with the working directory first on
    the path (as Celery's loader does). None when there is none: no name, or the conventional
    `celeryconfig` is absent, or it is Tidings' own defaults file (running from the checkout,
    whose root is the `tidings` package directory)."""
    if not name:
        return None
    with _cwd_first(cwd):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            if explicit:
                raise ConfigurationError(
                    f"tidings: the Celery config module {name!r} (from [celery] {CONFIG_MODULE_KEY} "
                    f"or {ENV_VARIABLE}) cannot be imported from {Path(cwd or os.getcwd())}"
                )
            return None
        if _is_tidings_defaults(spec.origin):
            return None
        module = importlib.import_module(name)
    return Layer(name, module_settings(module))


def _is_tidings_defaults(origin: str | None) -> bool:
    defaults = importlib.util.find_spec(DEFAULTS_MODULE)
    if origin is None or defaults is None or defaults.origin is None:
        return False
    return Path(origin).resolve() == Path(defaults.origin).resolve()


@contextmanager
def _cwd_first(cwd: Path | None) -> Iterator[None]:
    """`cwd` (default: the working directory) first on sys.path for the block, like Celery's
    loader (`celery.utils.imports.cwd_in_path`), so the user's module wins."""
    entry = str(cwd or Path.cwd())
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        sys.path.remove(entry)  # the first occurrence: ours


def split_tidings_keys(values: Mapping[str, Any], source: str) -> tuple[dict[str, Any], frozenset[str]]:
    """A `[celery]` table or the overrides without Tidings' own keys, and its `allow_unsafe`."""
    celery = {k: v for k, v in values.items() if k not in (CONFIG_MODULE_KEY, ALLOW_UNSAFE_KEY)}
    allowed = values.get(ALLOW_UNSAFE_KEY) or []
    if isinstance(allowed, str) or not all(isinstance(k, str) for k in allowed):
        raise ConfigurationError(f"tidings: {source} {ALLOW_UNSAFE_KEY} must be a list of setting names")
    unknown = sorted(set(allowed) - set(GUARANTEES) - {RECOVERY_BOUND_KEY})
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(GUARANTEES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; it can name {', '.join(GUARANTEES)}"
        raise ConfigurationError(
            f"tidings: {source} {ALLOW_UNSAFE_KEY} names {unknown[0]!r}, which is not enforced{hint}"
        )
    return celery, frozenset(allowed)


def layered_settings(layers: Iterable[Layer], allow_unsafe: Collection[str] = ()) -> CelerySettings:
    """The layers applied in order, a later one winning key by key (`MERGED_KEYS` are dicts
    merged key by key); records which layer each key last came from."""
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for layer in layers:
        for key, value in layer.values.items():
            if key in MERGED_KEYS and isinstance(value, Mapping) and isinstance(values.get(key), Mapping):
                value = {**values[key], **value}
            values[key] = value
            origins[key] = layer.source
    return CelerySettings(values, origins, frozenset(allow_unsafe))


def check_guarantees(settings: CelerySettings) -> None:
    """Refuse settings that weaken one of `GUARANTEES` (unless allowed): a one-line
    `ConfigurationError` naming the key, the value, its layer and the opt-out."""
    for key, guarantee in GUARANTEES.items():
        value = settings.values.get(key)
        if key in settings.allow_unsafe or guarantee.holds(value):
            continue
        source = settings.origins.get(key)
        where = f"{source} sets {key}={value!r}" if source else f"{key} is unset (None)"
        raise ConfigurationError(
            f"tidings: {where}, which {guarantee.weakened}; it must be {guarantee.required}: "
            f'remove it or set [celery] {ALLOW_UNSAFE_KEY} = ["{key}"]'
        )


def celery_settings(
    domain_table: Mapping[str, Any],
    derived: Mapping[str, Any],
    overrides: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> CelerySettings:
    """All five layers for one app (see the module docstring), checked: what
    `create_celery_app` configures. `domain_table` is the domain's `[celery]` table, `derived`
    what Tidings computes from the domain (broker, queues, routes), `overrides` the keywords."""
    table, allowed_in_table = split_tidings_keys(domain_table, "[celery]")
    extra, allowed_in_overrides = split_tidings_keys(overrides, "create_celery_app")
    name, explicit = config_module_name(domain_table, os.environ if environ is None else environ)
    user = user_layer(name, explicit, cwd)
    layers = [
        defaults_layer(),
        *([user] if user else []),
        Layer("the domain", derived),
        Layer("domain.toml [celery]", table),
        Layer("create_celery_app overrides", extra),
    ]
    settings = layered_settings(layers, allowed_in_table | allowed_in_overrides)
    check_guarantees(settings)
    return settings
