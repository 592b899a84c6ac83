"""What the Celery broker holds for each queue, read broker-side in as few round trips as it
allows (`tidings status`, the metrics' lag gauges).

- Redis: one pipeline for every queue: `LLEN` of the queue and of its kombu priority
  sub-queues (`<queue>\\x06\\x16<priority>`), and the `unacked` hash, whose entries
  (`[message, exchange, routing_key]`) are the messages delivered and not acknowledged, i.e.
  in flight. The hash holds at most workers x prefetch entries, so reading it is cheap.
- RabbitMQ (and any other transport): a passive `queue_declare` per queue, whose answer is the
  ready message count and (AMQP) the consumers; in flight is not known broker-side there.
- The embedded SQLAlchemy transport answers the same passive declare with a `COUNT` of the
  visible rows of its table.

A queue that does not exist yet reads as empty.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery

REDIS_TRANSPORTS = ("redis", "rediss", "sentinel")
AMQP_TRANSPORTS = ("amqp", "amqps", "pyamqp", "librabbitmq")


@dataclass(frozen=True)
class QueueReading:
    """One queue, broker-side; None where the transport cannot tell."""

    depth: int | None
    in_flight: int | None = None
    consumers: int | None = None


def transport_of(celery: Celery) -> str:
    return str(celery.conf.broker_url).split("://", 1)[0].split("+", 1)[0]


def read_queues(celery: Celery, queues: Sequence[str]) -> dict[str, QueueReading]:
    """Each queue's reading; raises what the broker connection raises (the caller reports it)."""
    if celery.conf.task_always_eager:
        return {q: QueueReading(depth=None) for q in queues}  # eager: nothing is ever queued
    with celery.connection_for_read() as conn:
        channel = conn.default_channel
        if transport_of(celery) in REDIS_TRANSPORTS:
            return _redis(channel, queues)
        return _declared(conn, channel, queues, transport_of(celery) in AMQP_TRANSPORTS)


def _redis(channel: Any, queues: Sequence[str]) -> dict[str, QueueReading]:
    steps = list(channel.priority_steps)
    with channel.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
        for queue in queues:
            for step in steps:
                pipe.llen(channel._q_for_pri(queue, step))
        pipe.hvals(_unprefixed(client, channel.unacked_key))
        answers = pipe.execute()
    unacked = Counter(_routing_key(raw) for raw in answers[-1])
    readings = {}
    for i, queue in enumerate(queues):
        sizes = answers[i * len(steps) : (i + 1) * len(steps)]
        readings[queue] = QueueReading(depth=sum(int(s) for s in sizes), in_flight=unacked.get(queue, 0))
    return readings


def _unprefixed(client: Any, key: str) -> str:
    """`key` as HVALS needs it: kombu's prefixing client (`global_keyprefix`) prefixes the
    commands it lists, and HVALS is not among them (kombu 5.7)."""
    if "HVALS" in getattr(client, "PREFIXED_SIMPLE_COMMANDS", ("HVALS",)):
        return key
    return f"{client.global_keyprefix}{key}"


def _routing_key(raw: bytes | str) -> str | None:
    """The queue an `unacked` entry was delivered from (Tidings routes by queue name)."""
    try:
        _message, _exchange, routing_key = json.loads(raw)
    except (ValueError, TypeError):
        return None
    return str(routing_key)


def _declared(conn: Any, channel: Any, queues: Sequence[str], amqp: bool) -> dict[str, QueueReading]:
    readings = {}
    for queue in queues:
        try:
            _name, depth, consumers = channel.queue_declare(queue=queue, passive=True)
        except conn.channel_errors:  # not declared yet: no worker ever consumed it, nothing queued
            readings[queue] = QueueReading(depth=0, consumers=0 if amqp else None)
            channel = conn.channel()  # AMQP closes the channel that asked for a missing queue
            continue
        # virtual transports (SQLAlchemy) answer 0 consumers whatever runs: not a count
        readings[queue] = QueueReading(depth=int(depth), consumers=int(consumers) if amqp else None)
    return readings
