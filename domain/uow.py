"""The unit of work: one transaction per database for aggregates, events and outbox rows."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from tidings.domain.context import current_uow
from tidings.domain.database import Database, Session, event_record
from tidings.domain.envelope import Message
from tidings.outbox.writer import outbox_rows

if TYPE_CHECKING:
    from tidings.domain.domain import Domain


class UnitOfWork:
    """Stages changes; `commit()` writes them, the events and the outbox rows atomically.

    Messages become visible to handlers only after the commit succeeded; an exception
    inside `with domain.unit_of_work():` rolls everything back and dispatches nothing.
    """

    def __init__(self, domain: Domain) -> None:
        self.domain = domain
        self.sessions: dict[str, Session] = {}
        self.messages: list[Message] = []  # stored, relayed or dispatched after commit
        self.stored_only: list[Message] = []  # stored in the event store only (handled already)
        self._token: Any = None
        self.in_progress = False

    def session_for(self, database: Database) -> Session:
        if database.name not in self.sessions:
            self.sessions[database.name] = database.session()
        return self.sessions[database.name]

    def record(self, messages: list[Message]) -> None:
        """Messages to store and relay with this transaction."""
        self.messages.extend(messages)

    def store_only(self, messages: list[Message]) -> None:
        """Messages to append to the event store without dispatching them again."""
        self.stored_only.extend(messages)

    def __enter__(self) -> UnitOfWork:
        self.in_progress = True
        self._token = current_uow.set(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self.in_progress:
                self.commit()
            elif self.in_progress:
                self.rollback()
        finally:
            current_uow.reset(self._token)

    def commit(self) -> list[Message]:
        """Write everything; returns the committed messages (already handed to dispatch)."""
        domain, messages = self.domain, self.messages
        try:
            stored = self.stored_only + messages
            if stored:
                store = self.session_for(domain.event_store_database)
                store.append_events([event_record(m.to_dict()) for m in stored])
            relayed = [m for m in messages if not domain.is_sync(m)]
            if relayed:
                self.session_for(domain.outbox_database).write_outbox(outbox_rows(relayed, domain.name))
            # The outbox's database commits first (with the event store when they share it), a
            # separate event store (Message DB) last: its writes already ran and took their
            # locks, so a version conflict aborted everything above, and a failed business
            # commit rolls the events back instead of leaving events that never happened.
            store_name = domain.event_store_database.name
            for name in sorted(
                self.sessions, key=lambda n: (n != domain.outbox_database.name, n == store_name)
            ):
                self.sessions[name].commit()
        except BaseException:
            self.rollback()
            raise
        self._reset()
        domain.after_commit(messages)
        return messages

    def rollback(self) -> None:
        for session in self.sessions.values():
            with contextlib.suppress(Exception):  # a failed rollback must not mask the cause
                session.rollback()
        self._reset()

    def _reset(self) -> None:
        self.sessions, self.messages, self.stored_only, self.in_progress = {}, [], [], False
