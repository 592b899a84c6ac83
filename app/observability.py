"""Watching a running system: the bootstrap's one hook for metrics (app/metrics.py), traces
(app/tracing.py) and JSON logs (app/json_logs.py), each off unless its setting turns it on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import Celery

from tidings.app import json_logs, metrics, tracing
from tidings.tasks.naming import specs

if TYPE_CHECKING:
    from tidings.domain.domain import Domain


def install(domain: Domain, celery: Celery) -> None:
    """Connect what the environment asks for to this runtime's tasks."""
    metrics.install(domain, celery)  # TIDINGS_METRICS_PORT / PROMETHEUS_MULTIPROC_DIR
    tracing.install(domain, celery)  # OpenTelemetry importable; records once a provider is set
    json_logs.install(domain.name, {s.task_name: s.name for s in specs(domain)}, celery)  # TIDINGS_LOG_FORMAT
