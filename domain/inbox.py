"""The inbox port's providers beyond the transaction (rows are written by `mark_processed`,
or for a pack of messages by `mark_many`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

# A handler with several methods for one message keeps one inbox row per applied method,
# `<handler key>#<method>`, beside the handler's own row (see `MessageBus.run_handler`).
METHOD_SEP = "#"

if TYPE_CHECKING:
    from tidings.domain.sql import SqlDatabase
    from tidings.domain.uow import UnitOfWork

# `INSERT ... ON CONFLICT DO NOTHING RETURNING`: one statement for a whole pack
_MULTI_ROW_INSERT: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def mark_many(uow: UnitOfWork, handler: str, message_ids: Sequence[str]) -> set[str]:
    """The inbox rows (handler, id) of a pack in `uow`'s transaction; returns the ids that were
    new (the others were applied before: their messages are skipped).

    On PostgreSQL and SQLite one multi-row `INSERT ... ON CONFLICT DO NOTHING RETURNING
    message_id`; on PostgreSQL it waits for a concurrent transaction holding the same key and
    then skips it, so two packs carrying the same message never both apply it. Elsewhere one
    `mark_processed` per id."""
    ids = list(dict.fromkeys(message_ids))  # a message twice in one pack is one row
    session = uow.session_for(uow.stores.outbox)
    conn, db = getattr(session, "conn", None), getattr(session, "db", None)
    insert = _MULTI_ROW_INSERT.get(conn.dialect.name) if conn is not None else None
    if insert is None or db is None or db.inbox_table is None or not ids:
        return {i for i in ids if session.mark_processed(handler, i)}
    t, now = db.inbox_table, datetime.now(UTC)
    statement = (
        insert(t)
        .values([{"handler": handler, "message_id": i, "processed_at": now} for i in ids])
        .on_conflict_do_nothing()
        .returning(t.c.message_id)
    )
    return set(conn.execute(statement).scalars())  # type: ignore[union-attr]


class MemoryInbox:
    """(handler, message id) -> when it was processed, in the memory database."""

    def __init__(self, rows: dict[tuple[str, str], datetime], lock: Any) -> None:
        self.rows, self.lock = rows, lock

    def purge(self, older_than: datetime, prefix: str | None = None) -> int:
        with self.lock:
            old = [
                key
                for key, at in self.rows.items()
                if at < older_than and (prefix is None or key[0].startswith(prefix))
            ]
            for key in old:
                del self.rows[key]
        return len(old)

    def forget(self, handler: str) -> int:
        with self.lock:
            keys = [key for key in self.rows if key[0] == handler or key[0].startswith(handler + METHOD_SEP)]
            for key in keys:
                del self.rows[key]
        return len(keys)


class SqlInbox:
    """The `tidings_inbox` table of a SQL database."""

    def __init__(self, db: SqlDatabase) -> None:
        assert db.inbox_table is not None
        self.db, self.table = db, db.inbox_table

    def purge(self, older_than: datetime, prefix: str | None = None) -> int:
        old = [self.table.c.processed_at < older_than]
        if prefix is not None:
            old.append(self.table.c.handler.startswith(prefix, autoescape=True))
        with self.db.engine.begin() as conn:
            return conn.execute(sa.delete(self.table).where(*old)).rowcount

    def forget(self, handler: str) -> int:
        column = self.table.c.handler
        mine = sa.or_(column == handler, column.startswith(handler + METHOD_SEP, autoescape=True))
        with self.db.engine.begin() as conn:
            return conn.execute(sa.delete(self.table).where(mine)).rowcount
