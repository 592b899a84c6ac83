"""The typed settings tree: one frozen `Settings`, parsed once by `domain.init()`.

`domain.config` is the raw, user-editable dict (defaults merged with `domain.toml`);
`parse_settings` turns it into `Settings` in one pass and reports *every* problem at once:

1. `${VAR|default}` interpolation (see `domain.config.interpolate`);
2. a key check against the models, with "did you mean" for a misspelt key and a precise fix
   for a top-level key written inside a table (TOML puts every key after `[brokers.default]`
   into that table);
3. cross-field checks (a `default` database and broker, a URI where the provider needs one,
   profile names that exist);
4. pydantic validation of values: an interpolated `"5"` for an integer becomes 5, `"yes"` for a
   flag becomes True, and a value that is not one names its key.

Each consumer then reads its own part by attribute: the relay gets `OutboxSettings`, the
subscription resolver `ServerSettings`, a broker adapter its `BrokerSettings`.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tidings.domain.config import interpolate_collecting
from tidings.domain.errors import ConfigurationError
from tidings.domain.subscriptions import BUILT_IN, PROFILES

ProcessingMode = Literal["sync", "async"]
SubscriptionType = Literal["stream", "event_store"]
DatabaseProvider = Literal["memory", "sqlite", "postgresql"]
EventStoreProvider = Literal["memory", "sqlite", "postgresql", "message_db"]
AfterCommit = Literal["kick", "thread"]  # how a commit gets its outbox rows relayed at once

# Brokers whose transport is this process's memory: a worker in another process reads nothing.
IN_PROCESS_BROKERS = frozenset({"inline", "memory"})
_SQL_PROVIDERS = frozenset({"sqlite", "postgresql"})

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}


def _flag(value: object) -> object:
    # Interpolated values are strings: `${DEBUG|false}` and `${X|}` (empty: false) are flags.
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return value


def _number(value: object) -> object:
    # pydantic's lax mode reads True as 1; a flag where a number belongs is a mistake.
    if isinstance(value, bool):
        raise PydanticCustomError("not_a_number", "must be a number")
    return value


Flag = Annotated[StrictBool, BeforeValidator(_flag)]
PositiveInt = Annotated[int, Field(gt=0), BeforeValidator(_number)]
NonNegativeInt = Annotated[int, Field(ge=0), BeforeValidator(_number)]
PositiveFloat = Annotated[float, Field(gt=0), BeforeValidator(_number)]
NonNegativeFloat = Annotated[float, Field(ge=0), BeforeValidator(_number)]


class FrozenModel(BaseModel):
    """Base of every settings model: immutable, and no key the model does not declare."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


# ---- brokers -----------------------------------------------------------------------------------
class BrokerOptions(FrozenModel):
    """The options of a `[brokers.<name>]` table besides `provider`. An adapter declares its
    own subclass as `Broker.options_model`; `url` is also read as the reference's `URI`."""

    url: str | None = Field(default=None, validation_alias=AliasChoices("url", "URI", "uri"))


class BrokerSettings(FrozenModel):
    """One named broker: its provider (an entry point of `tidings.brokers`) and its options,
    validated by the adapter's own options model."""

    provider: str
    options: BrokerOptions = BrokerOptions()

    def with_options(self, **changes: object) -> BrokerSettings:
        """A copy with some options changed, validated again by the same options model."""
        options = type(self.options).model_validate({**self.options.model_dump(), **changes})
        return BrokerSettings(provider=self.provider, options=options)


# ---- storage -----------------------------------------------------------------------------------
class DatabaseSettings(FrozenModel):
    """`[databases.<name>]`: `memory`, or `sqlite`/`postgresql` with a `database_uri`."""

    provider: DatabaseProvider = "memory"
    database_uri: str | None = None


class EventStoreSettings(FrozenModel):
    """`[event_store]`: defaults to the default database's URI for `sqlite`/`postgresql`;
    `message_db` needs its own `database_uri`."""

    provider: EventStoreProvider = "memory"
    database_uri: str | None = None


class OutboxSettings(FrozenModel):
    """`[outbox]`: how the relay moves committed messages to the broker."""

    interval: PositiveFloat = 1.0  # seconds between beat-driven relay rounds
    batch_size: PositiveInt = 100  # rows claimed per round
    retention: PositiveFloat = 604800.0  # seconds a published row is kept (7 days)
    backoff_base: PositiveFloat = 1.0  # seconds; doubles per failed publish attempt
    backoff_max: PositiveFloat = 60.0
    broker: str = "default"
    after_commit: AfterCommit = "kick"  # "thread": see app/relay_thread.py
    # Brokers that also receive the domain's `published=True` events, each on the stream named
    # after the event's category, as `Message.to_external_dict()` (one outbox row per broker).
    external_brokers: tuple[str, ...] = ()
    # The delivery audit (tasks/audit.py): a published row that a queued handler has neither
    # applied (inbox row) nor dead-lettered `audit_grace` seconds after its publish is sent
    # again to that handler's queue, at most `audit_batch` rows per round, every
    # `audit_interval` seconds (beat). A row is re-sent again after audit_grace * 2**resent
    # seconds (at most `audit_backoff_max`), at most `audit_max_resends` times, and only while
    # it was published less than `audit_window` seconds ago.
    audit_interval: PositiveFloat = 5.0
    audit_grace: PositiveFloat = 20.0
    audit_batch: PositiveInt = 500
    audit_window: PositiveFloat = 86400.0  # 1 day
    audit_backoff_max: PositiveFloat = 3600.0
    audit_max_resends: PositiveInt = 10
    # Inbox rows older than this are purged with the published rows: it must exceed
    # `audit_window`, or a re-sent message could find its inbox row gone and apply twice.
    inbox_retention: PositiveFloat = 604800.0  # 7 days
    # `tidings health` is degraded when the oldest pending row, or the oldest delivery still
    # unconfirmed past `audit_grace`, is older than this many seconds.
    health_lag: PositiveFloat = 60.0

    @model_validator(mode="after")
    def _horizons(self) -> OutboxSettings:
        if self.inbox_retention <= self.audit_window:
            raise ValueError(
                f"inbox_retention ({self.inbox_retention:g} s) must exceed audit_window "
                f"({self.audit_window:g} s): the audit may re-send a message that long after its "
                "publish, and the inbox row must still be there to absorb it"
            )
        if self.audit_window <= self.audit_grace:
            raise ValueError(
                f"audit_window ({self.audit_window:g} s) must exceed audit_grace ({self.audit_grace:g} s)"
            )
        return self


# ---- server and subscriptions ------------------------------------------------------------------
class SubscriptionOptions(FrozenModel):
    """Subscription values a server section may set (each left unset falls through to a lower
    level of the resolution order in `domain.subscriptions`). Its fields are `BUILT_IN`'s keys."""

    subscription_type: SubscriptionType | None = None
    messages_per_tick: PositiveInt | None = None
    blocking_timeout_ms: PositiveInt | None = None
    max_retries: NonNegativeInt | None = None
    retry_delay_seconds: NonNegativeFloat | None = None
    retry_backoff: Flag | None = None
    retry_backoff_max: PositiveFloat | None = None
    retry_jitter: Flag | None = None
    enable_dlq: Flag | None = None
    position_update_interval: PositiveInt | None = None
    batch_delivery: Flag | None = None

    def values(self) -> dict[str, object]:
        """The values this section sets, by option name."""
        return self.model_dump(exclude_none=True, include=set(BUILT_IN))


class HandlerSubscription(SubscriptionOptions):
    """`[server.subscriptions.<Handler>]`: options for one handler, optionally a `profile`."""

    profile: str | None = None


class CustomProfile(SubscriptionOptions):
    """`[server.profiles.<name>]`: a named set of options, optionally on top of a built-in one."""

    inherits: str | None = None


class EventStoreSubscriptionOptions(FrozenModel):
    """`[server.event_store_subscription]`. Only `position_update_interval` is used (as the
    server default of every event_store handler); the reference's other keys are accepted."""

    position_update_interval: PositiveInt | None = None
    max_retries: NonNegativeInt | None = None
    retry_delay_seconds: NonNegativeFloat | None = None
    enable_recovery: Flag | None = None
    recovery_interval_seconds: PositiveFloat | None = None
    gap_timeout_seconds: PositiveFloat | None = None


class VersionRetrySettings(FrozenModel):
    """`[server.version_retry]`: a handler run that meets `ExpectedVersionError` (another
    writer changed the aggregate since it was loaded) is re-run in a fresh unit of work, with
    an exponential backoff, before the failure counts as a delivery attempt."""

    enabled: Flag = True
    max_retries: NonNegativeInt = 3
    base_delay_seconds: NonNegativeFloat = 0.05
    max_delay_seconds: NonNegativeFloat = 1.0


class ServerSettings(FrozenModel):
    """`[server]`: subscription defaults, custom profiles and per-handler subscriptions."""

    # Left unset, these come from domain.subscriptions.BUILT_IN, so that
    # `default_subscription_profile` is not shadowed by defaults nobody wrote.
    default_subscription_type: SubscriptionType | None = None
    default_subscription_profile: str | None = None
    messages_per_tick: PositiveInt | None = None
    stream_subscription: SubscriptionOptions = SubscriptionOptions()
    event_store_subscription: EventStoreSubscriptionOptions = EventStoreSubscriptionOptions()
    subscriptions: dict[str, HandlerSubscription] = {}
    profiles: dict[str, CustomProfile] = {}
    version_retry: VersionRetrySettings = VersionRetrySettings()


# ---- the tree ----------------------------------------------------------------------------------
class Settings(FrozenModel):
    """The whole configuration, typed and frozen. Built by `domain.init()` as `domain.settings`."""

    debug: Flag = False
    event_processing: ProcessingMode = "async"
    command_processing: ProcessingMode = "async"
    message_processing: ProcessingMode = "async"
    enable_outbox: Flag | None = None  # None: on exactly when some processing is async
    command_default_timeout: PositiveFloat | None = None  # seconds; None: commands never expire
    databases: dict[str, DatabaseSettings] = {"default": DatabaseSettings()}
    brokers: dict[str, BrokerSettings] = {"default": BrokerSettings(provider="inline")}
    event_store: EventStoreSettings = EventStoreSettings()
    outbox: OutboxSettings = OutboxSettings()
    server: ServerSettings = ServerSettings()
    celery: dict[str, Any] = {}  # raw Celery settings (Celery's own names), applied last

    # Keys that belong at the top level; found inside a table they are misplaced, not unknown.
    TOP_LEVEL: ClassVar[frozenset[str]] = frozenset(
        {
            "debug",
            "event_processing",
            "command_processing",
            "message_processing",
            "enable_outbox",
            "command_default_timeout",
        }
    )

    @property
    def outbox_enabled(self) -> bool:
        """The outbox is on when asked for, or by default whenever some processing is async."""
        if self.enable_outbox is not None:
            return self.enable_outbox
        return "async" in (self.event_processing, self.command_processing)


# ---- parsing ------------------------------------------------------------------------------------
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
        from tidings.domain.brokers import available_providers, broker_class  # brokers imports us

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
    custom = server.get("profiles") if isinstance(server.get("profiles"), Mapping) else {}
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
