"""The scenarios. Each takes `n` (events) and `runs` and returns a Report of medians."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import sqlalchemy as sa
from kombu import Connection

from bench import ceiling as ceiling_app
from bench import naive
from bench.harness import (
    BROKER_URL,
    REDIS_URL,
    Report,
    engine_for,
    percentile,
    process,
    redis_prefix,
    scratch_database,
    tree_rss_mb,
    wait_for,
    worker,
)
from bench.tidings_app import build_domain, celery_app, place_order
from tidings.outbox.writer import outbox_rows
from tidings.tasks.naming import async_handlers, queue_name, relay_queue
from tidings.tasks.relay import relay_with

PRODUCERS = 4  # producer threads committing one event per transaction


# ---- 1. ceiling ----------------------------------------------------------------------------
def ceiling(n: int, runs: int) -> Report:
    """Bare Celery no-op tasks drained by one worker (Tidings' settings): tasks/s."""
    report = Report("ceiling", {"n": n, "runs": runs, "pool": "prefork c2, acks_late, prefetch 1"})
    for _ in range(runs):
        report.add("redis: no-op tasks drained/s", "tasks/s", _drain(n, REDIS_URL))
    if _reachable(BROKER_URL):
        for _ in range(runs):
            report.add("rabbitmq: no-op tasks drained/s", "tasks/s", _drain(n, BROKER_URL))
    return report


def _drain(n: int, broker: str) -> float:
    with redis_prefix() as prefix:
        queue = f"{prefix}ceiling"
        env = {"BENCH_BROKER_URL": broker, "BENCH_KEYPREFIX": prefix, "BENCH_QUEUE": queue}
        options = {"global_keyprefix": prefix} if broker.startswith("redis") else {}
        with Connection(broker, transport_options=options) as conn, conn.Producer() as producer:
            for _ in range(n):
                ceiling_app.celery.send_task("ceiling.noop", queue=queue, producer=producer)
        client = redis.Redis.from_url(REDIS_URL)
        with worker("bench.ceiling:celery", [queue], env):
            wait_for(
                lambda: int(client.get(f"{prefix}count") or 0) >= n,
                120 + n / 100,
                "the no-op tasks",
                interval=0.05,
            )
        first, last = float(client.get(f"{prefix}first")), float(client.get(f"{prefix}last"))
        if broker.startswith("amqp"):
            with Connection(broker) as conn:
                conn.default_channel.queue_delete(queue)
        return n / (last - first)


def _reachable(url: str) -> bool:
    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.connect()
        return True
    except Exception:  # noqa: BLE001 - a missing optional broker only skips its row
        return False


# ---- 0 and 2. end to end -------------------------------------------------------------------
class Pipeline:
    """A running pipeline (worker, relay) and how to produce into it and count what it did."""

    def __init__(
        self, produce: Callable[[], Any], eng: sa.Engine, table: str, reset: Callable[[], None]
    ) -> None:
        self.produce, self.engine, self.table, self.reset = produce, eng, table, reset
        self.worker_pid = 0

    def handled(self, per_event: int) -> int:
        with self.engine.connect() as conn:
            return conn.exec_driver_sql(
                f"SELECT count(*) FROM {self.table} WHERE handled >= {per_event}"
            ).scalar_one()

    def check_exactly_once(self, n: int, per_event: int) -> None:
        with self.engine.connect() as conn:
            counts = dict(
                conn.exec_driver_sql(f"SELECT handled, count(*) FROM {self.table} GROUP BY handled").all()
            )
        if counts != {per_event: n}:
            raise AssertionError(
                f"expected every one of {n} events applied {per_event}x, got "
                f"{{times applied: events}} = {counts}"
            )

    def handled_at(self) -> dict[Any, float]:
        with self.engine.connect() as conn:
            return dict(conn.exec_driver_sql(f"SELECT id, handled_at FROM {self.table}").all())


def naive_pipeline(url: str, prefix: str):
    eng = engine_for(url)
    naive.create_schema(eng)
    env = {"BENCH_DATABASE_URL": url, "BENCH_BROKER_URL": REDIS_URL, "BENCH_KEYPREFIX": prefix}

    def reset() -> None:
        with eng.begin() as conn:
            conn.exec_driver_sql("TRUNCATE bench_orders, bench_outbox")

    class Running:
        def __enter__(self) -> Pipeline:
            self.stack = [
                worker("bench.naive:celery", [naive.QUEUE], env),
                process([__import__("sys").executable, "-m", "bench.naive", "relay"], env),
            ]
            for cm in self.stack:
                cm.__enter__()
            return Pipeline(lambda: naive.place_order(eng), eng, "bench_orders", reset)

        def __exit__(self, *exc: Any) -> None:
            for cm in reversed(self.stack):
                cm.__exit__(None, None, None)
            eng.dispose()

    return Running()


def tidings_pipeline(
    url: str,
    prefix: str,
    handlers: int = 1,
    profile: str | None = None,
    relay_worker: bool = False,
    after_commit: str = "kick",
    workers: int = 1,
):
    """Tidings on one worker for every queue (what `tidings server` runs), or with
    `relay_worker` the relay queue on a worker of its own (the naive pipeline's topology), or
    `workers` workers for every queue. `.produce()` commits one event (also before entering)."""
    domain = build_domain(url, handlers, profile, after_commit=after_commit)
    celery = celery_app(domain, prefix, REDIS_URL)
    domain.drop_tables()
    domain.create_tables()
    eng = domain.databases["default"].engine
    tables = ", ".join(t.name for t in domain.metadata.sorted_tables)
    env = {
        "BENCH_DATABASE_URL": url,
        "BENCH_BROKER_URL": REDIS_URL,
        "BENCH_KEYPREFIX": prefix,
        "BENCH_HANDLERS": str(handlers),
        "BENCH_PROFILE": profile or "",
        "BENCH_AFTER_COMMIT": after_commit,
    }
    queues = [relay_queue(domain)] + [queue_name(domain, h) for h in async_handlers(domain)]

    def reset() -> None:
        with eng.begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {tables}")

    class Running:
        produce = staticmethod(lambda: place_order(domain))

        def __enter__(self) -> Pipeline:
            if workers > 1:
                self.cms = [worker("bench.tidings_app:celery", queues, env) for _ in range(workers)]
            elif relay_worker:
                self.cms = [
                    worker("bench.tidings_app:celery", queues[1:], env),
                    worker("bench.tidings_app:celery", queues[:1], env, concurrency=1),
                ]
            else:
                self.cms = [worker("bench.tidings_app:celery", queues, env)]
            pipe = Pipeline(lambda: place_order(domain), eng, "bench_order", reset)
            pipe.worker_pid = self.cms[0].__enter__().pid
            for cm in self.cms[1:]:
                cm.__enter__()
            return pipe

        def __exit__(self, *exc: Any) -> None:
            for cm in reversed(self.cms):
                cm.__exit__(None, None, None)
            celery.pool.force_close_all()
            domain.dispose()

    return Running()


def _flat_out(
    pipe: Pipeline, n: int, per_event: int, cpu_seconds: Callable[[], dict[str, float]] = dict
) -> tuple[float, float, dict[str, float]]:
    """N events committed by PRODUCERS threads; (events/s first commit -> last handled,
    producer commits/s, CPU ms per event of each process `cpu_seconds` reads: role -> seconds).
    Fails unless every event was applied exactly `per_event` times."""
    pipe.reset()
    counts = [n // PRODUCERS + (i < n % PRODUCERS) for i in range(PRODUCERS)]
    threads = [threading.Thread(target=lambda k=k: [pipe.produce() for _ in range(k)]) for k in counts]
    cpu_before = cpu_seconds()
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    produced = time.time() - start
    wait_for(lambda: pipe.handled(per_event) >= n, 60 + n / 10, f"{n} events handled", interval=0.05)
    cpu_after = cpu_seconds()
    time.sleep(0.5)  # a duplicate delivery would show up as a second application
    pipe.check_exactly_once(n, per_event)
    last = max(pipe.handled_at().values())
    cpu = {k: (cpu_after[k] - cpu_before.get(k, 0.0)) * 1000 / n for k in cpu_after}
    return n / (last - start), n / produced, cpu


def _warm_up(pipe: Pipeline, per_event: int) -> None:
    pipe.reset()
    for _ in range(5):
        pipe.produce()
    wait_for(lambda: pipe.handled(per_event) >= 5, 60, "the warm-up events")


def naive_baseline(n: int, runs: int) -> Report:
    """Scenario 0: the naive pipeline's end-to-end events/s (and its paced latency)."""
    report = Report("naive", {"n": n, "runs": runs, "producers": PRODUCERS})
    with scratch_database() as url, redis_prefix() as prefix, naive_pipeline(url, prefix) as pipe:
        _warm_up(pipe, 1)
        for _ in range(runs):
            handled, committed, _ = _flat_out(pipe, n, 1)
            report.add("end-to-end handled/s", "events/s", handled)
            report.add("producer commits/s", "events/s", committed)
        for _ in range(runs):
            _paced(pipe, report, min(n, 1000), 100.0, "paced 100/s")
    return report


def end_to_end(n: int, runs: int) -> Report:
    """Scenario 2: Tidings, one handler and three handlers per event: events/s."""
    report = Report("end-to-end", {"n": n, "runs": runs, "producers": PRODUCERS})
    variants = (
        (1, False, "kick", None),
        (3, False, "kick", None),
        (1, True, "kick", None),
        (1, False, "thread", None),
        (1, False, "kick", "batch"),
    )
    for handlers, relay_worker, after_commit, profile in variants:
        label = (
            f"{handlers} handler(s)"
            + (", relay on its own worker" if relay_worker else "")
            + (", relay thread" if after_commit == "thread" else "")
            + (f", {profile} profile (packed)" if profile else "")
        )
        with (
            scratch_database() as url,
            redis_prefix() as prefix,
            tidings_pipeline(
                url, prefix, handlers, profile, relay_worker=relay_worker, after_commit=after_commit
            ) as pipe,
        ):
            _warm_up(pipe, handlers)
            for _ in range(runs):
                handled, committed, _ = _flat_out(pipe, n, handlers)
                report.add(f"{label}: handled/s", "events/s", handled)
                report.add(f"{label}: producer commits/s", "events/s", committed)
    return report


# ---- 5. latency ----------------------------------------------------------------------------
def _paced(pipe: Pipeline, report: Report, n: int, rate: float, label: str) -> None:
    """One event every 1/rate s from one producer; commit -> handled percentiles in ms."""
    pipe.reset()
    committed: dict[Any, float] = {}
    start = time.monotonic()
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        order_id = pipe.produce()
        committed[order_id] = time.time()
    wait_for(lambda: pipe.handled(1) >= n, 60 + n / 20, f"{n} paced events", interval=0.05)
    latencies = [(handled - committed[i]) * 1000 for i, handled in pipe.handled_at().items()]
    for q in (50, 95, 99):
        report.add(f"{label}: latency p{q}", "ms", percentile(latencies, q))


def latency(n: int, runs: int, rates: tuple[float, ...] = (100.0,)) -> Report:
    """Scenario 5: commit -> handled at fixed offered rates, `production` and `fast` profiles."""
    report = Report("latency", {"n": n, "runs": runs, "rates": [round(r) for r in rates]})
    for profile, after_commit in (("production", "kick"), ("fast", "kick"), ("fast", "thread")):
        label = profile + (", relay thread" if after_commit == "thread" else "")
        with (
            scratch_database() as url,
            redis_prefix() as prefix,
            tidings_pipeline(url, prefix, 1, profile, after_commit=after_commit) as pipe,
        ):
            _warm_up(pipe, 1)
            for rate in rates:
                for _ in range(runs):
                    _paced(pipe, report, n, rate, f"{label} {rate:.0f}/s")
    return report


# ---- 3. relay ------------------------------------------------------------------------------
def relay(n: int, runs: int) -> Report:
    """Scenario 3: claim + publish + mark of N pending outbox rows (no worker): rows/s."""
    report = Report("relay", {"n": n, "runs": runs})
    with scratch_database() as url, redis_prefix() as prefix:
        domain = build_domain(url, 1)
        celery = celery_app(domain, prefix, REDIS_URL)
        domain.drop_tables()
        domain.create_tables()
        client = redis.Redis.from_url(REDIS_URL)
        for batch in (100, 500, 1000):
            # the settings are frozen: the relay is handed an [outbox] part with this batch size
            outbox = domain.settings.outbox.model_copy(update={"batch_size": batch})
            for _ in range(runs):
                _pending_rows(domain, n)
                start = time.perf_counter()
                published = relay_with(celery, domain, outbox)
                report.add(
                    f"tidings relay, batch {batch}", "rows/s", published / (time.perf_counter() - start)
                )
                assert published == n, f"relayed {published} of {n}"
                client.delete(*client.keys(f"{prefix}*"))
        celery.pool.force_close_all()
        domain.dispose()
        eng = engine_for(url)
        naive.create_schema(eng)
        naive.celery.conf.broker_url = REDIS_URL
        naive.celery.conf.broker_transport_options = {"global_keyprefix": prefix}
        for _ in range(runs):
            for _ in range(n):
                naive.place_order(eng)
            start = time.perf_counter()
            with naive.celery.producer_or_acquire() as producer:
                while naive.relay_once(eng, producer):
                    pass
            report.add(
                "naive relay (send_task per event), batch 500", "rows/s", n / (time.perf_counter() - start)
            )
            client.delete(*client.keys(f"{prefix}*"))
        eng.dispose()
    return report


def _pending_rows(domain: Any, n: int) -> None:
    """N due outbox rows, written in bulk (the write path is scenario 4's business)."""
    order_cls = domain.registry["aggregate"]["BenchOrder"]
    event_cls = domain.registry["event"]["OrderPlaced"]
    messages = []
    for _ in range(n):
        order = order_cls()
        messages.append(domain.event_message(event_cls(order_id=order.id), order))
    db = domain.outbox_database
    with db.engine.begin() as conn:
        conn.execute(sa.delete(db.outbox_table))
        conn.execute(sa.insert(db.outbox_table), outbox_rows(messages, domain.name))


# ---- 4. commit overhead --------------------------------------------------------------------
def commit_overhead(n: int, runs: int) -> Report:
    """Scenario 4: unit-of-work commit latency with the outbox (and relay kick) on vs off."""
    report = Report("commit-overhead", {"n": n, "runs": runs})
    with scratch_database() as url, redis_prefix() as prefix:
        on = build_domain(url, 0, event_processing="async")
        celery = celery_app(on, prefix, REDIS_URL)
        on.drop_tables()
        on.create_tables()
        off = build_domain(url, 0, event_processing="sync")
        off.config["enable_outbox"] = False
        off.init()
        for _ in range(runs):
            for label, domain in (("outbox off", off), ("outbox on", on)):
                times = []
                for _ in range(n):
                    start = time.perf_counter()
                    place_order(domain)
                    times.append((time.perf_counter() - start) * 1000)
                report.add(f"{label}: commit p50", "ms", percentile(times, 50))
                report.add(f"{label}: commit p99", "ms", percentile(times, 99))
        celery.pool.force_close_all()
        on.dispose()
        off.dispose()
    return report


# ---- 6. soak -------------------------------------------------------------------------------
def soak(n: int, runs: int) -> Report:
    """Scenario 6: worker RSS (parent + children) sampled at each tenth of N events."""
    report = Report("soak", {"n": n, "runs": 1, "producers": PRODUCERS})
    with scratch_database() as url, redis_prefix() as prefix, tidings_pipeline(url, prefix, 1) as pipe:
        pid = pipe.worker_pid
        _warm_up(pipe, 1)
        pipe.reset()
        samples: dict[int, float] = {}
        step = max(n // 10, 1)
        for tenth in range(1, 11):
            threads = [
                threading.Thread(target=lambda: [pipe.produce() for _ in range(step // PRODUCERS)])
                for _ in range(PRODUCERS)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            done = tenth * (step // PRODUCERS) * PRODUCERS
            wait_for(lambda d=done: pipe.handled(1) >= d, 60 + step / 20, "soak events", interval=0.1)
            samples[done] = tree_rss_mb(pid)
        half, end = samples[sorted(samples)[4]], samples[sorted(samples)[-1]]
        report.params["rss_mb_by_events"] = {k: round(v, 1) for k, v in samples.items()}
        report.add("worker RSS at N/2", "MiB", half)
        report.add("worker RSS at N", "MiB", end)
        report.add("RSS growth N/2 -> N", "%", (end - half) / half * 100)
    return report


# ---- 7. sync mode --------------------------------------------------------------------------
def sync_mode(n: int, runs: int) -> Report:
    """Scenario 7: `domain.process`-style sync handling on the memory provider: events/s."""
    report = Report("sync", {"n": n, "runs": runs, "provider": "memory"})
    for _ in range(runs):
        domain = build_domain("memory", 1, event_processing="sync")
        domain.init()
        tenth = max(n // 10, 1)
        rates = []
        start = time.perf_counter()
        for _ in range(10):
            t = time.perf_counter()
            for _ in range(tenth):
                place_order(domain)
            rates.append(tenth / (time.perf_counter() - t))
        report.add("sync: events handled/s", "events/s", tenth * 10 / (time.perf_counter() - start))
        report.add("sync: first tenth events/s", "events/s", rates[0])
        report.add("sync: last tenth events/s", "events/s", rates[-1])
    return report
