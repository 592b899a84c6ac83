"""Broker-side queue readings (app/broker_queues.py): depth across kombu's Redis priority
sub-queues, RabbitMQ's passive declare with its consumer count, a queue not declared yet;
and on RabbitMQ the running task as in flight (`inspect active`)."""

from __future__ import annotations

import threading
import uuid

import pytest
from celery import Celery
from kombu import Exchange, Queue

from tests.engine.conftest import running_worker
from tests.services import BROKER_URL, REDIS_URL, require_rabbitmq
from tests.waiting import wait_until
from tidings import Domain, handle
from tidings.app.bootstrap import create_celery_app
from tidings.app.broker_queues import read_queues
from tidings.app.status import read_status
from tidings.fields import Identifier
from tidings.tasks.naming import relay_queue, specs


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


def build_holding(name: str, release: threading.Event) -> Domain:
    """One event whose handler holds the worker until the test releases it."""
    domain = Domain(name)
    domain.config.update(event_processing="async", command_processing="async", message_processing="async")

    @domain.aggregate
    class Job:
        pass

    @domain.event(part_of=Job)
    class JobQueued:
        job_id: Identifier(required=True)

    @domain.event_handler(part_of=Job, stream_category="job")
    class Hold:
        @handle(JobQueued)
        def hold(self, event):
            assert release.wait(30), "the test never released the handler"

    return domain


@pytest.mark.timeout(120)
@pytest.mark.parametrize("provider", ["sqlite"], indirect=True)
def test_status_on_rabbitmq_counts_the_running_task_and_the_consumer(use_provider):
    require_rabbitmq()
    release = threading.Event()
    domain = build_holding(f"hold_{uuid.uuid4().hex[:6]}", release)
    domain.config["brokers"]["default"] = {"provider": "amqp", "url": BROKER_URL}
    domain = use_provider(domain)
    celery = create_celery_app(domain)
    Job, JobQueued = domain.registry["aggregate"]["Job"], domain.registry["event"]["JobQueued"]
    try:
        with running_worker(celery, concurrency=1):
            with domain.domain_context():
                job = Job()
                job.raise_(JobQueued(job_id=job.id))
                domain.repository_for(Job).add(job)

            seen = []

            def holding():
                seen[:] = [read_status(domain, celery, workers=True, timeout=2).handlers[0]]
                return seen[0] if seen[0].in_flight == 1 else None

            try:
                row = wait_until(holding, timeout=60, message="the Hold task running")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; last reading: {seen}") from None
            assert (row.workers, row.queue_depth, row.lag_messages) == (1, 0, 1)
            release.set()
            wait_until(lambda: read_status(domain, celery, workers=False).handlers[0].lag_messages == 0)
    finally:
        release.set()
        with celery.connection_for_write() as conn:
            for queue in (*(s.queue for s in specs(domain)), relay_queue(domain)):
                conn.default_channel.queue_delete(queue)
        celery.close()
