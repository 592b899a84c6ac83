"""The relay's claim reads the partial index of pending rows, however many published rows are
kept for retention (PostgreSQL's plan of the claim statement the relay really sends)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tidings.domain.sql import make_engine
from tidings.outbox.relay import Backoff, SqlOutbox
from tidings.outbox.tables import define_outbox

RETAINED = 20_000  # published rows: enough for the planner to prefer any index over a scan
RESET = (
    "UPDATE tidings_outbox SET status = 'pending', published_at = NULL "
    "WHERE domain = 'bench' AND id > %(retained)s"
)


def fill(conn: sa.Connection, domain: str, published: int, pending: int) -> None:
    """`published` rows kept for retention, then `pending` due rows, of one domain."""
    conn.exec_driver_sql(
        "INSERT INTO tidings_outbox (message_id, domain, stream, type, envelope, status, attempts, "
        "next_attempt_at, created_at, published_at) "
        "SELECT %(domain)s || '-' || n, %(domain)s, 'bench::order-' || n, 'OrderPlaced', '{}', "
        "CASE WHEN n <= %(published)s THEN 'published' ELSE 'pending' END, 0, now(), now(), "
        "CASE WHEN n <= %(published)s THEN now() END "
        "FROM generate_series(1, %(total)s) AS n",
        {"domain": domain, "published": published, "total": published + pending},
    )


@pytest.fixture
def engine(postgres_url):
    engine = make_engine(postgres_url)
    metadata = sa.MetaData()
    table = define_outbox(metadata)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield engine, table
    metadata.drop_all(engine)
    engine.dispose()


def claim_statement(engine: sa.Engine, outbox: SqlOutbox) -> tuple[str, object]:
    """The SELECT the relay claims with, and its parameters, as sent in one relay round."""
    sent: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FOR UPDATE" in statement.upper():
            sent.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        published = outbox.relay_batch(lambda envelope: None, 100, Backoff())
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert published == 5 and sent, "the relay claimed nothing"
    return sent[0]


def rows_read(plan: dict) -> int:
    """Rows the plan's scans read: returned plus removed by a filter, over every scan node."""
    own = 0
    if "Scan" in plan["Node Type"]:
        own = plan["Actual Rows"] * plan.get("Actual Loops", 1) + plan.get("Rows Removed by Filter", 0)
    return own + sum(rows_read(child) for child in plan.get("Plans", []))


@pytest.mark.parametrize("retained", [0, RETAINED])
def test_the_claim_reads_the_pending_rows_only_however_many_published_rows_are_kept(engine, retained):
    engine, table = engine
    with engine.begin() as conn:
        fill(conn, "bench", retained, 5)
        fill(conn, "other", retained // 10, 5)  # another domain sharing the table
        conn.exec_driver_sql("ANALYZE tidings_outbox")
    statement, parameters = claim_statement(engine, SqlOutbox(engine, table, "bench"))
    with engine.connect() as conn:
        conn.exec_driver_sql(RESET, {"retained": retained})  # what the round published: due again
        explain = f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}"
        plan = conn.exec_driver_sql(explain, parameters).scalar_one()[0]["Plan"]  # type: ignore[arg-type]
        conn.rollback()  # EXPLAIN ANALYZE ran the claim: its row locks go
    assert rows_read(plan) <= 10, plan  # the 5 due rows of each domain, never the published ones
