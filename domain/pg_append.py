"""The event-store append on PostgreSQL: no lock across writers, commit-safe global order.

A global position is `(transaction id << 20) + the event's rank in its transaction`
(`pg_current_xact_id()`, 64-bit, never reused). Writers never wait for each other to append;
instead a reader reads only positions below `oldest running transaction id << 20` (the
snapshot's xmin, leaving out transactions of other databases): every transaction under that
id has ended, so that part of the store never changes and a cursor moving through it sees
each event exactly once, whatever order transactions commit in
(Oskar Dudycz, "ordering in Postgres outbox"; the (tx id, position) pair packed in one
bigint, so a subscription's cursor stays a plain integer).

Per-stream order: a transaction that took its id early (an inbox row, a lock) can load an
aggregate after a younger transaction committed version k of its stream, and would write
version k+1 under a smaller position. The append refuses that in the same statement (it
inserts only where the stream's last event has a smaller position), and the caller raises
ExpectedVersionError: the unit of work re-runs in a new transaction, whose id is newer.

The events, the commit's outbox rows and the rows of the aggregates it created go in one
statement (one round trip); the statement text is built once per shape (number of events and
outbox rows, the tables of the new rows) and cached, and sent as a prepared statement
(`tidings.domain.pg_prepared`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

RANK_BITS = 20  # up to 1,048,576 events per transaction
MAX_RANK = 1 << RANK_BITS
OWN_POSITION = f"(pg_current_xact_id()::text::bigint << {RANK_BITS})"
# The oldest transaction that may still append here: of those running when the reader's
# snapshot was taken, the oldest not seen running in another database (xids are server-wide,
# but another database's transaction never writes this table: leaving it out means a long
# transaction elsewhere on the server does not hold subscriptions back). One that ended
# meanwhile is not seen anywhere, so it counts: the bound only errs low, for one read.
_OLDEST_HERE = (
    "(SELECT LEAST(pg_snapshot_xmax(pg_current_snapshot()), min(x)) "
    "FROM pg_snapshot_xip(pg_current_snapshot()) AS x "
    "WHERE x::xid NOT IN (SELECT a.backend_xid FROM pg_stat_activity a "
    "WHERE a.datname <> current_database() AND a.backend_xid IS NOT NULL))"
)
SETTLED_BELOW = f"({_OLDEST_HERE}::text::bigint << {RANK_BITS})"

_EVENT_FIELDS = ("rank", "seq", "message_id", "stream", "category", "type", "data", "metadata", "time")
_OUTBOX_COLUMNS = (
    "message_id",
    "domain",
    "stream",
    "type",
    "envelope",
    "status",
    "attempts",
    "next_attempt_at",
    "created_at",
    "resent",
)


Insert = tuple[str, tuple[str, ...]]  # a new row's table and its columns (quoted names)


@lru_cache(maxsize=256)
def append_statement(
    event_table: str, outbox_table: str, events: int, rows: int, inserts: tuple[Insert, ...] = ()
) -> str:
    """The text (pyformat parameters) appending `events` events, inserting `rows` outbox rows
    and one row per `inserts` (`ON CONFLICT DO NOTHING`); it returns one row: how many events
    it appended (fewer than `events`: out of stream order), then 0 or 1 per new row (0: its
    key or a unique value is taken)."""
    parts = [
        f"new{i} AS (INSERT INTO {table} ({', '.join(columns)}) "
        f"VALUES ({', '.join(f'%(n{i}_{j})s' for j in range(len(columns)))}) "
        f"ON CONFLICT DO NOTHING RETURNING 1)"
        for i, (table, columns) in enumerate(inserts)
    ]
    if events:
        values = ", ".join(
            "(" + ", ".join(_cast(f, f"%(e{i}_{f})s") for f in _EVENT_FIELDS) + ")" for i in range(events)
        )
        parts.append(
            f"appended AS (INSERT INTO {event_table} (global_position, message_id, stream, category, "
            f"position, type, data, metadata, time) "
            f"SELECT {OWN_POSITION} + v.rank, v.message_id, v.stream, v.category, "
            f"COALESCE(last.position, -1) + 1 + v.seq, v.type, v.data, v.metadata, v.time "
            f"FROM (VALUES {values}) AS v({', '.join(_EVENT_FIELDS)}) "
            f"LEFT JOIN LATERAL (SELECT e.position, e.global_position FROM {event_table} e "
            f"WHERE e.stream = v.stream ORDER BY e.position DESC LIMIT 1) AS last ON true "
            f"WHERE last.global_position IS NULL OR last.global_position < {OWN_POSITION} "
            f"RETURNING 1)"
        )
    if rows:
        values = ", ".join(
            "(" + ", ".join(f"%(o{i}_{c})s" for c in _OUTBOX_COLUMNS) + ")" for i in range(rows)
        )
        parts.append(
            f"relayed AS (INSERT INTO {outbox_table} ({', '.join(_OUTBOX_COLUMNS)}) VALUES {values} "
            f"RETURNING 1)"
        )
    counted = ["(SELECT count(*) FROM appended)" if events else "0"]
    counted += [f"(SELECT count(*) FROM new{i})" for i in range(len(inserts))]
    return f"WITH {', '.join(parts)} SELECT {', '.join(counted)}"


def _cast(field: str, placeholder: str) -> str:
    casts = {"rank": "::bigint", "seq": "::integer", "data": "::json", "metadata": "::json"}
    return placeholder + casts.get(field, "::timestamptz" if field == "time" else "::text")


def append_parameters(
    records: list[dict[str, Any]],
    first_rank: int,
    rows: list[dict[str, Any]],
    new_rows: Sequence[tuple[Any, ...]] = (),
) -> dict[str, Any]:
    """The parameters of `append_statement` for these records (ranked from `first_rank` in this
    transaction), outbox rows and new rows (their values, as the driver takes them, in the
    order of their `inserts` columns)."""
    params: dict[str, Any] = {}
    for i, values in enumerate(new_rows):
        params.update({f"n{i}_{j}": value for j, value in enumerate(values)})
    seen: dict[str, int] = {}
    for i, record in enumerate(records):
        seq = seen.get(record["stream"], 0)
        seen[record["stream"]] = seq + 1
        params.update(
            {
                f"e{i}_rank": first_rank + i,
                f"e{i}_seq": seq,
                f"e{i}_message_id": record["message_id"],
                f"e{i}_stream": record["stream"],
                f"e{i}_category": record["category"],
                f"e{i}_type": record["type"],
                f"e{i}_data": json.dumps(record["data"]),
                f"e{i}_metadata": json.dumps(record["metadata"]),
                f"e{i}_time": _as_datetime(record["time"]),
            }
        )
    for i, row in enumerate(rows):
        row = {"resent": 0, **row}  # the column's default is SQLAlchemy's, not the table's
        params.update({f"o{i}_{c}": row[c] for c in _OUTBOX_COLUMNS})
    return params


def _as_datetime(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value
