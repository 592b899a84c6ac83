"""`celery` (also `amqp`, `sqlalchemy`): a kombu broker on any kombu URL (Redis, RabbitMQ,
SQLAlchemy). Subscribers get each message in their own Celery queue (the engine sends it
there); `read` consumers get it through a queue `<stream>.<group>` bound to the direct
exchange `tidings.streams` under the stream's name."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, ClassVar, cast
from uuid import uuid4

from kombu import Connection, Exchange, Message, Producer, Queue
from kombu.exceptions import OperationalError

from tidings.app.brokers import UrlOptions, translated
from tidings.domain.brokers import Broker, BrokerCapability
from tidings.domain.settings import BrokerOptions, BrokerSettings
from tidings.tasks.naming import queue_name

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

EXCHANGE = Exchange("tidings.streams", type="direct", durable=True)


def _connect(connection: Connection) -> None:
    """Connect now or fail now: one attempt, no retry interval (kombu waits 2 s by default)."""
    connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)


class CeleryOptions(UrlOptions):
    """`url` (any kombu URL), `transport_options` (kombu's, e.g. `global_keyprefix`)."""

    transport_options: dict[str, Any] = {}


class CeleryBroker(Broker):
    """Settings: see `CeleryOptions`."""

    capabilities = BrokerCapability.RELIABLE_MESSAGING
    options_model: ClassVar[type[BrokerOptions]] = CeleryOptions

    def __init__(self, name: str, domain: Domain, settings: BrokerSettings | Mapping[str, Any]) -> None:
        super().__init__(name, domain, settings)
        options = cast(CeleryOptions, self.settings.options)
        self.url = options.url
        self.transport_options = dict(options.transport_options)
        self._connection: Connection | None = None
        self._channel: Any = None
        self._held: dict[str, Message] = {}  # read, not yet acked: acked on their channel
        self.declared: set[tuple[str, str]] = set()  # (stream, group) queues this process made
        self._lock = threading.RLock()  # one kombu channel, never used by two threads at once

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Hold the channel lock; translate connection errors."""
        errors = (OSError, OperationalError, *Connection(self.url).connection_errors)
        with self._lock, translated(self.name, self.url, errors):
            yield

    @property
    def channel(self) -> Any:
        if self._channel is None:
            with self._errors():
                self._connection = Connection(self.url, transport_options=self.transport_options)
                _connect(self._connection)
                self._channel = self._connection.channel()
        return self._channel

    @staticmethod
    def group_queue(stream: str, consumer_group: str) -> Queue:
        return Queue(f"{stream}.{consumer_group}", EXCHANGE, routing_key=stream, durable=True)

    def _publish(self, stream: str, message: dict) -> str:
        identifier = str(uuid4())
        with self._errors():
            Producer(self.channel).publish(
                message,
                exchange=EXCHANGE,
                routing_key=stream,
                serializer="json",
                headers={"tidings_id": identifier},
                declare=[EXCHANGE],
                retry=True,
            )
        return identifier

    def ensure_group(self, stream: str, consumer_group: str) -> None:
        with self._errors():
            self.group_queue(stream, consumer_group)(self.channel).declare()
        self.declared.add((stream, consumer_group))

    def _read(self, stream: str, consumer_group: str, n: int) -> list[tuple[str, dict]]:
        self.ensure_group(stream, consumer_group)
        out: list[tuple[str, dict[str, Any]]] = []
        with self._errors():
            queue = self.group_queue(stream, consumer_group)(self.channel)
            while len(out) < n:
                message = queue.get(no_ack=False)
                if message is None:
                    break
                identifier = str(message.headers.get("tidings_id") or message.delivery_tag)
                self._held[identifier] = message
                out.append((identifier, message.payload))
        return out

    def _ack(self, stream: str, consumer_group: str | None, identifier: str) -> bool:
        # a held message is acked on the channel it came from: the group is not needed
        message = self._held.pop(identifier, None)
        if message is None:
            return False
        with self._errors():
            message.ack()
        return True

    def _nack(self, stream: str, consumer_group: str | None, identifier: str) -> bool:
        message = self._held.pop(identifier, None)
        if message is None:
            return False
        with self._errors():
            message.requeue()
        return True

    def ping(self) -> bool:
        try:
            with Connection(self.url, transport_options=self.transport_options) as conn:
                _connect(conn)
            return True
        except Exception:  # noqa: BLE001 - any failure to connect means unhealthy
            return False

    def health_stats(self) -> dict[str, Any]:
        """Messages waiting per stream: in each subscriber's Celery queue on this broker and
        in the group queues this process declared."""
        if not self.ping():
            return {"healthy": False, "message_counts": {}, "consumer_groups": {}, "dlq_depth": 0}
        queues = [(stream, self.group_queue(stream, group)) for stream, group in self.declared]
        for subscriber in self.domain.registry["subscriber"].values() if self.domain else []:
            if (subscriber.meta_.get("broker") or "default") == self.name:
                name = queue_name(self.domain, subscriber)  # declared as the Celery app does
                queues.append((subscriber.meta_["stream"], Queue(name, routing_key=name)))
        counts: dict[str, int] = {}
        groups: dict[str, list[str]] = {}
        for stream, queue in sorted(queues, key=lambda q: (q[0], q[1].name)):
            groups.setdefault(stream, []).append(queue.name)
            counts[stream] = counts.get(stream, 0) + self._depth(queue)
        return {"healthy": True, "message_counts": counts, "consumer_groups": groups, "dlq_depth": 0}

    def _depth(self, queue: Queue) -> int:
        # A declare, not a passive one: kombu's Redis transport ignores `global_keyprefix` in
        # its passive check. Its own connection, so a failure never breaks the read channel.
        try:
            with Connection(self.url, transport_options=self.transport_options) as conn:
                _, count, _ = queue(conn.default_channel).queue_declare()
            return count or 0
        except Exception:  # noqa: BLE001 - a queue not declared yet, or a transport that
            return 0  # cannot count, reports 0

    def close(self) -> None:
        self._held.clear()
        if self._connection is not None:
            with suppress(Exception):  # closing a dead connection is not an error
                self._connection.release()
        self._connection = self._channel = None
