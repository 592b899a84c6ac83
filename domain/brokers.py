"""The broker port: capabilities, the `Broker` base, the in-process `InlineBroker` and the
`Brokers` registry a domain builds from `[brokers.<name>]` at `init()`.

Adapters are found by the entry point group `tidings.brokers` (provider name -> class), so a
custom adapter registers exactly like the built-in ones. This module never imports a driver.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from tidings.domain.broker_registry import broker_class
from tidings.domain.errors import ConfigurationError, IncorrectUsageError
from tidings.domain.parsing import broker_settings
from tidings.domain.settings import BrokerOptions, BrokerSettings

log = logging.getLogger("tidings.brokers")


class BrokerCapability(enum.Flag):
    """What a broker can do; each tier includes every lower tier.

    The reference's names are aliases of the same flags: `MESSAGE_ACKNOWLEDGEMENT` is `ACK`,
    `MESSAGE_REJECTION` is `NACK`, `ACK_NACK` is both; `BrokerCapabilities` is this class.
    """

    PUBLISH = enum.auto()
    SUBSCRIBE = enum.auto()
    CONSUMER_GROUPS = enum.auto()
    ACK = enum.auto()
    NACK = enum.auto()
    DELIVERY_GUARANTEES = enum.auto()
    MESSAGE_ORDERING = enum.auto()
    BLOCKING_READ = enum.auto()
    DEAD_LETTER_QUEUE = enum.auto()
    REPLAY = enum.auto()
    STREAM_PARTITIONING = enum.auto()

    MESSAGE_ACKNOWLEDGEMENT = ACK
    MESSAGE_REJECTION = NACK
    ACK_NACK = ACK | NACK

    BASIC_PUBSUB = PUBLISH | SUBSCRIBE
    SIMPLE_QUEUING = BASIC_PUBSUB | CONSUMER_GROUPS
    RELIABLE_MESSAGING = SIMPLE_QUEUING | ACK | NACK | DELIVERY_GUARANTEES
    ORDERED_MESSAGING = RELIABLE_MESSAGING | MESSAGE_ORDERING
    ENTERPRISE_STREAMING = (
        ORDERED_MESSAGING | BLOCKING_READ | DEAD_LETTER_QUEUE | REPLAY | STREAM_PARTITIONING
    )


BrokerCapabilities = BrokerCapability  # the reference's name


def _message_id(identifier: str | None, message_id: str | None) -> str:
    if (identifier is None) == (message_id is None):
        raise IncorrectUsageError("give the message's broker id once: `identifier=` or `message_id=`")
    return identifier if identifier is not None else message_id  # type: ignore[return-value]


def mask_url(url: str) -> str:
    """`redis://user:secret@host/0` -> `redis://user:***@host/0`: safe to log and show."""
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


class Broker:
    """One named broker. Adapters implement the `_`-methods; `publish` also hands the message
    to the subscribers of its stream (inline when `message_processing = "sync"`).

    `pulled`: subscribers consume this broker through a consumer group (the engine's pump
    tasks read it); when False the engine pushes each message straight to the subscribers'
    Celery queues.
    """

    capabilities: BrokerCapability = BrokerCapability.BASIC_PUBSUB
    pulled: bool = False
    # The options this adapter reads from its `[brokers.<name>]` table, checked at init().
    options_model: ClassVar[type[BrokerOptions]] = BrokerOptions

    def __init__(self, name: str, domain: Any, settings: BrokerSettings | Mapping[str, Any]) -> None:
        """`settings` comes parsed from the domain's settings; a plain table (an adapter built
        on its own, as in tests) is validated by `options_model` here."""
        if not isinstance(settings, BrokerSettings):
            settings = broker_settings(settings, self.options_model)
        self.name, self.domain, self.settings = name, domain, settings

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # ---- the port ----------------------------------------------------------------------------
    def publish(self, stream: str, message: dict) -> str:
        """Append `message` (a JSON-serialisable dict) to `stream`; returns its broker id.

        Inside a unit of work of this broker's domain the message is staged on it and sent
        once it committed (nothing leaves before the commit; a rollback sends nothing): the
        broker id is not known yet, and "" is returned.
        """
        if not isinstance(message, dict):
            raise IncorrectUsageError(f"a broker message must be a dict, got {type(message).__name__}")
        uow = self._active_uow()
        if uow is not None:
            uow.stage(lambda: self._send(stream, message))
            return ""
        return self._send(stream, message)

    def _active_uow(self) -> Any:
        domain = self.domain
        if domain is None or not getattr(domain, "initialized", False):
            return None
        return domain.bus.active_uow()

    def _send(self, stream: str, message: dict) -> str:
        identifier = self._publish(stream, message)
        if self.domain is not None and getattr(self.domain, "initialized", False):
            self.domain.brokers.deliver(self, stream, identifier, message)
        return identifier

    def read(
        self, stream: str, consumer_group: str, n: int = 1, *, no_of_messages: int | None = None
    ) -> list[tuple[str, dict]]:
        """Up to `n` (the reference: `no_of_messages`) messages of `stream` not yet delivered
        to `consumer_group`, as `(identifier, message)` pairs."""
        return self._read(stream, consumer_group, n if no_of_messages is None else no_of_messages)

    def ensure_group(self, stream: str, consumer_group: str) -> None:
        """Create the group if needed: every message published afterwards reaches it."""

    def ack(
        self,
        stream: str,
        consumer_group: str | None = None,
        identifier: str | None = None,
        *,
        message_id: str | None = None,
    ) -> bool:
        """Mark a read message done for the group; False when it was not pending.

        Positionally `ack(stream, consumer_group, identifier)`; by keyword also the reference's
        `ack(stream=, identifier=, consumer_group=)` and `ack(stream=, message_id=)`. Without a
        group, the message is acknowledged in the one group it is pending in.
        """
        return self._ack(stream, consumer_group, _message_id(identifier, message_id))

    def nack(
        self,
        stream: str,
        consumer_group: str | None = None,
        identifier: str | None = None,
        *,
        message_id: str | None = None,
    ) -> bool:
        """Give a read message back to the group for redelivery; False when it was not pending.
        Takes the same arguments as `ack`."""
        return self._nack(stream, consumer_group, _message_id(identifier, message_id))

    def ping(self) -> bool:
        return True

    def health_stats(self) -> dict[str, Any]:
        """`healthy`, `message_counts` per stream, `consumer_groups` per stream, `dlq_depth`."""
        return {"healthy": self.ping(), "message_counts": {}, "consumer_groups": {}, "dlq_depth": 0}

    def has_capability(self, capability: BrokerCapability) -> bool:
        """True when the broker has every capability in `capability`."""
        return capability in self.capabilities

    def has_all_capabilities(self, capabilities: BrokerCapability) -> bool:
        """True when the broker has every capability in `capabilities` (as `has_capability`)."""
        return capabilities in self.capabilities

    def has_any_capability(self, capabilities: BrokerCapability) -> bool:
        """True when the broker has at least one of `capabilities`."""
        return bool(self.capabilities & capabilities)

    def claim_wakeup(self, stream: str, consumer_group: str, ttl: float) -> bool:
        """True when no wake-up of this group's reader is pending (and one now is, for `ttl`
        seconds or until `release_wakeup`): a burst of publishes sends one wake-up, not one
        each. The default always answers True."""
        return True

    def release_wakeup(self, stream: str, consumer_group: str) -> None:
        """The reader woke up: the next publish may send a wake-up again."""

    def close(self) -> None:
        """Release connections (after a fork, or at shutdown)."""

    # ---- what an adapter implements ------------------------------------------------------------
    def _publish(self, stream: str, message: dict) -> str:
        raise NotImplementedError

    def _read(self, stream: str, consumer_group: str, n: int) -> list[tuple[str, dict]]:
        raise NotImplementedError

    def _ack(self, stream: str, consumer_group: str | None, identifier: str) -> bool:
        """Acknowledge in `consumer_group`, or in the one group holding it when None."""
        raise NotImplementedError(f"{type(self).__name__} cannot acknowledge")

    def _nack(self, stream: str, consumer_group: str | None, identifier: str) -> bool:
        raise NotImplementedError(f"{type(self).__name__} cannot reject")

    def _holder(self, stream: str, identifier: str, holding: list[str]) -> str | None:
        """The one group of `holding` (the groups `identifier` is pending in), or None."""
        if len(holding) > 1:
            raise IncorrectUsageError(
                f"message {identifier} of {stream!r} is pending in groups {sorted(holding)}: "
                f"pass consumer_group="
            )
        return holding[0] if holding else None


class Brokers:
    """The domain's named brokers: `domain.brokers["name"]`, `domain.brokers.publish(...)`."""

    def __init__(self, domain: Any, brokers: Mapping[str, BrokerSettings]) -> None:
        self.domain = domain
        if "default" not in brokers:
            raise ConfigurationError("config section 'brokers' needs a 'default' broker")
        self._brokers = {
            name: broker_class(settings.provider)(name, domain, settings)
            for name, settings in brokers.items()
        }

    def __getitem__(self, name: str) -> Broker:
        try:
            return self._brokers[name]
        except KeyError:
            raise ConfigurationError(
                f"no broker named {name!r} (configured: {sorted(self._brokers)})"
            ) from None

    def __iter__(self) -> Iterator[tuple[str, Broker]]:
        return iter(self._brokers.items())

    def __len__(self) -> int:
        return len(self._brokers)

    def publish(self, stream: str, message: dict, broker: str = "default") -> str:
        """Publish on a named broker (the default one unless told); returns the broker id."""
        return self[broker].publish(stream, message)

    def subscribers(self, broker: Broker, stream: str) -> list[type]:
        """The subscribers of `stream` that consume it from `broker`."""
        return [
            s
            for s in self.domain.bus.routes.subscribers_for(stream)
            if (s.meta_.get("broker") or "default") == broker.name
        ]

    def deliver(self, broker: Broker, stream: str, identifier: str, message: dict) -> None:
        """After a publish: run the stream's subscribers inline (sync), or hand the message to
        the engine (async); a pulled broker needs no engine, its pumps will read it."""
        subscribers = self.subscribers(broker, stream)
        if not subscribers:
            return
        message_id = str(message.get("id") or identifier)
        if self.domain.settings.message_processing == "sync":
            for subscriber in subscribers:
                self.domain.bus.run_subscriber(subscriber, message, message_id=message_id)
            return
        engine = self.domain.engine
        if engine is None:
            if broker.pulled:
                return
            raise IncorrectUsageError(
                "message_processing is async but no engine is attached: create the Celery app "
                "with app.factory.create_celery_app(domain) first"
            )
        engine.deliver(broker, stream, message_id, message, subscribers)

    def close(self) -> None:
        for broker in self._brokers.values():
            broker.close()
