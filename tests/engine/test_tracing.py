"""Traces and JSON logs: one command's commit, relay and handler are one trace (parent chain,
W3C context in the message and the Celery headers); log lines carry the message's ids."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from tests.engine.conftest import running_worker
from tests.engine.test_async_flow import ship_one, state
from tests.shop import build_shop
from tests.waiting import wait_until
from tidings import Domain, handle
from tidings.app import json_logs
from tidings.app.testing import eager_app
from tidings.fields import Identifier


@pytest.fixture
def spans():
    """A tracer provider exporting to memory for this test only (OpenTelemetry allows one
    provider per process: its globals are put back afterwards, as its own tests do)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


def named(exporter, prefix):
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


@pytest.mark.parametrize("provider", ["sqlite"], indirect=True)
def test_one_command_is_one_trace_from_commit_through_relay_to_each_handler(spans, use_provider, redis_app):
    shop = use_provider(build_shop("async", "async"))
    celery = redis_app(shop)
    with running_worker(celery):
        order_id, command_id = ship_one(shop)
        wait_until(lambda: state(shop, order_id) == ("SHIPPED", 6), message="the order shipped")
        wait_until(lambda: len(named(spans, "tidings.handle ")) == 2, message="both handler spans ended")
    commit = next(
        s for s in named(spans, "tidings.commit ") if s.attributes["tidings.message_id"] == command_id
    )
    relays = [s for s in named(spans, "tidings.relay ") if s.attributes["tidings.message_id"] == command_id]
    assert len(relays) == 1  # one publish, one span (whatever other runtimes this process holds)
    relay = relays[0]
    handled = next(s for s in named(spans, "tidings.handle OrderCommandHandler"))
    # the chain: commit -> relay (the message's metadata) -> handler (the Celery headers)
    assert commit.parent is None
    assert relay.parent.span_id == commit.context.span_id
    assert handled.parent.span_id == relay.context.span_id
    assert {commit.context.trace_id, relay.context.trace_id, handled.context.trace_id} == {
        commit.context.trace_id
    }
    assert handled.attributes["tidings.message_id"] == command_id
    assert handled.attributes["tidings.correlation_id"] == commit.attributes["tidings.correlation_id"]
    # ... and on: the event the handler committed, relayed to the inventory handler, same trace
    event_commit = next(s for s in named(spans, "tidings.commit ") if s.parent is not None)
    inventory = next(s for s in named(spans, "tidings.handle ManageInventory"))
    assert event_commit.parent.span_id == handled.context.span_id
    assert inventory.context.trace_id == commit.context.trace_id
    assert inventory.attributes["tidings.causation_id"] == command_id


@pytest.mark.parametrize("provider", ["sqlite"], indirect=True)
def test_without_a_tracer_provider_messages_carry_no_trace_context(use_provider):
    shop = use_provider(build_shop("async", "async"))
    eager_app(shop)
    ship_one(shop)
    with shop.storage.default.engine.connect() as conn:
        envelopes = [json.loads(e) for (e,) in conn.exec_driver_sql("SELECT envelope FROM tidings_outbox")]
    assert envelopes and all("trace" not in e["metadata"] for e in envelopes)


def build_noisy(name: str) -> Domain:
    """One command whose handler logs a line."""
    domain = Domain(name)
    domain.config.update(event_processing="async", command_processing="async", message_processing="async")

    @domain.aggregate
    class Note:
        pass

    @domain.command(part_of=Note)
    class Ping:
        note_id: Identifier(required=True)

    @domain.command_handler(part_of=Note)
    class PingHandler:
        @handle(Ping)
        def ping(self, command):
            logging.getLogger("noisy").warning("pinged %s", command.note_id)

    return domain


@pytest.mark.parametrize("provider", ["sqlite"], indirect=True)
def test_json_log_lines_carry_the_message_id_correlation_id_and_handler(use_provider, monkeypatch):
    monkeypatch.setenv(json_logs.FORMAT_ENV, "json")
    domain = use_provider(build_noisy("noisy"))
    eager_app(domain)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(json_logs.JsonFormatter())
    logger = logging.getLogger("noisy")
    logger.addHandler(handler)
    try:
        with domain.domain_context():
            message_id = domain.process(domain.registry["command"]["Ping"](note_id="n-1"))
        logger.warning("outside any handler")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "pinged n-1" and first["level"] == "WARNING"
    assert first["message_id"] == message_id and first["handler"] == "PingHandler"
    assert first["domain"] == "noisy" and len(first["correlation_id"]) == 32
    assert second["message"] == "outside any handler" and "message_id" not in second
