"""The benchmark harness cannot rot: every scenario runs end to end on a tiny N.

Figures are not asserted (benchmarks never gate the suite); what is asserted is that each
scenario measures something and that its built-in exactly-once count check passes.
"""

from __future__ import annotations

import pytest

from tests.services import require_postgres, require_rabbitmq, require_redis

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _services():
    require_postgres()
    require_redis()


def medians(report) -> dict[str, float]:
    return {name: figure.median for name, figure in report.figures.items()}


def test_the_naive_pipeline_applies_every_event_once_and_reports_its_rate():
    from bench.scenarios import naive_baseline

    figures = medians(naive_baseline(n=40, runs=1))
    assert figures["end-to-end handled/s"] > 0
    assert figures["paced 100/s: latency p99"] >= figures["paced 100/s: latency p50"] > 0


def test_the_ceiling_drains_no_op_tasks_on_redis_and_rabbitmq():
    require_rabbitmq()
    from bench.scenarios import ceiling

    figures = medians(ceiling(n=40, runs=1))
    assert figures["redis: no-op tasks drained/s"] > 0
    assert figures["rabbitmq: no-op tasks drained/s"] > 0


def test_tidings_end_to_end_applies_every_event_once_with_one_and_three_handlers():
    from bench.scenarios import end_to_end

    figures = medians(end_to_end(n=40, runs=1))
    assert figures["1 handler(s): handled/s"] > 0
    assert figures["3 handler(s): handled/s"] > 0


def test_latency_reports_percentiles_for_the_production_and_fast_profiles():
    from bench.scenarios import latency

    figures = medians(latency(n=20, runs=1))
    assert figures["fast 100/s: latency p99"] >= figures["fast 100/s: latency p50"] > 0
    assert figures["production 100/s: latency p50"] > 0


def test_the_relay_publishes_every_pending_row_for_each_batch_size():
    from bench.scenarios import relay

    figures = medians(relay(n=50, runs=1))
    assert {name for name in figures if name.startswith("tidings relay")} == {
        "tidings relay, batch 100",
        "tidings relay, batch 500",
        "tidings relay, batch 1000",
    }


def test_commit_overhead_soak_and_sync_mode_measure_something():
    from bench.scenarios import commit_overhead, soak, sync_mode

    assert medians(commit_overhead(n=20, runs=1))["outbox on: commit p50"] > 0
    assert medians(soak(n=80, runs=1))["worker RSS at N"] > 0
    assert medians(sync_mode(n=50, runs=1))["sync: events handled/s"] > 0


def test_producer_commits_and_claim_times_are_measured_for_every_variant():
    from bench.producer import claim, producer

    made = medians(producer(n=40, runs=1))
    variants = (
        "naive",
        "tidings",
        "naive, statements only",
        "tidings, statements only",
        "tidings, lock-step append (before)",
    )
    measured = {f"{v}: producer {figure}" for v in variants for figure in ("commits/s", "CPU per commit")}
    # the server's CPU is read where its processes are local and readable (psutil)
    server = {f"{v}: PostgreSQL CPU per commit" for v in variants}
    assert measured <= set(made) <= measured | server
    assert min(made.values()) > 0
    claimed = medians(claim(n=1000, runs=1))
    assert claimed["1,000 retained: claim"] > 0 and claimed["1,000 retained, no pending index: claim"] > 0
