"""Prometheus metrics from a real prefork worker, scraped over HTTP: what its pool processes
handled and relayed adds up in one `/metrics`, with the lag read at the scrape."""

from __future__ import annotations

import socket
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.reliability.audit import build_audit, make_entries
from tests.reliability.audit_worker import celery_overrides, configure
from tests.reliability.workers import Worker
from tests.services import REDIS_URL
from tests.waiting import wait_until
from tidings.app import metrics
from tidings.app.bootstrap import create_celery_app

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`/metrics` as {(sample name, sorted labels): value}; {} while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return {}
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def waited(worker: Worker, condition: Callable[[], Any], what: str) -> None:
    """`wait_until` (60 s: the worker starts slowly on a loaded machine), with the worker's
    log when it times out."""
    try:
        wait_until(condition, timeout=60, message=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.output()}") from None


def test_a_prefork_worker_serves_what_its_pool_processes_handled(postgres_url, redis_prefix, tmp_path):
    name = f"metrics_{uuid.uuid4().hex[:8]}"
    domain = configure(build_audit(name), postgres_url, REDIS_URL)
    domain.drop_tables()
    domain.create_tables()
    # this process commits and kicks; the worker (2 pool processes) relays and handles
    create_celery_app(domain, **celery_overrides(REDIS_URL, redis_prefix))
    port, samples = free_port(), tmp_path / "samples"
    samples.mkdir()
    env = {
        "AUDIT_DOMAIN": name,
        "AUDIT_DATABASE_URL": postgres_url,
        "AUDIT_BROKER_URL": REDIS_URL,
        "AUDIT_KEYPREFIX": redis_prefix,
        "TIDINGS_METRICS_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(samples),
    }
    worker = Worker(tmp_path / "worker.log", name, env, concurrency=2)
    try:
        waited(worker, lambda: scrape(port), f"/metrics on :{port}")
        make_entries(domain, [f"e-{i}" for i in range(6)])
        handled = ("tidings_handler_duration_seconds_count", (("domain", name), ("handler", "Apply")))

        def apply_count() -> float:
            found = scrape(port)
            return found.get((handled[0], (*handled[1], ("outcome", "success"))), 0)

        waited(worker, lambda: apply_count() == 6, "6 Apply runs")
        found = scrape(port)
        labels = (("domain", name), ("handler", "Count"), ("outcome", "success"))
        assert found[("tidings_handler_duration_seconds_count", labels)] == 6
        assert found[("tidings_handler_duration_seconds_sum", labels)] > 0
        assert (
            found[("tidings_handler_duration_seconds_bucket", (*labels[:2], ("le", "+Inf"), labels[2]))] == 6
        )
        assert found[("tidings_outbox_relayed_total", (("domain", name),))] == 6
        assert found[("tidings_outbox_pending", (("domain", name),))] == 0
        assert found[("tidings_handler_lag_messages", (("domain", name), ("handler", "Apply")))] == 0
        # both pool processes wrote samples (the runs spread over them), summed in one answer
        assert len(list(samples.glob("*.db"))) >= 2
    finally:
        worker.terminate()
        domain.drop_tables()
        domain.dispose()
    assert metrics.DIR_ENV == "PROMETHEUS_MULTIPROC_DIR"


def test_the_grafana_dashboard_queries_only_metrics_tidings_exports(use_provider, tmp_path, monkeypatch):
    import json
    import re
    from pathlib import Path

    monkeypatch.setenv(metrics.DIR_ENV, str(tmp_path))
    domain = use_provider(build_audit(f"dash_{uuid.uuid4().hex[:8]}"))
    celery = create_celery_app(domain, task_always_eager=False)
    exported = {family.name for family in metrics.StatusCollector(domain, celery).collect()}
    made = metrics.instruments()
    for instrument in (made.retries, made.final_failures, made.relayed, made.relay_runs, made.audit_resent):
        exported.add(f"{instrument._name}_total")
    exported |= {f"{made.duration._name}_{part}" for part in ("bucket", "count", "sum")}
    dashboard = json.loads((Path(metrics.__file__).parents[1] / "examples/grafana/tidings.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\btidings_\w+", target["expr"])
    }
    assert queried and queried <= exported, sorted(queried - exported)
    celery.close()
