"""The composition root: `bootstrap(domain)` builds a process's runtime once.

Settings and storage come from `domain.init()`; the bootstrap adds the Celery app with one
task and queue per handler, the engine the domain's bus hands commits to, and the signal
receivers (the DLQ hook, connection pools rebuilt after a fork) and the consumer bootstep that
dead-letters poison (app/poison.py). Nothing is mutated
afterwards; nothing is kept in module-level registries.

    runtime = bootstrap(domain)          # a worker module, an API process, a script
    celery = runtime.celery              # what `celery -A` needs
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.signals import task_failure, worker_process_init

from tidings.app import observability
from tidings.app.engine import CeleryEngine
from tidings.app.factory import build_celery_app
from tidings.app.poison import poison_step
from tidings.domain import Domain


@dataclass(frozen=True)
class Runtime:
    """Everything one process needs to run a domain on Celery."""

    domain: Domain
    celery: Celery
    engine: CeleryEngine
    stats: Counter[Any] = field(default_factory=Counter)  # this runtime's outcome counts


def bootstrap(domain: Domain, **celery_overrides: Any) -> Runtime:
    """Initialise `domain` if needed, build its Celery app and attach the engine to its bus.

    `celery_overrides` are Celery settings applied last (e.g. `task_always_eager=True`).
    """
    if not domain.initialized:
        domain.init()
    stats: Counter[Any] = Counter()
    celery, engine, on_failure = build_celery_app(domain, stats, **celery_overrides)
    runtime = Runtime(domain, celery, engine, stats)
    task_failure.connect(on_failure, weak=False)
    # What reaches a worker but is not a task it can run goes to the DLQ, not only the log.
    celery.steps["consumer"].add(poison_step(stats))
    # Connection pools must never be shared across a fork: each child builds its own.
    worker_process_init.connect(lambda **_: domain.dispose(after_fork=True), weak=False)
    celery.tidings_runtime = runtime
    observability.install(domain, celery)  # metrics, traces, JSON logs: each when turned on
    domain.attach_engine(engine)
    return runtime


def create_celery_app(domain: Domain, **celery_overrides: Any) -> Celery:
    """The Celery app of a new runtime for `domain` (what `celery -A` needs)."""
    return bootstrap(domain, **celery_overrides).celery


def runtime_for(domain: Domain) -> Runtime:
    """The runtime already built for `domain` in this process, or a new one."""
    engine = domain.engine
    if isinstance(engine, CeleryEngine):
        runtime: Runtime = engine.celery.tidings_runtime
        return runtime
    return bootstrap(domain)


def engine_for(domain: Domain) -> CeleryEngine:
    """Entry point `tidings.engines`: the engine a committing process loads on its first async
    commit when it never built a runtime itself (an API process, a script)."""
    return runtime_for(domain).engine
