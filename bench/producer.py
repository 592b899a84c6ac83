"""The write side: producer commits/s against the naive pipeline, and the relay's claim time
against the published rows kept for retention. Both interleave their variants round by round
on one database, so a ratio compares figures measured side by side."""

from __future__ import annotations

import json
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import sqlalchemy as sa

from bench import naive
from bench.harness import REDIS_URL, Report, engine_for, percentile, redis_prefix, scratch_database
from bench.tidings_app import build_domain, celery_app, place_order
from tidings.domain import pg_append, pg_prepared, sql_session
from tidings.outbox.relay import Backoff, SqlOutbox
from tidings.outbox.tables import define_outbox

PRODUCERS = 4  # threads committing one aggregate + one event per transaction
CLAIM_BATCH = 500  # rows per claim (the relay's default batch size)
SLICES = 5  # alternations of the producer variants within one run
BEFORE = "tidings, lock-step append (before)"


# ---- producer commits/s --------------------------------------------------------------------
def producer(n: int, runs: int) -> Report:
    """N commits from PRODUCERS threads per variant and run, no worker, the variants taking
    turns slice by slice (SLICES per run): the naive pipeline's (order row + outbox row),
    Tidings' (aggregate row, event store, outbox row, relay kick), and Tidings with the append
    it had before (an advisory lock held to COMMIT and a
    `SELECT max(position)` per append, with pool pre-ping) for the before/after figure; and
    both pipelines' statements alone (`_statements_only`), which bound the ratio."""
    report = Report("producer", {"n": n, "runs": runs, "producers": PRODUCERS})
    with scratch_database() as url, redis_prefix() as prefix:
        domain = build_domain(url, 1)
        celery = celery_app(domain, prefix, REDIS_URL)
        domain.drop_tables()
        domain.create_tables()
        eng = engine_for(url)
        naive.create_schema(eng)
        variants: dict[str, Callable[[], Any]] = {
            "naive": lambda: naive.place_order(eng),
            "tidings": lambda: place_order(domain),
            **_statements_only(domain, eng),
        }
        for _ in range(runs):
            # each variant commits n in SLICES slices, alternating slice by slice: the load of
            # this shared machine drifts within seconds, so a run compares like with like
            spent = {label: [0.0, 0.0, 0.0] for label in [*variants, BEFORE]}  # wall, CPU, server CPU s
            for _ in range(SLICES):
                for label, produce in variants.items():
                    _add(spent[label], _seconds_for(produce, n // SLICES))
                with _lock_step_append(domain):
                    _add(spent[BEFORE], _seconds_for(variants["tidings"], n // SLICES))
            made = n // SLICES * SLICES
            for label, (wall, cpu, server) in spent.items():
                report.add(f"{label}: producer commits/s", "commits/s", made / wall)
                report.add(f"{label}: producer CPU per commit", "ms", cpu / made * 1000)
                if server:
                    report.add(f"{label}: PostgreSQL CPU per commit", "ms", server / made * 1000)
        celery.pool.force_close_all()
        domain.dispose()
        eng.dispose()
    return report


def _statements_only(domain: Any, eng: sa.Engine) -> dict[str, Callable[[], Any]]:
    """Each pipeline's SQL with no framework around it (psycopg2 on a pooled connection, the
    values built beforehand): the naive pipeline's two INSERTs, and the one prepared
    statement a Tidings commit sends (aggregate row, event, outbox row; a template taken from
    a real commit, with fresh ids). Their ratio bounds the producer ratio on this database,
    whatever the Python around them costs."""
    order_id = place_order(domain)
    with eng.connect() as conn:
        event = conn.execute(sa.text("SELECT * FROM tidings_event_store LIMIT 1")).one()._asdict()
        row = conn.execute(sa.text("SELECT * FROM tidings_outbox LIMIT 1")).one()._asdict()
    template = json.dumps([event["data"], event["metadata"], row["envelope"]])
    columns = ("id", "handled", "handled_at", "_version")
    text = pg_append.append_statement(
        "tidings_event_store", "tidings_outbox", 1, 1, (("bench_order", columns),)
    )
    name, prepare, order = pg_prepared.prepared_form(text)
    execute = f"EXECUTE {name} ({', '.join(['%s'] * len(order))})"

    def values() -> list[Any]:
        new_order, new_message = str(uuid.uuid4()), str(uuid.uuid4())
        data, metadata, envelope = json.loads(
            template.replace(order_id, new_order).replace(event["message_id"], new_message)
        )
        stream = event["stream"].replace(order_id, new_order)
        record = {**event, "message_id": new_message, "stream": stream, "data": data, "metadata": metadata}
        outbox = {**row, "message_id": new_message, "stream": stream, "envelope": envelope}
        params = pg_append.append_parameters([record], 0, [outbox], [(new_order, 0, None, 0)])
        return [params[p] for p in order]

    def tidings_sql() -> None:
        conn = eng.raw_connection()
        try:
            params = values()
            cursor = conn.cursor()
            if name not in conn.info.setdefault("bench_prepared", set()):
                cursor.execute(prepare)
                conn.info["bench_prepared"].add(name)
            cursor.execute(execute, params)
            cursor.fetchone()
            conn.commit()
        finally:
            conn.close()

    def naive_sql() -> None:
        conn = eng.raw_connection()
        try:
            cursor = conn.cursor()
            cursor.execute("INSERT INTO bench_orders DEFAULT VALUES RETURNING id")
            payload = json.dumps({"type": "OrderPlaced", "order_id": cursor.fetchone()[0]})
            cursor.execute("INSERT INTO bench_outbox (payload) VALUES (%s)", (payload,))
            conn.commit()
        finally:
            conn.close()

    return {"naive, statements only": naive_sql, "tidings, statements only": tidings_sql}


def _add(total: list[float], more: tuple[float, ...]) -> None:
    for i, value in enumerate(more):
        total[i] += value


def _seconds_for(produce: Callable[[], Any], n: int) -> tuple[float, float, float]:
    """Wall and CPU seconds (this process: every thread; the PostgreSQL server's processes)
    for PRODUCERS threads to make n commits between them."""
    counts = [n // PRODUCERS + (i < n % PRODUCERS) for i in range(PRODUCERS)]
    threads = [threading.Thread(target=lambda k=k: [produce() for _ in range(k)]) for k in counts]
    start, cpu, server = time.perf_counter(), time.process_time(), _server_cpu()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, time.process_time() - cpu, _server_cpu() - server


def _server_cpu() -> float:
    """CPU seconds so far of the local PostgreSQL server's processes (0 where they cannot be
    read: another user's processes, a remote server)."""
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        times = proc.info["cpu_times"]
        if (proc.info["name"] or "").startswith("postgres") and times is not None:
            total += times.user + times.system
    return total


@contextmanager
def _lock_step_append(domain: Any) -> Iterator[None]:
    """Tidings' append before this change, patched in for one round: every writer takes one
    advisory lock until its COMMIT, reads `max(position)` of the stream, inserts row by row;
    every checkout pre-pings."""
    session_cls, engine = sql_session.SqlSession, domain.databases["default"].engine

    def append_events(self: Any, records: list[dict[str, Any]]) -> None:
        self.batched = False  # the outbox rows then follow in a statement of their own, as they did
        t = self.db.event_store_table
        self.conn.execute(sa.select(sa.func.pg_advisory_xact_lock(0x7469_6469_6E67_7300)))
        for record in records:
            last = sa.select(sa.func.max(t.c.position)).where(t.c.stream == record["stream"])
            found = self.conn.execute(last).scalar()
            position = 0 if found is None else found + 1
            time_ = sql_session._as_datetime(record["time"])
            self.conn.execute(sa.insert(t).values(**{**record, "position": position, "time": time_}))

    original, pre_ping = session_cls.append_events, engine.pool._pre_ping
    session_cls.append_events = append_events  # type: ignore[method-assign]
    engine.pool._pre_ping = True
    try:
        yield
    finally:
        session_cls.append_events = original  # type: ignore[method-assign]
        engine.pool._pre_ping = pre_ping


# ---- claim time vs retained rows -----------------------------------------------------------
def claim(n: int, runs: int) -> Report:
    """One claim of CLAIM_BATCH due rows (the statement the relay sends, rolled back), timed
    with 0 and N published rows kept for retention; with the table's indexes, and without the
    pending-rows indexes (what the claim cost before them)."""
    report = Report("claim", {"n": n, "runs": runs, "batch": CLAIM_BATCH})
    with scratch_database() as url:
        eng = engine_for(url)
        metadata = sa.MetaData()
        table = define_outbox(metadata)
        indexes = [
            i for i in table.indexes if i.name in ("ix_tidings_outbox_pending", "ix_tidings_outbox_due")
        ]
        for retained in (0, n):
            metadata.drop_all(eng)
            metadata.create_all(eng)
            with eng.begin() as conn:
                _fill(conn, retained, CLAIM_BATCH * 4)
                conn.exec_driver_sql("ANALYZE tidings_outbox")
            statement, params = _claim_statement(eng, table)
            for _ in range(runs):  # interleaved: with the indexes, then without
                report.add(f"{retained:,} retained: claim", "ms", _claim_ms(eng, statement, params))
                with eng.begin() as conn:
                    for index in indexes:
                        index.drop(conn)
                    conn.exec_driver_sql("ANALYZE tidings_outbox")
                report.add(
                    f"{retained:,} retained, no pending index: claim", "ms", _claim_ms(eng, statement, params)
                )
                with eng.begin() as conn:
                    for index in indexes:
                        index.create(conn)
                    conn.exec_driver_sql("ANALYZE tidings_outbox")
        metadata.drop_all(eng)
        eng.dispose()
    return report


def _fill(conn: sa.Connection, published: int, pending: int) -> None:
    conn.exec_driver_sql(
        "INSERT INTO tidings_outbox (message_id, domain, stream, type, envelope, status, attempts, "
        "next_attempt_at, created_at, published_at) "
        "SELECT 'm-' || n, 'bench', 'bench::order-' || n, 'OrderPlaced', '{}', "
        "CASE WHEN n <= %(published)s THEN 'published' ELSE 'pending' END, 0, now(), now(), "
        "CASE WHEN n <= %(published)s THEN now() END FROM generate_series(1, %(total)s) AS n",
        {"published": published, "total": published + pending},
    )


def _claim_statement(eng: sa.Engine, table: sa.Table) -> tuple[str, Any]:
    """The relay's own claim statement and parameters, captured from one relay round that is
    rolled back (so the pending rows stay pending)."""
    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        if "FOR UPDATE" in statement.upper() and not sent:
            sent.append((statement, params))
            raise _Captured

    sa.event.listen(eng, "before_cursor_execute", capture)
    try:
        SqlOutbox(eng, table, "bench").relay_batch(lambda envelope: None, CLAIM_BATCH, Backoff())
    except _Captured:
        pass
    finally:
        sa.event.remove(eng, "before_cursor_execute", capture)
    return sent[0]


class _Captured(Exception):
    """Stops the relay round once its claim statement is seen."""


def _claim_ms(eng: sa.Engine, statement: str, params: Any, repeats: int = 20) -> float:
    times = []
    with eng.connect() as conn:
        for _ in range(repeats):
            start = time.perf_counter()
            rows = conn.exec_driver_sql(statement, params).all()
            times.append((time.perf_counter() - start) * 1000)
            conn.rollback()
            assert len(rows) == CLAIM_BATCH, f"claimed {len(rows)} of {CLAIM_BATCH}"
    return percentile(times, 50)


# ---- targets -------------------------------------------------------------------------------
def ratios(reports: dict[str, Report]) -> list[str]:
    """Rows of the targets table: producer commits vs naive (>= 0.8, and before), and a claim
    with N published rows kept vs with none (the same cost: ~1)."""
    lines = []
    made = reports.get("producer")
    if made is not None:
        for label, target in (("tidings", 0.8), (BEFORE, None), ("tidings, statements only", None)):
            if f"{label}: producer commits/s" not in made.figures:
                continue
            base = "naive, statements only" if "statements only" in label else "naive"
            naive_rates = made.figures[f"{base}: producer commits/s"].values
            rates = made.figures[f"{label}: producer commits/s"].values
            ratio = statistics.median(a / b for a, b in zip(rates, naive_rates, strict=True))  # per run
            status = "-" if target is None else "met" if ratio >= target else "not met"
            lines.append(
                f"| {label}: producer commits / {base}{f' >= {target}' if target else ''} "
                f"| {ratio:.2f} | {status} |"
            )
    claimed = reports.get("claim")
    if claimed is not None:
        n = claimed.params["n"]
        for suffix in ("", ", no pending index"):
            ratio = claimed.median(f"{n:,} retained{suffix}: claim") / claimed.median("0 retained: claim")
            status = ("met" if ratio <= 2 else "not met") if not suffix else "-"
            lines.append(
                f"| claim with {n:,} published rows kept{suffix} / with none <= 2 | {ratio:.2f} | {status} |"
            )
    return lines
