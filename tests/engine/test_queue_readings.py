"""Broker-side queue readings (app/broker_queues.py): depth across kombu's Redis priority
sub-queues, RabbitMQ's passive declare with its consumer count, a queue not declared yet."""

from __future__ import annotations

import uuid

from celery import Celery
from kombu import Exchange, Queue

from tests.services import BROKER_URL, REDIS_URL, require_rabbitmq
from tidings.app.broker_queues import read_queues


def publish(celery: Celery, queue: str, priorities: list[int]) -> None:
    with celery.connection_for_write() as conn:
        target = Queue(queue, Exchange(queue), routing_key=queue)
        producer = conn.Producer(serializer="json")
        for priority in priorities:
            producer.publish(
                {"n": priority},
                exchange=target.exchange,
                routing_key=queue,
                declare=[target],
                priority=priority,
            )


def test_redis_depth_counts_every_priority_sub_queue(redis_prefix):
    celery = Celery(broker=REDIS_URL, broker_transport_options={"global_keyprefix": redis_prefix})
    queue, missing = f"q-{uuid.uuid4().hex[:6]}", f"none-{uuid.uuid4().hex[:6]}"
    publish(celery, queue, [0, 0, 5, 9])  # kombu puts 5 and 9 on `<queue>\x06\x16<step>` lists
    readings = read_queues(celery, [queue, missing])
    assert (readings[queue].depth, readings[queue].in_flight) == (4, 0)
    assert readings[missing].depth == 0 and readings[queue].consumers is None  # not known on Redis
    celery.close()


def test_rabbitmq_reads_a_passive_declare_and_survives_a_missing_queue():
    require_rabbitmq()
    celery = Celery(broker=BROKER_URL)
    queue, missing = f"tidings-test-{uuid.uuid4().hex[:6]}", f"tidings-none-{uuid.uuid4().hex[:6]}"
    publish(celery, queue, [0, 0, 0])
    try:
        # the missing queue closes the channel that asked (404): the next one is read on a new one
        readings = read_queues(celery, [missing, queue])
        assert (readings[missing].depth, readings[queue].depth, readings[queue].consumers) == (0, 3, 0)
        assert readings[queue].in_flight is None  # not known broker-side on AMQP
    finally:
        with celery.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        celery.close()
