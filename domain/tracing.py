"""Trace context on messages: the span of the commit that wrote them, in W3C form.

With OpenTelemetry installed (`pip install tidings[otel]`) and a tracer provider configured,
a unit of work's commit runs in a `tidings.commit` span, and every message it commits carries
that span's context in `metadata["trace"]` (`{"traceparent": ...}`, the W3C header, through
the configured propagator). The relay's publish span and the handler's span continue it
(app/tracing.py), so one command's commit, relay and handlers, and what those handlers commit
in turn, are one trace. Without OpenTelemetry, or with no recording span, nothing changes
and a commit costs one check.

OpenTelemetry's API is what a library should depend on (never the SDK): the application that
configures a provider decides where spans go.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # the optional extra is not installed
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from tidings.domain.envelope import Message

TRACE_KEY = "trace"  # metadata key of the W3C carrier ({"traceparent": ..., "tracestate": ...})
TRACER = "tidings"


def carrier_of(metadata: dict[str, Any]) -> dict[str, str]:
    """The W3C carrier a message's metadata holds ({} when it has none)."""
    found = metadata.get(TRACE_KEY)
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def tracing() -> bool:
    """Is a tracer provider configured? (Without one, OpenTelemetry's API is a no-op proxy.)"""
    if trace is None:
        return False
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


@contextmanager
def commit_span(owner: str, messages: list[Message]) -> Iterator[list[Message]]:
    """Runs the commit of `messages` in a `tidings.commit` span and yields them stamped with
    its context (the same list when nothing records)."""
    if not messages or not tracing():
        yield messages
        return
    first = messages[0]
    attributes: dict[str, str | int] = {
        "tidings.domain": owner,
        "tidings.message_type": first.type,
        "tidings.message_id": first.id,
        "tidings.correlation_id": first.correlation_id,
        "tidings.causation_id": first.causation_id or "",
        "tidings.messages": len(messages),
    }
    tracer = trace.get_tracer(TRACER)
    with tracer.start_as_current_span(f"tidings.commit {first.type}", attributes=attributes) as span:
        if not span.is_recording():
            yield messages
            return
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield [m.model_copy(update={"metadata": {**m.metadata, TRACE_KEY: carrier}}) for m in messages]
