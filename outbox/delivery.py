"""The delivery log's port and its records: what the quiescence test and the delivery audit
read of a domain's outbox and inbox (implemented in outbox/progress.py)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

# Message type -> the inbox keys of the handlers that receive it through their queue. A
# superset is allowed (a handler's `source_stream` is not known to SQL): the audit checks each
# row it selects against the exact routing and confirms a row that lacks nothing.
AuditRoutes = Mapping[str, Collection[str]]


@dataclass(frozen=True)
class AuditWindow:
    """What one audit round looks at: rows published in [`after`, `before`), due for a look
    (`next_audit_at` empty or passed at `now`), re-sent fewer than `max_resends` times."""

    now: datetime
    before: datetime  # now - audit_grace
    after: datetime  # now - audit_window
    max_resends: int


@dataclass(frozen=True)
class Unconfirmed:
    """A published row some queued handler has neither applied nor dead-lettered."""

    id: int
    message_id: str
    envelope: str
    resent: int
    missing: tuple[str, ...]  # inbox keys of the (candidate) handlers lacking it


@dataclass(frozen=True)
class Backlog:
    """What one handler has not handled yet: `messages` committed for it (pending in the
    outbox, or published and neither applied nor dead-lettered by it), the oldest committed
    at `oldest` (None: nothing)."""

    messages: int = 0
    oldest: datetime | None = None

    def plus(self, messages: int, oldest: datetime | None) -> Backlog:
        dates = [d for d in (self.oldest, oldest) if d is not None]
        return Backlog(self.messages + messages, min(dates) if dates else None)


@dataclass(frozen=True)
class PendingSummary:
    """This domain's outbox rows not relayed yet: how many, how many failed a publish, and
    when the oldest was committed (None: none)."""

    pending: int
    failing: int
    oldest: datetime | None


@dataclass(frozen=True)
class DeliverySnapshot:
    published: list[str]  # envelopes (JSON) of this domain's relayed rows
    pending: int  # this domain's rows not relayed yet
    applied: list[tuple[str, datetime]]  # inbox rows of the handlers asked for: (message id, when)


class DeliveryLog(Protocol):
    """The port: outbox, inbox and dead letters share the default database."""

    def snapshot(self, handlers: Collection[str]) -> DeliverySnapshot:
        """This domain's outbox rows and the inbox rows of `handlers` (inbox keys)."""
        ...

    def confirm(self, routes: AuditRoutes, after: datetime, now: datetime, limit: int) -> int:
        """Mark up to `limit` published rows (published since `after`, oldest first) that
        no handler of `routes` lacks as confirmed; the audit never reads them again. Returns
        how many. External rows (for `[outbox] external_brokers`) have no handler: confirmed."""
        ...

    def unconfirmed(self, routes: AuditRoutes, window: AuditWindow, limit: int) -> list[Unconfirmed]:
        """Up to `limit` rows of `window`, oldest published first, that a handler of `routes`
        has neither applied nor dead-lettered, each with the keys of those handlers."""
        ...

    def mark_audited(self, resent: Mapping[int, datetime], confirmed: Collection[int], now: datetime) -> None:
        """Rows re-sent (id -> when the audit may look again; `resent` counts one more) and
        rows found complete (confirmed)."""
        ...

    def pending_summary(self) -> PendingSummary:
        """The pending rows in one read of their own index (the published ones kept for
        `retention` are not counted: that would scan them all)."""
        ...

    def backlog(self, routes: AuditRoutes, after: datetime) -> dict[str, Backlog]:
        """Per inbox key of `routes`: the rows of its types still pending, plus the rows
        published since `after` (the audit window) it has neither applied nor dead-lettered,
        in one read (`tidings status`). A superset like the audit's: a row of a handler's type
        that its `source_stream` filters out counts until the audit confirms it."""
        ...

    def oldest_unconfirmed(self, routes: AuditRoutes, before: datetime, after: datetime) -> datetime | None:
        """When the oldest row published in [`after`, `before`) that a handler still lacks
        was published (None: there is none), whatever its re-sends: the audit's lag."""
        ...


def grouped(rows: Sequence[Any], handler_of: Callable[[Any], str]) -> list[Unconfirmed]:
    """(row, handler) pairs, in row order, as one `Unconfirmed` per row."""
    found: dict[int, Unconfirmed] = {}
    for row in rows:
        seen = found.get(row.id)
        missing = (*(seen.missing if seen else ()), handler_of(row))
        found[row.id] = Unconfirmed(row.id, row.message_id, row.envelope, row.resent or 0, missing)
    return list(found.values())
