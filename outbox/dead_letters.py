"""The dead-letter store: the durable record of every dead-lettered delivery of one domain.

A broker DLQ queue (`<queue>.dlq`) forgets with the broker (a Redis restarted without
persistence); this table commits in the default database, beside the outbox and the inbox.
It is what `tidings dlq` lists, shows, replays and purges, and what the delivery audit reads
to tell a dead-lettered delivery (done) from a missing one (sent again).

An entry is the JSON-ready dict of `tidings.tasks.dead_letter.entry_for` plus `handler`, the inbox
key of the handler it failed in. Reading never fails on one entry: a body that no longer
decodes comes back as text under `raw_body`, with `body` None and the reason in `undecodable`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa

from tidings.outbox.relay import HasEngine
from tidings.outbox.tables import READ_ONLY


class DeadLetters(Protocol):
    """The port: record, read and remove the dead letters of one domain."""

    def record(self, entry: Mapping[str, Any]) -> None:
        """Store one entry (its `entry_id` is the key)."""
        ...

    def entries(self, queue: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Entries of `queue` (default: every queue of this domain), oldest first."""
        ...

    def get(self, entry_id: str) -> dict[str, Any] | None: ...

    def delete(self, entry_ids: Collection[str]) -> int:
        """Remove these entries (replayed); returns how many."""
        ...

    def purge(self, queue: str | None = None) -> int:
        """Remove every entry of `queue` (default: all of this domain's); returns how many."""
        ...

    def count(self, queue: str | None = None) -> int: ...

    def counts(self) -> dict[str, int]:
        """This domain's dead letters per queue, in one read (`tidings status`)."""
        ...


def _failed_at(entry: Mapping[str, Any]) -> datetime:
    value = entry.get("failed_at")
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.now(UTC)


def _text(value: Any) -> Any:
    """Text a database takes: PostgreSQL refuses NUL in a string (a pickle holds some)."""
    return value.replace("\x00", "\\x00") if isinstance(value, str) else value


def stored(entry: Mapping[str, Any], domain: str) -> dict[str, Any]:
    """The table row of an entry: body and headers as JSON text."""
    body = entry.get("body")
    headers = entry.get("headers")
    row = {
        "entry_id": entry["entry_id"],
        "domain": domain,
        "handler": entry.get("handler"),
        "queue": entry["queue"],
        "task": entry.get("task"),
        "message_id": entry.get("message_id"),
        "body": None if body is None else json.dumps(body, default=str),
        "raw_body": entry.get("raw_body"),
        "headers": None if not headers else json.dumps(headers, default=str),
        "error_type": entry.get("error_type") or "Unknown",
        "error_message": entry.get("error_message") or "",
        "traceback": entry.get("traceback"),
        "attempts": entry.get("attempts"),
        "failed_at": _failed_at(entry),
    }
    return {k: _text(v) for k, v in row.items()}


def loaded(row: Mapping[Any, Any]) -> dict[str, Any]:
    """An entry from its table row; a body or headers that do not decode never raise."""
    entry: dict[str, Any] = {
        k: row[k]
        for k in ("entry_id", "handler", "queue", "task", "message_id", "error_type", "error_message")
    }
    entry.update(traceback=row["traceback"], attempts=row["attempts"])
    failed = row["failed_at"]
    if isinstance(failed, datetime) and failed.tzinfo is None:  # SQLite returns naive datetimes
        failed = failed.replace(tzinfo=UTC)
    entry["failed_at"] = failed.isoformat() if isinstance(failed, datetime) else failed
    entry["body"] = None
    if row["body"] is not None:
        try:
            entry["body"] = json.loads(row["body"])
        except ValueError as exc:
            entry["undecodable"] = f"body: {type(exc).__name__}: {exc}"
            entry["raw_body"] = row["body"]
    if row["raw_body"] is not None:
        entry["raw_body"] = row["raw_body"]
    if row["headers"] is not None:
        try:
            entry["headers"] = json.loads(row["headers"])
        except ValueError:
            entry["headers"] = row["headers"]
    return entry


class SqlDeadLetters:
    """`tidings_dead_letters` rows of one domain (domains may share the database)."""

    def __init__(self, source: HasEngine, table: sa.Table, domain: str) -> None:
        self.source, self.table, self.domain = source, table, domain

    def _own(self, queue: str | None) -> list[sa.ColumnElement[bool]]:
        t = self.table
        return [t.c.domain == self.domain] + ([t.c.queue == queue] if queue is not None else [])

    def record(self, entry: Mapping[str, Any]) -> None:
        with self.source.engine.begin() as conn:
            conn.execute(sa.insert(self.table).values(**stored(entry, self.domain)))

    def entries(self, queue: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        t = self.table
        query = sa.select(t).where(*self._own(queue)).order_by(t.c.failed_at, t.c.entry_id).limit(limit)
        with self.source.engine.connect() as conn:
            return [loaded(row._mapping) for row in conn.execute(query)]

    def get(self, entry_id: str) -> dict[str, Any] | None:
        t = self.table
        with self.source.engine.connect() as conn:
            row = conn.execute(sa.select(t).where(*self._own(None), t.c.entry_id == entry_id)).first()
        return None if row is None else loaded(row._mapping)

    def delete(self, entry_ids: Collection[str]) -> int:
        if not entry_ids:
            return 0
        t = self.table
        with self.source.engine.begin() as conn:
            return conn.execute(
                sa.delete(t).where(*self._own(None), t.c.entry_id.in_(list(entry_ids)))
            ).rowcount

    def purge(self, queue: str | None = None) -> int:
        with self.source.engine.begin() as conn:
            return conn.execute(sa.delete(self.table).where(*self._own(queue))).rowcount

    def count(self, queue: str | None = None) -> int:
        with self.source.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(self.table).where(*self._own(queue))
                ).scalar()
                or 0
            )

    def counts(self) -> dict[str, int]:
        t = self.table
        query = sa.select(t.c.queue, sa.func.count()).where(*self._own(None)).group_by(t.c.queue)
        with self.source.engine.connect().execution_options(**READ_ONLY) as conn:
            return {queue: int(n) for queue, n in conn.execute(query).all()}


class MemoryDeadLetters:
    """The dead letters of the memory provider (entry id -> table row), under its lock."""

    def __init__(self, rows: dict[str, dict[str, Any]], lock: Any, domain: str) -> None:
        self.rows, self.lock, self.domain = rows, lock, domain

    def _own(self, queue: str | None) -> list[dict[str, Any]]:
        own = [r for r in self.rows.values() if r["domain"] == self.domain and queue in (None, r["queue"])]
        return sorted(own, key=lambda r: (r["failed_at"], r["entry_id"]))

    def record(self, entry: Mapping[str, Any]) -> None:
        row = stored(entry, self.domain)
        with self.lock:
            self.rows[row["entry_id"]] = row

    def entries(self, queue: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self.lock:
            return [loaded(r) for r in self._own(queue)[:limit]]

    def get(self, entry_id: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.rows.get(entry_id)
            return loaded(row) if row is not None and row["domain"] == self.domain else None

    def delete(self, entry_ids: Collection[str]) -> int:
        with self.lock:
            gone = [i for i in entry_ids if i in self.rows and self.rows[i]["domain"] == self.domain]
            for entry_id in gone:
                del self.rows[entry_id]
        return len(gone)

    def purge(self, queue: str | None = None) -> int:
        with self.lock:
            own = self._own(queue)
            for row in own:
                del self.rows[row["entry_id"]]
        return len(own)

    def count(self, queue: str | None = None) -> int:
        with self.lock:
            return len(self._own(queue))

    def counts(self) -> dict[str, int]:
        with self.lock:
            return dict(Counter(r["queue"] for r in self._own(None)))
