"""`domain.config` parsed once into the typed `Settings`, every problem reported at once."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping
from types import UnionType
from typing import Any

from pydantic import AliasChoices, BaseModel, ValidationError

from tidings.domain.broker_registry import available_providers, broker_class
from tidings.domain.config import interpolate_collecting
from tidings.domain.errors import ConfigurationError
from tidings.domain.profiles import PROFILES
from tidings.domain.settings import (
    _SQL_PROVIDERS,
    IN_PROCESS_BROKERS,
    BrokerOptions,
    BrokerSettings,
    FrozenModel,
    Settings,
)


def _suggest(key: str, options: typing.Iterable[str]) -> str:
    choices = list(options)
    same = [c for c in choices if c.lower() == key.lower()]  # `URL` means `url`, not `URI`
    close = same or difflib.get_close_matches(key, choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _known_keys(model: type[BaseModel]) -> dict[str, str]:
    """Every key the model reads (aliases included) -> its field name."""
    keys = {}
    for name, info in model.model_fields.items():
        keys[name] = name
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            keys.update({str(choice): name for choice in alias.choices})
    return keys


def _model_of(annotation: object) -> tuple[type[BaseModel] | None, bool]:
    """(model, keyed): the settings model an annotation holds, and whether it is a table of them."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, UnionType):
        for arg in typing.get_args(annotation):
            model, keyed = _model_of(arg)
            if model is not None:
                return model, keyed
        return None, False
    if origin is dict:
        model, _ = _model_of(typing.get_args(annotation)[1])
        return model, model is not None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def _table(path: tuple[str, ...]) -> str:
    return f"[{'.'.join(path)}]"


def _where(path: tuple[str, ...]) -> str:
    return ".".join(path)


class _Parse:
    """One parse: the problems found so far and the keys they concern."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.failed: set[tuple[str, ...]] = set()  # keys already reported: no second message

    def report(self, path: tuple[str, ...], message: str) -> None:
        self.failed.add(path)
        self.problems.append(message)

    def reported(self, path: tuple[str, ...]) -> bool:
        return any(path[: len(p)] == p for p in self.failed)

    # -- keys --------------------------------------------------------------------------------------
    def prune(self, raw: Mapping[str, Any], model: type[BaseModel], path: tuple[str, ...]) -> dict[str, Any]:
        """`raw` without the keys `model` does not read, each reported once."""
        known = _known_keys(model)
        out: dict[str, Any] = {}
        for key, value in raw.items():
            here = (*path, key)
            if path and key in Settings.TOP_LEVEL and key not in known:
                self.report(
                    here,
                    f"'{key}' belongs at the top level of domain.toml, not in {_table(path)}: "
                    f"move it above the first [table] (TOML puts every key after a [table] "
                    f"header into that table)",
                )
                continue
            if key not in known:
                self.report(here, f"unknown config key '{_where(here)}'{_suggest(key, known)}")
                continue
            field = model.model_fields[known[key]]
            sub, keyed = _model_of(field.annotation)
            if sub is None or not isinstance(value, Mapping):
                out[key] = value
            elif path == () and key == "brokers":
                out[key] = self.brokers(value)
            elif keyed:
                out[key] = {
                    name: self.prune(table, sub, (*here, name)) if isinstance(table, Mapping) else table
                    for name, table in value.items()
                }
            else:
                out[key] = self.prune(value, sub, here)
        return out

    def brokers(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Each `[brokers.<name>]` validated by its adapter's options model."""
        providers = available_providers()
        out: dict[str, Any] = {}
        for name, table in raw.items():
            path = ("brokers", name)
            if not isinstance(table, Mapping):
                self.report(path, f"config key '{_where(path)}' must be a table, got {table!r}")
                continue
            provider = table.get("provider")
            options = {k: v for k, v in table.items() if k != "provider"}
            if provider not in providers:
                self.report(
                    (*path, "provider"),
                    f"config key '{_where(path)}.provider': unknown provider {provider!r}"
                    f" (choose from {sorted(providers)}){_suggest(str(provider), providers)}",
                )
                self.prune_misplaced(options, path)
                continue
            model = broker_class(str(provider)).options_model
            pruned = self.prune(options, model, path)
            try:
                out[name] = BrokerSettings(provider=str(provider), options=model.model_validate(pruned))
            except ValidationError as exc:
                self.errors(exc, path)
        return out

    def prune_misplaced(self, raw: Mapping[str, Any], path: tuple[str, ...]) -> None:
        """Report top-level keys inside a table that cannot be checked further."""
        self.prune({k: v for k, v in raw.items() if k in Settings.TOP_LEVEL}, FrozenModel, path)

    # -- values -----------------------------------------------------------------------------------
    def errors(self, exc: ValidationError, prefix: tuple[str, ...] = ()) -> None:
        for error in exc.errors():
            path = (*prefix, *(str(p) for p in error["loc"]))
            if self.reported(path):
                continue
            self.report(path, _message(path, error))


def _message(path: tuple[str, ...], error: Any) -> str:
    where, kind, value = _where(path), error["type"], error.get("input")
    if path[-1] == "provider" and kind == "literal_error":
        choices = _literal_choices(error)
        return (
            f"config key '{where}': unknown provider {value!r} (choose from {sorted(choices)})"
            f"{_suggest(str(value), choices)}"
        )
    if kind == "literal_error":
        return f"config key '{where}' must be one of {sorted(_literal_choices(error))}, got {value!r}"
    if kind in ("bool_type", "bool_parsing"):
        return f"config key '{where}' must be true or false, got {value!r}"
    if kind in ("int_parsing", "int_type", "float_parsing", "float_type", "not_a_number"):
        whole = "a whole number" if kind.startswith("int") else "a number"
        return f"config key '{where}' must be {whole}, got {value!r}"
    if kind == "int_from_float":
        return f"config key '{where}' must be a whole number, got {value!r}"
    if kind in ("greater_than", "greater_than_equal"):
        bound = "a positive number" if kind == "greater_than" else "a number >= 0"
        return f"config key '{where}' must be {bound}, got {value!r}"
    if kind == "missing":
        return f"config key '{where}' is required"
    if kind in ("dict_type", "model_type"):
        return f"config key '{where}' must be a table, got {value!r}"
    if kind == "string_type":
        return f"config key '{where}' must be a string, got {value!r}"
    return f"config key '{where}': {error['msg']}"


def _literal_choices(error: Any) -> list[str]:
    return [c.strip().strip("'") for c in error["ctx"]["expected"].replace(" or ", ",").split(",")]


def _check_references(raw: Mapping[str, Any], parse: _Parse) -> None:
    """What no single field can check: required tables, URIs per provider, profile names."""
    for section, what in (("databases", "database"), ("brokers", "broker")):
        tables = raw.get(section)
        if isinstance(tables, Mapping) and "default" not in tables:
            parse.report((section, "default"), f"config section '{section}' needs a 'default' {what}")
    databases = raw.get("databases")
    for name, table in (databases if isinstance(databases, Mapping) else {}).items():
        if (
            isinstance(table, Mapping)
            and table.get("provider") in _SQL_PROVIDERS
            and not table.get("database_uri")
        ):
            path = ("databases", name, "database_uri")
            parse.report(path, f"config key '{_where(path)}' is required for {table['provider']}")
    store = raw.get("event_store")
    if isinstance(store, Mapping) and store.get("provider") == "message_db" and not store.get("database_uri"):
        parse.report(
            ("event_store", "database_uri"),
            "config key 'event_store.database_uri' is required for message_db "
            "(e.g. postgresql://message_store@localhost:5432/message_store)",
        )
    server = raw.get("server")
    if isinstance(server, Mapping):
        _check_profiles(server, parse)


def _check_profiles(server: Mapping[str, Any], parse: _Parse) -> None:
    profiles = server.get("profiles")
    custom: Mapping[str, Any] = profiles if isinstance(profiles, Mapping) else {}
    known = [*PROFILES, *custom]
    for name, profile in custom.items():
        if name in PROFILES:
            parse.report(
                ("server", "profiles", name),
                f"config key 'server.profiles.{name}': '{name}' is a built-in profile; "
                f'give yours another name (inherits = "{name}" starts from it)',
            )
        parent = profile.get("inherits") if isinstance(profile, Mapping) else None
        if parent is not None and parent not in PROFILES:
            parse.report(
                ("server", "profiles", name, "inherits"),
                f"config key 'server.profiles.{name}.inherits': {parent!r} is not a built-in "
                f"profile (choose from {sorted(PROFILES)}){_suggest(str(parent), PROFILES)}",
            )
    named: list[tuple[tuple[str, ...], object]] = [
        (("server", "default_subscription_profile"), server.get("default_subscription_profile"))
    ]
    subscriptions = server.get("subscriptions")
    for handler, table in (subscriptions if isinstance(subscriptions, Mapping) else {}).items():
        if isinstance(table, Mapping):
            named.append((("server", "subscriptions", handler, "profile"), table.get("profile")))
    for path, profile in named:
        if profile is not None and profile not in known:
            parse.report(
                path,
                f"config key '{_where(path)}': unknown profile {profile!r} "
                f"(known: {sorted(known)}){_suggest(str(profile), known)}",
            )


def parse_settings(config: Mapping[str, Any]) -> tuple[Settings | None, list[str]]:
    """The typed settings of a raw config, or None and every problem found (never both)."""
    parse = _Parse()
    raw = interpolate_collecting(config, parse.report)
    pruned = parse.prune(raw, Settings, ())
    _check_references(raw, parse)
    try:
        settings = Settings.model_validate(pruned)
    except ValidationError as exc:
        parse.errors(exc)
        return None, parse.problems
    return (None, parse.problems) if parse.problems else (settings, [])


def build_settings(config: Mapping[str, Any]) -> Settings:
    """The typed settings of a raw config; one ConfigurationError lists every problem."""
    settings, problems = parse_settings(config)
    if settings is None:
        raise ConfigurationError(
            f"{len(problems)} problem(s) in the configuration:\n  - " + "\n  - ".join(problems)
        )
    return settings


def broker_settings(raw: Mapping[str, Any], model: type[BrokerOptions]) -> BrokerSettings:
    """A broker's settings from a plain table (an adapter built outside a domain)."""
    parse = _Parse()
    options = {k: v for k, v in raw.items() if k != "provider"}
    pruned = parse.prune(options, model, ("broker",))
    try:
        validated = model.model_validate(pruned)
    except ValidationError as exc:
        parse.errors(exc, ("broker",))
    if parse.problems:
        raise ConfigurationError("; ".join(parse.problems))
    return BrokerSettings(provider=str(raw.get("provider", "")), options=validated)


def check_server_broker(settings: Settings) -> None:
    """`tidings server` runs a worker in its own process: an in-process default broker would
    leave it on `memory://`, consuming nothing. A purely sync domain may use `inline`; a
    server may not (unless `[celery] broker_url` points the worker elsewhere)."""
    default = settings.brokers["default"]
    if default.provider in IN_PROCESS_BROKERS and not settings.celery.get("broker_url"):
        raise ConfigurationError(
            f"`tidings server` with the {default.provider} default broker cannot reach other "
            f"processes: its worker would run on memory:// and consume nothing. Set "
            f'[brokers.default] provider = "redis" (or celery/amqp/sqlalchemy) with a url, e.g. '
            f'url = "redis://localhost:6379/0"; named brokers such as [brokers.notifications] '
            f"do not carry the server's tasks"
        )
