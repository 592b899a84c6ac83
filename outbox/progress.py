"""One consistent reading of a domain's outbox and inbox: what was relayed, what waits, what
was applied. `app/progress.py` turns it into "due == done", the quiescence test.

It is also the delivery audit's port (tasks/audit.py): which published rows a queued handler
has neither applied (an inbox row under its key) nor dead-lettered (a `tidings_dead_letters`
row under its key), oldest first; the rows it re-sent (with a per-row backoff) and the rows it
found complete, which it never reads again.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from tidings.outbox.delivery import (
    AuditRoutes,
    AuditWindow,
    Backlog,
    DeliveryLog,
    DeliverySnapshot,
    PendingSummary,
    Unconfirmed,
    grouped,
)
from tidings.outbox.relay import HasEngine
from tidings.outbox.tables import PENDING, PUBLISHED, READ_ONLY
from tidings.outbox.writer import EXTERNAL_PREFIX, is_external

__all__ = [
    "AuditRoutes",
    "AuditWindow",
    "Backlog",
    "DeliveryLog",
    "DeliverySnapshot",
    "MemoryDeliveryLog",
    "PendingSummary",
    "SqlDeliveryLog",
    "Unconfirmed",
]


class SqlDeliveryLog:
    def __init__(
        self, source: HasEngine, outbox: sa.Table, inbox: sa.Table, dead_letters: sa.Table, domain: str
    ) -> None:
        self.source, self.outbox, self.inbox, self.domain = source, outbox, inbox, domain
        self.dead_letters = dead_letters

    def snapshot(self, handlers: Collection[str]) -> DeliverySnapshot:
        outbox, inbox = self.outbox, self.inbox
        engine = self.source.engine
        own = outbox.c.domain == self.domain
        # One snapshot for all three reads: a relay or a handler committing between them would
        # otherwise make a message count neither as pending nor as due (a false "settled").
        snapshot = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
        with engine.connect().execution_options(**snapshot) as conn:
            published = list(
                conn.execute(sa.select(outbox.c.envelope).where(own, outbox.c.status == PUBLISHED)).scalars()
            )
            pending = conn.execute(sa.select(sa.func.count()).where(own, outbox.c.status == PENDING)).scalar()
            applied = [
                (r.message_id, r.processed_at)
                for r in conn.execute(
                    sa.select(inbox.c.message_id, inbox.c.processed_at).where(
                        inbox.c.handler.in_(list(handlers))
                    )
                )
            ]
        return DeliverySnapshot(published, pending or 0, applied)

    # ---- the audit ----------------------------------------------------------------------------
    def _routes(self, routes: AuditRoutes) -> sa.CTE:
        """`routes` as a relation (type, handler): a UNION ALL of literal rows, which both
        PostgreSQL and SQLite plan as a tiny constant scan."""
        pairs = [(t, h) for t, handlers in routes.items() for h in handlers]
        if not pairs:
            none = sa.select(sa.literal("").label("type"), sa.literal("").label("handler")).where(sa.false())
            return none.cte("audit_routes")
        selects = [sa.select(sa.literal(t).label("type"), sa.literal(h).label("handler")) for t, h in pairs]
        return (selects[0] if len(selects) == 1 else sa.union_all(*selects)).cte("audit_routes")

    def _lacking(self, routes: sa.CTE) -> sa.ColumnElement[bool]:
        """A route of this row's type whose handler has no inbox row and no dead letter for it."""
        o, i, d = self.outbox, self.inbox, self.dead_letters
        # Correlated explicitly: nested in another EXISTS, auto-correlation would not reach the
        # outbox row and would cross-join the outbox instead.
        return sa.and_(
            routes.c.type == o.c.type,
            ~sa.exists()
            .where(i.c.handler == routes.c.handler, i.c.message_id == o.c.message_id)
            .correlate_except(i),
            ~sa.exists()
            .where(d.c.handler == routes.c.handler, d.c.message_id == o.c.message_id)
            .correlate_except(d),
        )

    def _own_published(self, after: datetime) -> list[sa.ColumnElement[bool]]:
        o = self.outbox
        # The same predicate as ix_tidings_outbox_unconfirmed, so the planner uses that index.
        return [
            o.c.domain == self.domain,
            o.c.status == PUBLISHED,
            o.c.confirmed_at.is_(None),
            o.c.published_at >= after,
        ]

    def confirm(self, routes: AuditRoutes, after: datetime, now: datetime, limit: int) -> int:
        o, r = self.outbox, self._routes(routes)
        lacks = sa.exists().where(self._lacking(r))
        external = o.c.envelope.startswith(EXTERNAL_PREFIX, autoescape=True)
        done = (
            sa.select(o.c.id)
            .where(*self._own_published(after), sa.or_(external, ~lacks))
            .order_by(o.c.published_at, o.c.id)
            .limit(limit)
        )
        with self.source.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # One statement, the ids never leave the database: the audit runs beside the
                # relay and the consumer in the worker's main process, and pulling ~1,000 ids
                # into Python to send them back as bound parameters held its GIL for ms.
                update = sa.update(o).where(o.c.id.in_(done)).values(confirmed_at=now)
                return conn.execute(update).rowcount
            ids = list(conn.execute(done).scalars())
            if ids:  # by id: SQLite reports no row count for an UPDATE that carries a subquery
                conn.execute(sa.update(o).where(o.c.id.in_(ids)).values(confirmed_at=now))
        return len(ids)

    def unconfirmed(self, routes: AuditRoutes, window: AuditWindow, limit: int) -> list[Unconfirmed]:
        o, r = self.outbox, self._routes(routes)
        picked = (
            sa.select(o.c.id)
            .where(
                *self._own_published(window.after),
                o.c.published_at < window.before,
                sa.or_(o.c.next_audit_at.is_(None), o.c.next_audit_at <= window.now),
                sa.func.coalesce(o.c.resent, 0) < window.max_resends,
                ~o.c.envelope.startswith(EXTERNAL_PREFIX, autoescape=True),
                sa.exists().where(self._lacking(r)),
            )
            .order_by(o.c.published_at, o.c.id)
            .limit(limit)
            .subquery("picked")
        )
        pairs = (
            sa.select(o.c.id, o.c.message_id, o.c.envelope, o.c.resent, o.c.published_at, r.c.handler)
            .select_from(o.join(picked, picked.c.id == o.c.id))
            .join(r, self._lacking(r))
            .order_by(o.c.published_at, o.c.id, r.c.handler)
        )
        with self.source.engine.connect() as conn:
            rows = conn.execute(pairs).all()
        return grouped(rows, lambda row: row.handler)

    def mark_audited(self, resent: Mapping[int, datetime], confirmed: Collection[int], now: datetime) -> None:
        o = self.outbox
        with self.source.engine.begin() as conn:
            if resent:
                conn.execute(
                    sa.update(o)
                    .where(o.c.id == sa.bindparam("row_id"))
                    .values(
                        resent=sa.func.coalesce(o.c.resent, 0) + 1,
                        last_audit_at=now,
                        next_audit_at=sa.bindparam("next_at"),
                    ),
                    [{"row_id": i, "next_at": at} for i, at in resent.items()],
                )
            if confirmed:
                conn.execute(sa.update(o).where(o.c.id.in_(list(confirmed))).values(confirmed_at=now))

    def pending_summary(self) -> PendingSummary:
        o = self.outbox
        failed = sa.func.coalesce(sa.func.sum(sa.case((o.c.attempts > 0, 1), else_=0)), 0)
        query = sa.select(sa.func.count(), failed, sa.func.min(o.c.created_at)).where(
            o.c.domain == self.domain, o.c.status == PENDING
        )
        with self.source.engine.connect().execution_options(**READ_ONLY) as conn:
            pending, failing, oldest = conn.execute(query).one()
        return PendingSummary(int(pending), int(failing), oldest)

    def backlog(self, routes: AuditRoutes, after: datetime) -> dict[str, Backlog]:
        o, r = self.outbox, self._routes(routes)
        own = ~o.c.envelope.startswith(EXTERNAL_PREFIX, autoescape=True)
        columns = (r.c.handler, sa.func.count().label("n"), sa.func.min(o.c.created_at).label("oldest"))
        # Pending rows walk ix_tidings_outbox_pending, unhandled ones ix_tidings_outbox_unconfirmed
        # (each probed in the inbox and dead-letter keys): neither reads the retained rows.
        pending = (
            sa.select(*columns)
            .select_from(o.join(r, r.c.type == o.c.type))
            .where(o.c.domain == self.domain, o.c.status == PENDING, own)
            .group_by(r.c.handler)
        )
        unhandled = (
            sa.select(*columns)
            .select_from(o)
            .join(r, self._lacking(r))
            .where(*self._own_published(after), own)
            .group_by(r.c.handler)
        )
        found: dict[str, Backlog] = {}
        with self.source.engine.connect().execution_options(**READ_ONLY) as conn:
            for handler, n, oldest in conn.execute(sa.union_all(pending, unhandled)).all():
                found[handler] = found.get(handler, Backlog()).plus(int(n), oldest)
        return found

    def oldest_unconfirmed(self, routes: AuditRoutes, before: datetime, after: datetime) -> datetime | None:
        o, r = self.outbox, self._routes(routes)
        query = (
            sa.select(o.c.published_at)
            .where(
                *self._own_published(after),
                o.c.published_at < before,
                ~o.c.envelope.startswith(EXTERNAL_PREFIX, autoescape=True),
                sa.exists().where(self._lacking(r)),
            )
            .order_by(o.c.published_at)
            .limit(1)
        )
        with self.source.engine.connect().execution_options(**READ_ONLY) as conn:
            return conn.execute(query).scalar()


class MemoryDeliveryLog:
    def __init__(
        self,
        outbox: list[dict[str, Any]],
        inbox: dict[tuple[str, str], datetime],
        dead_letters: dict[str, dict[str, Any]],
        lock: Any,
        domain: str,
    ) -> None:
        self.outbox, self.inbox, self.lock, self.domain = outbox, inbox, lock, domain
        self.dead_letters = dead_letters

    def snapshot(self, handlers: Collection[str]) -> DeliverySnapshot:
        wanted = set(handlers)
        with self.lock:
            own = [r for r in self.outbox if r["domain"] == self.domain]
            published = [r["envelope"] for r in own if r["status"] == PUBLISHED]
            pending = sum(r["status"] == PENDING for r in own)
            applied = [(m, at) for (h, m), at in self.inbox.items() if h in wanted]
        return DeliverySnapshot(published, pending, applied)

    # ---- the audit (the same selection as SqlDeliveryLog's, over the memory rows) -------------
    def _lacking(self, routes: AuditRoutes, row: dict[str, Any]) -> tuple[str, ...]:
        if is_external(row["envelope"]):
            return ()
        dead = {(d.get("handler"), d.get("message_id")) for d in self.dead_letters.values()}
        key = row["message_id"]
        return tuple(
            sorted(
                h for h in routes.get(row["type"], ()) if (h, key) not in self.inbox and (h, key) not in dead
            )
        )

    def _own_published(self, after: datetime) -> list[dict[str, Any]]:
        rows = [
            r
            for r in self.outbox
            if r["domain"] == self.domain
            and r["status"] == PUBLISHED
            and r.get("confirmed_at") is None
            and r["published_at"] >= after
        ]
        return sorted(rows, key=lambda r: (r["published_at"], r["id"]))

    def confirm(self, routes: AuditRoutes, after: datetime, now: datetime, limit: int) -> int:
        with self.lock:
            done = [r for r in self._own_published(after) if not self._lacking(routes, r)][:limit]
            for row in done:
                row["confirmed_at"] = now
        return len(done)

    def unconfirmed(self, routes: AuditRoutes, window: AuditWindow, limit: int) -> list[Unconfirmed]:
        found: list[Unconfirmed] = []
        with self.lock:
            for row in self._own_published(window.after):
                if len(found) >= limit or row["published_at"] >= window.before:
                    break
                due = row.get("next_audit_at") is None or row["next_audit_at"] <= window.now
                missing = self._lacking(routes, row)
                if due and (row.get("resent") or 0) < window.max_resends and missing:
                    found.append(
                        Unconfirmed(
                            row["id"], row["message_id"], row["envelope"], row.get("resent") or 0, missing
                        )
                    )
        return found

    def mark_audited(self, resent: Mapping[int, datetime], confirmed: Collection[int], now: datetime) -> None:
        with self.lock:
            for row in self.outbox:
                if row.get("id") in resent:
                    row.update(
                        resent=(row.get("resent") or 0) + 1,
                        last_audit_at=now,
                        next_audit_at=resent[row["id"]],
                    )
                if row.get("id") in confirmed:
                    row["confirmed_at"] = now

    def oldest_unconfirmed(self, routes: AuditRoutes, before: datetime, after: datetime) -> datetime | None:
        with self.lock:
            for row in self._own_published(after):
                if row["published_at"] >= before:
                    return None
                if self._lacking(routes, row):
                    published: datetime = row["published_at"]
                    return published
        return None

    def pending_summary(self) -> PendingSummary:
        with self.lock:
            rows = [r for r in self.outbox if r["domain"] == self.domain and r["status"] == PENDING]
        oldest = min((r["created_at"] for r in rows), default=None)
        return PendingSummary(len(rows), sum(r["attempts"] > 0 for r in rows), oldest)

    def backlog(self, routes: AuditRoutes, after: datetime) -> dict[str, Backlog]:
        found: dict[str, Backlog] = {}
        with self.lock:
            pending = [
                r
                for r in self.outbox
                if r["domain"] == self.domain and r["status"] == PENDING and not is_external(r["envelope"])
            ]
            for row in pending:
                for handler in routes.get(row["type"], ()):
                    found[handler] = found.get(handler, Backlog()).plus(1, row["created_at"])
            for row in self._own_published(after):
                for handler in self._lacking(routes, row):
                    found[handler] = found.get(handler, Backlog()).plus(1, row["created_at"])
        return found
