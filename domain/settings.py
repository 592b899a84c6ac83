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

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tidings.domain.profiles import BUILT_IN

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
    """`[databases.<name>]`: `memory`, or `sqlite`/`postgresql` with a `database_uri`.

    `prepared_statements` (PostgreSQL): the write path's statements are prepared once per
    connection (`tidings.domain.pg_prepared`); switch off behind a pooler that shares server
    connections between clients (PgBouncer in transaction mode)."""

    provider: DatabaseProvider = "memory"
    database_uri: str | None = None
    prepared_statements: Flag = True


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
    circuit_breaker_threshold: NonNegativeInt | None = None
    circuit_breaker_reset_seconds: PositiveFloat | None = None

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


Backoff = Literal["exponential", "linear", "fixed"]


class TransientRetrySettings(FrozenModel):
    """`[server.transient_retry]`: faults of the infrastructure, not of the handler.

    A database disconnect, a locked SQLite file or a broker connection error raised while a
    handler runs is retried with backoff until `deadline_seconds` after the message's first
    such fault, *without* spending the handler's `max_retries`; past the deadline it counts
    as an ordinary failure. The reference's names; unlike the reference it is on by default,
    so that a database restart dead-letters nothing.

    `exceptions` adds dotted names of other exception types to treat as transient.
    `max_retries` (None: only the deadline bounds them) caps the transient retries too.
    `max_delay_seconds` must stay below the Redis visibility timeout (checked at start-up).
    """

    enabled: Flag = True
    max_retries: NonNegativeInt | None = None
    backoff: Backoff = "exponential"
    base_delay_seconds: PositiveFloat = 0.5
    max_delay_seconds: PositiveFloat = 5.0
    deadline_seconds: PositiveFloat = 300.0
    exceptions: tuple[str, ...] = ()


class VersionRetrySettings(FrozenModel):
    """`[server.version_retry]`: a handler run that meets `ExpectedVersionError` (another
    writer changed the aggregate since it was loaded) is re-run in a fresh unit of work, with
    an exponential backoff, before the failure counts as a delivery attempt."""

    enabled: Flag = True
    max_retries: NonNegativeInt = 3
    base_delay_seconds: NonNegativeFloat = 0.05
    max_delay_seconds: NonNegativeFloat = 1.0


WorkerPool = Literal["prefork", "threads", "solo"]


class LaneSettings(FrozenModel):
    """`[server.lanes.<name>]`: handlers (class names; `"*"`: every handler no other lane
    names) whose queues one `celery worker -Q ...` child consumes, with its own pool and
    concurrency (unset: `[server] lane_pool` / `lane_concurrency`). See app/lanes.py."""

    handlers: tuple[str, ...] = ()
    concurrency: PositiveInt | None = None
    pool: WorkerPool | None = None


class PriorityLaneSettings(FrozenModel):
    """`[server.priority_lanes]` (the reference's names): a message whose priority is below
    `threshold` goes to `<queue>.<backfill_suffix>`, which the handler's lane consumes after
    (interleaved with) its own queue, so a bulk backlog never sits in front of interactive work."""

    enabled: Flag = False
    threshold: int = 0
    backfill_suffix: str = "backfill"


class ServerSettings(FrozenModel):
    """`[server]`: subscription defaults, custom profiles and per-handler subscriptions."""

    # Left unset, these come from domain.subscriptions.BUILT_IN, so that
    # `default_subscription_profile` is not shadowed by defaults nobody wrote.
    default_subscription_type: SubscriptionType | None = None
    default_subscription_profile: str | None = None
    messages_per_tick: PositiveInt | None = None
    stream_subscription: SubscriptionOptions = SubscriptionOptions()
    event_store_subscription: EventStoreSubscriptionOptions = EventStoreSubscriptionOptions()
    transient_retry: TransientRetrySettings = TransientRetrySettings()
    subscriptions: dict[str, HandlerSubscription] = {}
    profiles: dict[str, CustomProfile] = {}
    version_retry: VersionRetrySettings = VersionRetrySettings()
    # Lanes (app/lanes.py): every handler not named in a `[server.lanes.<name>]` gets a lane
    # of its own with these; `lane_concurrency` threads (or processes) per worker child.
    lanes: dict[str, LaneSettings] = {}
    lane_pool: WorkerPool = "threads"
    lane_concurrency: PositiveInt = 2
    priority_lanes: PriorityLaneSettings = PriorityLaneSettings()
    # Where circuit breakers keep their state, shared by every worker (tasks/breaker.py): a
    # redis:// URL; unset, the default broker's URL when it is Redis, else each process its own.
    breaker_store: str | None = None


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
