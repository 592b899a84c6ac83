"""The inbox port's providers beyond the transaction (rows are written by `mark_processed`)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

# A handler with several methods for one message keeps one inbox row per applied method,
# `<handler key>#<method>`, beside the handler's own row (see `MessageBus.run_handler`).
METHOD_SEP = "#"

if TYPE_CHECKING:
    from tidings.domain.sql import SqlDatabase


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
