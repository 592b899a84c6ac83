"""One consistent reading of a domain's outbox and inbox: what was relayed, what waits, what
was applied. `app/progress.py` turns it into "due == done", the quiescence test."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa

from tidings.outbox.relay import HasEngine
from tidings.outbox.tables import PENDING, PUBLISHED


@dataclass(frozen=True)
class DeliverySnapshot:
    published: list[str]  # envelopes (JSON) of this domain's relayed rows
    pending: int  # this domain's rows not relayed yet
    applied: list[tuple[str, datetime]]  # inbox rows of the handlers asked for: (message id, when)


class DeliveryLog(Protocol):
    """The port: outbox and inbox share the default database, read here in one snapshot."""

    def snapshot(self, handlers: Collection[str]) -> DeliverySnapshot:
        """This domain's outbox rows and the inbox rows of `handlers` (inbox keys)."""
        ...


class SqlDeliveryLog:
    def __init__(self, source: HasEngine, outbox: sa.Table, inbox: sa.Table, domain: str) -> None:
        self.source, self.outbox, self.inbox, self.domain = source, outbox, inbox, domain

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


class MemoryDeliveryLog:
    def __init__(
        self, outbox: list[dict[str, Any]], inbox: dict[tuple[str, str], datetime], lock: Any, domain: str
    ) -> None:
        self.outbox, self.inbox, self.lock, self.domain = outbox, inbox, lock, domain

    def snapshot(self, handlers: Collection[str]) -> DeliverySnapshot:
        wanted = set(handlers)
        with self.lock:
            own = [r for r in self.outbox if r["domain"] == self.domain]
            published = [r["envelope"] for r in own if r["status"] == PUBLISHED]
            pending = sum(r["status"] == PENDING for r in own)
            applied = [(m, at) for (h, m), at in self.inbox.items() if h in wanted]
        return DeliverySnapshot(published, pending, applied)
