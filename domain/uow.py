"""The unit of work: one transaction per database for aggregates, events and outbox rows."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from tidings.domain.context import current_uow
from tidings.domain.database import Database, Session, event_record
from tidings.domain.envelope import Message
from tidings.domain.ports import CommandKey, EventStore, Store
from tidings.domain.tracing import commit_span
from tidings.outbox.writer import outbox_rows


def _no_external(message: Message) -> Sequence[str]:
    return ()


@dataclass(frozen=True)
class Stores:
    """Where a unit of work writes its messages: the event store and the outbox's database."""

    event_store: EventStore
    outbox: Database
    owner: str  # the domain whose outbox rows these are (its relay claims only those)
    # The external brokers a relayed message also goes to (`published=True` events)
    external: Callable[[Message], Sequence[str]] = field(default=_no_external)


class UnitOfWork:
    """Stages changes; `commit()` writes them, the events and the outbox rows atomically.

    Messages become visible to handlers only after the commit succeeded; an exception
    inside `with domain.unit_of_work():` rolls everything back and dispatches nothing.
    Broker publishes made inside it are staged (`stage`) and sent once it committed:
    nothing leaves before the commit, and a rollback sends nothing.
    """

    def __init__(
        self,
        stores: Stores,
        is_sync: Callable[[Message], bool],
        committed: Callable[[list[Message]], None],
        owner: object = None,
    ) -> None:
        self.stores = stores
        self.is_sync = is_sync  # sync messages are dispatched inline, never written to the outbox
        self.committed = committed  # told what committed, once the transaction is durable
        self.owner = owner  # the bus this unit of work belongs to
        self.sessions: dict[str, Session] = {}
        self.messages: list[Message] = []  # stored, relayed or dispatched after commit
        self.stored_only: list[Message] = []  # stored in the event store only (handled already)
        self.staged: list[Callable[[], Any]] = []  # broker publishes, sent after the commit
        self._token: Any = None
        self.in_progress = False

    def session_for(self, database: Store) -> Session:
        if database.name not in self.sessions:
            self.sessions[database.name] = database.session()
        return self.sessions[database.name]

    def mark_processed(self, handler: str, message_id: str) -> bool:
        """The inbox row (handler, message id) in this transaction; False if already there."""
        return self.session_for(self.stores.outbox).mark_processed(handler, message_id)

    def claim_command_key(self, key: str, message_id: str) -> CommandKey | None:
        """Take the idempotency `key` for this command in this transaction (None: it is new),
        else what the first command with it recorded."""
        return self.session_for(self.stores.outbox).claim_command_key(self.stores.owner, key, message_id)

    def record_command_result(self, key: str, result: str) -> None:
        self.session_for(self.stores.outbox).record_command_result(self.stores.owner, key, result)

    def record(self, messages: list[Message]) -> None:
        """Messages to store and relay with this transaction."""
        self.messages.extend(messages)

    def store_only(self, messages: list[Message]) -> None:
        """Messages to append to the event store without dispatching them again."""
        self.stored_only.extend(messages)

    def stage(self, send: Callable[[], Any]) -> None:
        """A side effect to run once this transaction committed (a broker publish); dropped
        by a rollback."""
        self.staged.append(send)

    def __enter__(self) -> UnitOfWork:
        self.in_progress = True
        self._token = current_uow.set(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None and self.in_progress:
                self.commit()
            elif self.in_progress:
                self.rollback()
        finally:
            current_uow.reset(self._token)

    def commit(self) -> list[Message]:
        """Write everything; returns the committed messages (already handed to dispatch)."""
        with commit_span(self.stores.owner, self.messages) as self.messages:  # trace context
            return self._commit()

    def _commit(self) -> list[Message]:
        stores, messages = self.stores, self.messages
        try:
            stored = self.stored_only + messages
            if stored:
                store = self.session_for(stores.event_store)
                store.append_events([event_record(m.to_dict()) for m in stored])
            relayed = [m for m in messages if not self.is_sync(m)]
            if relayed:
                self.session_for(stores.outbox).write_outbox(
                    outbox_rows(relayed, stores.owner, external=stores.external)
                )
            # The outbox's database commits first (with the event store when they share it), a
            # separate event store (Message DB) last: its writes already ran and took their
            # locks, so a version conflict aborted everything above, and a failed business
            # commit rolls the events back instead of leaving events that never happened.
            outbox_name, store_name = stores.outbox.name, stores.event_store.name
            order = sorted(self.sessions, key=lambda n: (n != outbox_name, n == store_name))
            for name in order:  # every held-back write is sent (and may conflict) before a commit
                self.sessions[name].flush()
            for name in order:
                self.sessions[name].commit()
        except BaseException:
            self.rollback()
            raise
        staged = self.staged
        self._reset()
        self.committed(messages)
        self._send_staged(staged)
        return messages

    @staticmethod
    def _send_staged(staged: list[Callable[[], Any]]) -> None:
        """Send what was staged, in order, after the commit. Every one is tried; the first
        failure is raised afterwards, so the caller learns that a publish did not leave (the
        transaction itself is committed: that cannot be undone)."""
        failure: BaseException | None = None
        for send in staged:
            try:
                send()
            except Exception as exc:  # noqa: BLE001 - try the rest, raise the first below
                failure = failure or exc
        if failure is not None:
            raise failure

    def rollback(self) -> None:
        for session in self.sessions.values():
            with contextlib.suppress(Exception):  # a failed rollback must not mask the cause
                session.rollback()
        self._reset()

    def _reset(self) -> None:
        self.sessions, self.messages, self.stored_only, self.in_progress = {}, [], [], False
        self.staged = []
