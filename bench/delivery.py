"""Delivery scenarios (issue "Guarantees for free"): backlog drain, ten handlers, packed
delivery live, two worker processes, latency at 100/s with the default settings, and CPU ms
per event by process. Every round measures bare Celery (bench/ceiling.py), the naive
pipeline (bench/naive.py) and Tidings back to back, so each ratio is taken within a round;
the report's medians are over rounds (`--runs`).

`python -m bench delivery [--n 2000] [--runs 3]`
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import sqlalchemy as sa

from bench import naive
from bench.harness import REDIS_URL, Report, engine_for, percentile, redis_prefix, scratch_database, wait_for
from bench.scenarios import (
    PRODUCERS,
    Pipeline,
    _drain,
    _flat_out,
    _paced,
    _warm_up,
    naive_pipeline,
    tidings_pipeline,
)

TEN = 10
LATENCY_EVENTS = 1000  # per run, at 100/s: 10 s


# ---- CPU by process ------------------------------------------------------------------------
def _role(proc: psutil.Process, me: int) -> str:
    cmdline = " ".join(proc.cmdline())
    if "bench.naive relay" in cmdline:
        return "relay process"
    if proc.ppid() == me:
        return "worker main"  # Tidings: the consumer and the relay loop
    return "worker children"


def _cpu_seconds() -> dict[str, float]:
    """User + system CPU seconds so far of this process (the producers) and its children."""
    me = psutil.Process()
    totals = {"producer": sum(me.cpu_times()[:2])}
    for child in me.children(recursive=True):
        try:
            role, times = _role(child, me.pid), child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        totals[role] = totals.get(role, 0.0) + times.user + times.system
    return totals


def _drain_rate(pipe: Pipeline) -> float:
    n = _count(pipe)
    wait_for(lambda: pipe.handled(1) >= n, 120 + n / 10, f"{n} backlog events handled", interval=0.05)
    stamps = sorted(pipe.handled_at().values())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def _count(pipe: Pipeline) -> int:
    with pipe.engine.connect() as conn:
        return conn.exec_driver_sql(f"SELECT count(*) FROM {pipe.table}").scalar_one()


def _produce(produce: Callable[[], Any], n: int) -> None:
    counts = [n // PRODUCERS + (i < n % PRODUCERS) for i in range(PRODUCERS)]
    threads = [threading.Thread(target=lambda k=k: [produce() for _ in range(k)]) for k in counts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ---- latency hops --------------------------------------------------------------------------
HOPS = sa.text(
    "SELECT o.envelope::json->'data'->>'order_id' AS id, "
    "extract(epoch from o.created_at)::float8 AS created, "
    "extract(epoch from o.published_at)::float8 AS published FROM tidings_outbox o"
)


def _paced_hops(pipe: Pipeline, report: Report, n: int, label: str) -> None:
    """_paced at 100/s, then the hops: commit -> relay round start (published_at) -> handled."""
    _paced(pipe, report, n, 100.0, label)
    handled = pipe.handled_at()
    with pipe.engine.connect() as conn:
        rows = conn.execute(HOPS).all()
    wake = [(r.published - r.created) * 1000 for r in rows if r.published is not None]
    deliver = [
        (handled[r.id] - r.published) * 1000 for r in rows if r.published is not None and r.id in handled
    ]
    for q in (50, 99):
        report.add(f"{label}: hop write->relay round p{q}", "ms", percentile(wake, q))
        report.add(f"{label}: hop relay round->handled p{q}", "ms", percentile(deliver, q))


# ---- the scenario --------------------------------------------------------------------------
def delivery(n: int, runs: int) -> Report:
    report = Report("delivery", {"n": n, "runs": runs, "producers": PRODUCERS, "ten handlers": TEN})
    for round_ in range(runs):
        started = time.monotonic()
        report.add("ceiling: no-op tasks drained/s", "tasks/s", _drain(max(n, 2000), REDIS_URL))
        _naive_round(report, n)
        _tidings_round(report, n)
        print(f"delivery round {round_ + 1}/{runs}: {time.monotonic() - started:.0f} s", flush=True)
    _ratios(report)
    return report


def _naive_round(report: Report, n: int) -> None:
    with scratch_database() as url, redis_prefix() as prefix:
        with naive_pipeline(url, prefix) as pipe:
            _warm_up(pipe, 1)
            handled, committed, cpu = _flat_out(pipe, n, 1, _cpu_seconds)
            report.add("naive: live handled/s", "events/s", handled)
            report.add("naive: producer commits/s", "events/s", committed)
            for role, ms in cpu.items():
                report.add(f"naive: CPU ms/event, {role}", "ms", ms)
            _paced(pipe, report, LATENCY_EVENTS, 100.0, "naive 100/s")
            pipe.reset()
        eng = engine_for(url)
        running = naive_pipeline(url, prefix)  # creates the schema afresh
        _produce(lambda: naive.place_order(eng), n)
        with running as pipe:
            report.add("naive: backlog drained/s", "events/s", _drain_rate(pipe))
        eng.dispose()


def _tidings_round(report: Report, n: int) -> None:
    variants: list[tuple[str, int, str | None, int]] = [
        ("tidings 1 handler", 1, None, 1),
        (f"tidings {TEN} handlers", TEN, None, 1),
        ("tidings batch profile", 1, "batch", 1),
        (f"tidings batch profile, {TEN} handlers", TEN, "batch", 1),
        ("tidings 2 workers", 1, None, 2),
    ]
    for label, handlers, profile, workers in variants:
        with (
            scratch_database() as url,
            redis_prefix() as prefix,
            tidings_pipeline(url, prefix, handlers, profile, workers=workers) as pipe,
        ):
            _warm_up(pipe, handlers)
            handled, committed, cpu = _flat_out(pipe, n, handlers, _cpu_seconds)
            report.add(f"{label}: live handled/s", "events/s", handled)
            report.add(f"{label}: producer commits/s", "events/s", committed)
            for role, ms in cpu.items():
                report.add(f"{label}: CPU ms/event, {role}", "ms", ms)
            if label == "tidings 1 handler":
                _paced_hops(pipe, report, LATENCY_EVENTS, "tidings default 100/s")
    for label, profile in (("tidings 1 handler", None), ("tidings batch profile", "batch")):
        with scratch_database() as url, redis_prefix() as prefix:
            running = tidings_pipeline(url, prefix, 1, profile)
            _produce(running.produce, n)  # no worker yet: the rows wait in the outbox
            with running as pipe:
                report.add(f"{label}: backlog drained/s", "events/s", _drain_rate(pipe))


def _ratios(report: Report) -> None:
    """Each ratio within a round, then the median over rounds (added as figures)."""
    f = report.figures

    def ratio(name: str, a: str, b: str, scale: float = 1.0) -> None:
        if a in f and b in f:
            values = [x * scale / y for x, y in zip(f[a].values, f[b].values, strict=False)]
            for v in values:
                report.add(name, "x", v)

    live, backlog = "live handled/s", "backlog drained/s"
    for name, a, b in (
        ("1 handler live / naive live", f"tidings 1 handler: {live}", f"naive: {live}"),
        ("batch live / naive live", f"tidings batch profile: {live}", f"naive: {live}"),
        ("backlog / naive backlog", f"tidings 1 handler: {backlog}", f"naive: {backlog}"),
        ("batch backlog / naive backlog", f"tidings batch profile: {backlog}", f"naive: {backlog}"),
        (
            f"{TEN} handlers / 1 handler",
            f"tidings {TEN} handlers: {live}",
            f"tidings 1 handler: {live}",
        ),
        (
            f"batch {TEN} handlers / batch 1 handler",
            f"tidings batch profile, {TEN} handlers: {live}",
            f"tidings batch profile: {live}",
        ),
        ("2 workers / 1 worker", f"tidings 2 workers: {live}", f"tidings 1 handler: {live}"),
        ("1 handler live / ceiling", f"tidings 1 handler: {live}", "ceiling: no-op tasks drained/s"),
        ("naive live / ceiling", f"naive: {live}", "ceiling: no-op tasks drained/s"),
    ):
        ratio(f"ratio: {name}", a, b)


def targets(report: Report) -> list[str]:
    """The issue's delivery targets against this run's medians."""
    m = {k: statistics.median(v.values) for k, v in report.figures.items()}
    rows = []

    def check(name: str, value: float | None, ok: bool) -> None:
        if value is not None:
            rows.append(f"| {name} | {value:.2f} | {'met' if ok else 'not met'} |")

    get = m.get
    batch_live, batch_backlog = (
        get("ratio: batch live / naive live"),
        get("ratio: batch backlog / naive backlog"),
    )
    fan = get(f"ratio: {TEN} handlers / 1 handler")
    packed_fan = get(f"ratio: batch {TEN} handlers / batch 1 handler")
    p50, p99 = get("tidings default 100/s: latency p50"), get("tidings default 100/s: latency p99")
    check("batch live / naive >= 2", batch_live, (batch_live or 0) >= 2)
    check("batch backlog / naive backlog >= 3", batch_backlog, (batch_backlog or 0) >= 3)
    check(f"{TEN} handlers / 1 handler >= 0.3", fan, (fan or 0) >= 0.3)
    check(f"`batch` profile: {TEN} handlers / 1 handler >= 0.3", packed_fan, (packed_fan or 0) >= 0.3)
    if p50 is not None and p99 is not None:
        rows.append(
            f"| default @100/s p50 <= 10 ms, p99 <= 25 ms | {p50:.1f} / {p99:.1f} ms | "
            f"{'met' if p50 <= 10 and p99 <= 25 else 'not met'} |"
        )
    return ["| target | measured | status |", "|---|---:|---|", *rows]
