"""OpenTelemetry spans for the relay's publish and the handler's run, continuing the commit's.

    commit (domain/tracing.py, the producer's process)
      └─ tidings.relay <type> -> <Handler>   (the process that relays: `before_task_publish`)
           └─ tidings.handle <Handler>        (the worker: `task_prerun` .. `task_postrun`)
                └─ tidings.commit <type>      (what the handler commits, and so on)

The commit's context travels in the message (`metadata["trace"]`, W3C), the relay span's in
the Celery task headers (`traceparent`, `tracestate`), as OpenTelemetry's own Celery
instrumentation carries it. A handler run without those headers (eager mode: no publish)
continues the message's context. The spans carry the message id, correlation and causation
ids and the handler. Installed by the bootstrap when OpenTelemetry is importable; spans are
recorded only once the application configured a tracer provider.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.signals import before_task_publish, task_failure, task_postrun, task_prerun

from tidings.domain.tracing import TRACER, carrier_of, tracing
from tidings.tasks.naming import specs

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

try:
    from opentelemetry import context, propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the optional extra is not installed
    trace = None  # type: ignore[assignment]


def _attributes(envelope: dict[str, Any], handler: str) -> dict[str, str]:
    return {
        "tidings.message_id": str(envelope.get("id") or ""),
        "tidings.message_type": str(envelope.get("type") or ""),
        "tidings.correlation_id": str(envelope.get("correlation_id") or ""),
        "tidings.causation_id": str(envelope.get("causation_id") or ""),
        "tidings.handler": handler,
    }


def _envelope(args: Any) -> dict[str, Any] | None:
    """The one envelope a handler task carries (a pack of several is not traced per message)."""
    first = args[0] if isinstance(args, list | tuple) and args else None
    return first if isinstance(first, dict) else None


class TaskTracer:
    """Signal receivers for one runtime's handler tasks (another app's are ignored)."""

    def __init__(self, domain: Domain, celery: Celery) -> None:
        self.celery = celery
        self.handlers = {s.task_name: s.name for s in specs(domain)}
        self.running: dict[str, tuple[Any, object]] = {}  # task id -> (span, context token)

    def connect(self) -> None:
        before_task_publish.connect(self.published, weak=False)
        task_prerun.connect(self.started, weak=False)
        task_failure.connect(self.failed, weak=False)
        task_postrun.connect(self.finished, weak=False)

    def published(self, sender: Any = None, body: Any = None, headers: Any = None, **_: Any) -> None:
        """The relay (or the audit) sends one task: a span child of the message's commit, whose
        context the task's headers carry on."""
        handler = self.handlers.get(str(sender))
        if handler is None or not tracing() or not isinstance(headers, dict):
            return
        if "traceparent" in headers:  # traced already: the signal names no app, and runtimes
            return  # of one domain (same task names) in one process all receive it
        envelope = _envelope(body[0] if isinstance(body, list | tuple) and body else None)
        if envelope is None:
            return
        parent = propagate.extract(carrier_of(envelope.get("metadata") or {}))
        tracer = trace.get_tracer(TRACER)
        name = f"tidings.relay {envelope.get('type')} -> {handler}"
        with tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.PRODUCER, attributes=_attributes(envelope, handler)
        ):
            propagate.inject(headers)

    def started(self, sender: Any = None, task_id: str | None = None, args: Any = None, **_: Any) -> None:
        handler = self.handlers.get(getattr(sender, "name", ""))
        if handler is None or getattr(sender, "app", None) is not self.celery or not tracing():
            return
        envelope = _envelope(args) or {}
        request = sender.request
        carrier = {k: str(v) for k in ("traceparent", "tracestate") if (v := request.get(k))}
        parent = propagate.extract(carrier or carrier_of(envelope.get("metadata") or {}))
        span = trace.get_tracer(TRACER).start_span(
            f"tidings.handle {handler}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={**_attributes(envelope, handler), "celery.task_id": str(task_id)},
        )
        token = context.attach(trace.set_span_in_context(span))  # its commits continue it
        self.running[str(task_id)] = (span, token)

    def failed(self, task_id: str | None = None, exception: BaseException | None = None, **_: Any) -> None:
        found = self.running.get(str(task_id))
        if found is not None and exception is not None:
            found[0].record_exception(exception)
            found[0].set_status(Status(StatusCode.ERROR, type(exception).__name__))

    def finished(self, task_id: str | None = None, state: str | None = None, **_: Any) -> None:
        found = self.running.pop(str(task_id), None)
        if found is None:
            return
        span, token = found
        span.set_attribute("celery.state", str(state))
        context.detach(token)  # type: ignore[arg-type]
        span.end()


def install(domain: Domain, celery: Celery) -> None:
    """Trace this runtime's tasks when OpenTelemetry is importable (the bootstrap's hook)."""
    if trace is not None:
        TaskTracer(domain, celery).connect()
