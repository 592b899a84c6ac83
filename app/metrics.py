"""Prometheus metrics of workers and the relay, off by default.

Turned on for a process by `TIDINGS_METRICS_PORT` (the worker's main process then serves
`/metrics` on that port) or by `PROMETHEUS_MULTIPROC_DIR` alone (the pool processes record,
`tidings metrics serve` serves). Prefork workers use prometheus_client's multiprocess mode:
each process writes its samples to files in `PROMETHEUS_MULTIPROC_DIR` (a fresh temporary
folder when only the port is set), the server adds them up, and a pool process that exits
is marked dead (`mark_process_dead`) so its live gauges go.

Counted from Celery's signals, in the process that ran the task (nothing to add to a handler):

| metric | type | labels |
|---|---|---|
| `tidings_handler_duration_seconds` | histogram | domain, handler, outcome (`success`, `failure`, `retry`) |
| `tidings_handler_retries_total` | counter | domain, handler |
| `tidings_handler_final_failures_total` | counter | domain, handler: dead-lettered (or dropped) |
| `tidings_outbox_relayed_total` | counter | domain: messages the relay task published |
| `tidings_relay_runs_total` | counter | domain |
| `tidings_audit_resent_total` | counter | domain: rows the delivery audit sent again |

Read at each scrape by the serving process, one `read_status` (app/status.py, a few
statements): `tidings_outbox_pending`, `tidings_outbox_failing`,
`tidings_outbox_oldest_pending_seconds`, `tidings_audit_lag_seconds`, and per handler
`tidings_handler_lag_messages`, `tidings_handler_lag_seconds`, `tidings_queue_depth`,
`tidings_dead_letters`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    worker_init,
    worker_process_shutdown,
)

from tidings.tasks.audit import audit_task_name
from tidings.tasks.naming import batch_task_name, relay_task_name, specs

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import Metric

    from tidings.domain.domain import Domain

log = logging.getLogger("tidings.metrics")

PORT_ENV = "TIDINGS_METRICS_PORT"
DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own name for it
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def enabled() -> bool:
    return bool(os.environ.get(PORT_ENV) or os.environ.get(DIR_ENV))


def multiprocess_dir() -> str:
    """The samples' folder: `PROMETHEUS_MULTIPROC_DIR`, else a fresh one set for this process
    and the pool processes it forks (before prometheus_client picks its value class)."""
    path = os.environ.get(DIR_ENV)
    if not path:
        path = tempfile.mkdtemp(prefix="tidings-metrics-")
        os.environ[DIR_ENV] = path
    return path


@dataclass(frozen=True)
class Instruments:
    duration: Histogram
    retries: Counter
    final_failures: Counter
    relayed: Counter
    relay_runs: Counter
    audit_resent: Counter


@cache
def instruments() -> Instruments:
    """The process's instruments, built once (Prometheus names are process-wide); unregistered:
    in multiprocess mode the samples are read back from the files, by `registry()`."""
    multiprocess_dir()
    from prometheus_client import Counter, Histogram, values

    if not isinstance(values.ValueClass, type) or values.ValueClass.__name__ != "MmapedValue":
        # prometheus_client was imported before the folder was set: switch it now
        values.ValueClass = values.MultiProcessValue()
    handler = ("domain", "handler")
    return Instruments(
        duration=Histogram(
            "tidings_handler_duration_seconds",
            "Time a handler task ran, by outcome",
            [*handler, "outcome"],
            buckets=DURATION_BUCKETS,
            registry=None,
        ),
        retries=Counter("tidings_handler_retries", "Handler retries", handler, registry=None),
        final_failures=Counter(
            "tidings_handler_final_failures", "Handler tasks failed for good", handler, registry=None
        ),
        relayed=Counter("tidings_outbox_relayed", "Messages the relay published", ["domain"], registry=None),
        relay_runs=Counter("tidings_relay_runs", "Relay task runs", ["domain"], registry=None),
        audit_resent=Counter("tidings_audit_resent", "Rows the audit sent again", ["domain"], registry=None),
    )


class SignalObserver:
    """Celery signal receivers that record one runtime's tasks (another app's are ignored)."""

    def __init__(self, domain: Domain, celery: Celery) -> None:
        self.domain, self.celery = domain, celery
        self.handlers = {s.task_name: s.name for s in specs(domain)}
        self.handlers.update({batch_task_name(domain, s.cls): s.name for s in specs(domain)})
        self.relay, self.audit = relay_task_name(domain), audit_task_name(domain)
        self.started: dict[str, float] = {}

    def connect(self) -> None:
        task_prerun.connect(self.prerun, weak=False)
        task_postrun.connect(self.postrun, weak=False)
        task_retry.connect(self.retried, weak=False)
        task_failure.connect(self.failed, weak=False)
        worker_process_shutdown.connect(process_exited, weak=False)

    def _ours(self, sender: Any) -> bool:
        return getattr(sender, "app", None) is self.celery

    def prerun(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        if self._ours(sender) and task_id:
            self.started[task_id] = time.perf_counter()

    def postrun(
        self,
        sender: Any = None,
        task_id: str | None = None,
        retval: Any = None,
        state: str | None = None,
        **_: Any,
    ) -> None:
        if not self._ours(sender):
            return
        began = self.started.pop(task_id or "", None)
        name, metrics = sender.name, instruments()
        if name in self.handlers and began is not None:
            outcome = {"SUCCESS": "success", "RETRY": "retry"}.get(state or "", "failure")
            metrics.duration.labels(self.domain.name, self.handlers[name], outcome).observe(
                time.perf_counter() - began
            )
        elif name == self.relay:
            count_relayed(self.domain.name, retval if isinstance(retval, int) else 0)
        elif name == self.audit and isinstance(retval, int):
            metrics.audit_resent.labels(self.domain.name).inc(retval)

    def retried(self, sender: Any = None, **_: Any) -> None:
        if self._ours(sender) and sender.name in self.handlers:
            instruments().retries.labels(self.domain.name, self.handlers[sender.name]).inc()

    def failed(self, sender: Any = None, **_: Any) -> None:
        if self._ours(sender) and sender.name in self.handlers:
            instruments().final_failures.labels(self.domain.name, self.handlers[sender.name]).inc()


def count_relayed(domain: str, published: int) -> None:
    """Count a relay run that is not the relay task (a relay thread, `tidings outbox relay`):
    the one call such a site makes, when metrics are on."""
    if enabled():
        made = instruments()
        made.relay_runs.labels(domain).inc()
        made.relayed.labels(domain).inc(published)


def count_resent(domain: str, resent: int) -> None:
    """Count an audit round run outside the audit task (the relay loops' chore)."""
    if enabled() and resent:
        instruments().audit_resent.labels(domain).inc(resent)


def process_exited(**_: Any) -> None:
    """A pool process exits: its live gauges must not be summed any more."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid())


class StatusCollector:
    """Gauges read from the database and the broker at each scrape (app/status.py)."""

    def __init__(self, domain: Domain, celery: Celery) -> None:
        self.domain, self.celery = domain, celery

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        from tidings.app.status import read_status

        try:
            status = read_status(self.domain, self.celery, workers=False)
        except Exception:  # noqa: BLE001 - a scrape must answer; the error is logged
            log.warning("metrics: the status of %s could not be read", self.domain.name, exc_info=True)
            return
        name = self.domain.name
        for metric, text, value in (
            ("tidings_outbox_pending", "Outbox rows not relayed yet", status.outbox.pending),
            ("tidings_outbox_failing", "Pending rows whose last publish failed", status.outbox.failing),
            (
                "tidings_outbox_oldest_pending_seconds",
                "Age of the oldest pending row",
                status.outbox.oldest_pending_age,
            ),
            ("tidings_audit_lag_seconds", "Oldest unconfirmed delivery, past its grace", status.audit.lag),
        ):
            family = GaugeMetricFamily(metric, text, labels=["domain"])
            family.add_metric([name], value)
            yield family
        per_handler = (
            (
                "tidings_handler_lag_messages",
                "Messages committed for a handler, not handled yet",
                "lag_messages",
            ),
            ("tidings_handler_lag_seconds", "Age of the oldest of them", "lag_seconds"),
            ("tidings_queue_depth", "Messages waiting in the handler's queue", "queue_depth"),
            ("tidings_dead_letters", "Dead letters of the handler's queue", "dead_letters"),
        )
        for metric, text, attribute in per_handler:
            family = GaugeMetricFamily(metric, text, labels=["domain", "handler"])
            for handler in status.handlers:
                value = getattr(handler, attribute)
                if value is not None:
                    family.add_metric([name, handler.handler], value)
            yield family


def registry(domain: Domain | None = None, celery: Celery | None = None) -> CollectorRegistry:
    """What `/metrics` answers: every process's samples from the folder, and the status gauges."""
    from prometheus_client import CollectorRegistry, multiprocess

    found = CollectorRegistry()
    multiprocess.MultiProcessCollector(found, path=multiprocess_dir())
    if domain is not None and celery is not None:
        found.register(StatusCollector(domain, celery))
    return found


def serve(
    port: int, domain: Domain | None = None, celery: Celery | None = None, addr: str = "0.0.0.0"
) -> Any:
    """Serve `/metrics` on `port` in a thread of this process; returns the server."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=addr, registry=registry(domain, celery))
    log.info(
        "metrics of %s on :%d/metrics (samples in %s)",
        domain.name if domain else "-",
        port,
        multiprocess_dir(),
    )
    return server


def install(domain: Domain, celery: Celery) -> None:
    """Record this runtime's tasks when metrics are on, and serve them from the worker's main
    process when `TIDINGS_METRICS_PORT` is set (the one hook, called by the bootstrap)."""
    if not enabled():
        return
    multiprocess_dir()  # before any pool process forks
    SignalObserver(domain, celery).connect()
    port = os.environ.get(PORT_ENV)
    if not port:
        return

    def start_server(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is celery:
            serve(int(port), domain, celery)

    worker_init.connect(start_server, weak=False)
