"""The message bus: processing a command, publishing events, answering a query.

It sits beside the registry (cosmicpython's message bus): `Domain` registers and validates,
`domain.init()` builds one bus, and everything that handles messages goes through it. Its
layers: domain/bus_base.py (units of work, after a commit, the sync drain) and
domain/running.py (one handler for one message).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tidings.domain.bus_base import SKIPPED, Duplicate, Engine, Processing, VersionRetry
from tidings.domain.envelope import Message
from tidings.domain.errors import (
    DuplicateCommandError,
    IncorrectUsageError,
)
from tidings.domain.priority import processing_priority
from tidings.domain.registry import query_targets
from tidings.domain.running import HandlerRunner, call_handle_error
from tidings.domain.uow import UnitOfWork

log = logging.getLogger("tidings")

__all__ = ["SKIPPED", "Engine", "MessageBus", "Processing", "VersionRetry", "call_handle_error"]


@dataclass(frozen=True)
class CommandOptions:
    """How `process()` treats one command: its idempotency key and whether a duplicate raises."""

    idempotency_key: str | None = None
    raise_on_duplicate: bool = False


class MessageBus(HandlerRunner):
    """Runs handlers for messages. One per initialised domain."""

    def process(
        self,
        command: Any,
        asynchronous: bool | None = None,
        idempotency_key: str | None = None,
        raise_on_duplicate: bool = False,
        *,
        correlation_id: str | None = None,
        deadline: datetime | float | None = None,
        timeout: float | None = None,
        priority: int | None = None,
    ) -> Any:
        """Handle a command: inline in sync mode (returns the handler's value), else via the
        outbox (returns the command's message id at once).

        `idempotency_key`: a key already taken returns the first command's result (sync) or
        message id (async) without processing again, or raises DuplicateCommandError when
        `raise_on_duplicate`. The key commits with the command, so a command that failed
        leaves it free. `correlation_id` replaces the inherited one. `deadline` (a datetime
        or a Unix time) or `timeout` (seconds from now), else the handler's `timeout`, else
        `command_default_timeout`: a command handled later is skipped (sync: CommandExpiredError).
        `priority` (e.g. `Priority.BULK`) tags the command and what its handler raises; by
        default the `processing_priority()` block's, else the handled message's (domain/priority.py).
        """
        if priority is not None:
            with processing_priority(priority):
                return self.process(
                    command,
                    asynchronous,
                    idempotency_key,
                    raise_on_duplicate,
                    correlation_id=correlation_id,
                    deadline=deadline,
                    timeout=timeout,
                )
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 255:
            raise IncorrectUsageError("idempotency_key must be 1 to 255 characters")
        message = self.envelopes.command(
            command, correlation_id=correlation_id, idempotency_key=idempotency_key
        )
        handlers = self.routes.handlers_for(message)
        if not handlers:
            raise IncorrectUsageError(f"no command handler for {type(command).__name__}")
        expires = self._deadline(handlers[0], deadline, timeout)
        if expires is not None:
            message = command._message = message.model_copy(update={"deadline": expires})
        options = CommandOptions(idempotency_key, raise_on_duplicate)
        run_async = (self.processing.commands == "async") if asynchronous is None else asynchronous
        try:
            return self._process(message, handlers[0], run_async, options)
        except Duplicate as dup:
            if raise_on_duplicate:
                raise DuplicateCommandError(dup.key, dup.message_id, dup.result) from None
            return dup.result

    def _process(self, message: Message, handler: type, run_async: bool, options: CommandOptions) -> Any:
        key = options.idempotency_key
        uow = self.active_uow()
        if uow is not None:
            # Called from a handler, a subscriber or an explicit unit of work: the command joins
            # that transaction, so it commits (and is deduplicated) with the caller's work, and
            # SQLite never waits on a second write transaction opened by the same thread.
            self._claim(uow, key, message)
            if run_async:
                uow.record([message])
                self._record(uow, key, message.id)
                return message.id
            return self._handle_within(uow, handler, message, key)
        if run_async:
            with self.unit_of_work() as own:
                self._claim(own, key, message)
                own.record([message])
                self._record(own, key, message.id)
            return message.id
        with self._draining() as queue:
            result = self.run_handler(
                handler, message, store_message=True, command_key=key, sync_command=True
            )
            self._drain(queue)
        return result

    def _deadline(
        self, handler: type, deadline: datetime | float | None, timeout: float | None
    ) -> datetime | None:
        """The reference's order: `deadline`, `timeout`, the handler's `timeout`,
        `command_default_timeout`; None leaves the inherited deadline (if any)."""
        if isinstance(deadline, datetime):
            return deadline if deadline.tzinfo else deadline.replace(tzinfo=UTC)
        if deadline is not None:
            return datetime.fromtimestamp(float(deadline), UTC)
        seconds = timeout
        if seconds is None:
            seconds = handler.meta_.get("timeout")  # type: ignore[attr-defined]
        if seconds is None:
            seconds = self.command_timeout
        return None if seconds is None else datetime.now(UTC) + timedelta(seconds=float(seconds))

    @staticmethod
    def _claim(uow: UnitOfWork, key: str | None, message: Message) -> None:
        """Take the command's idempotency key in `uow`; a key already taken unwinds it."""
        if key is None:
            return
        first = uow.claim_command_key(key, message.id)
        if first is not None:
            log.debug("idempotency key %r already taken by %s; not processed again", key, first.message_id)
            result = json.loads(first.result) if first.result is not None else None
            raise Duplicate(key, first.message_id, result)

    @staticmethod
    def _record(uow: UnitOfWork, key: str | None, result: Any) -> None:
        # what a duplicate returns: the result as JSON (a value JSON cannot hold as its str())
        if key is not None:
            uow.record_command_result(key, json.dumps(result, default=str))

    def publish(self, events: Any) -> list[Message]:
        """Publish events raised outside an aggregate; they commit with the current unit of work."""
        events = events if isinstance(events, list | tuple) else [events]
        messages = [self.envelopes.event(e) for e in events]
        uow = self.active_uow()
        if uow is not None:
            uow.record(messages)
        else:
            with self.unit_of_work() as own:
                own.record(messages)
        return messages

    def dispatch(self, query: Any) -> Any:
        """Run the query handler for this query and return its result."""
        self.envelopes._check_registered(query, "query")
        for handler in self.routes.names.registry["query_handler"].values():
            method = next(
                (
                    m
                    for q, m in query_targets(handler).items()
                    if q is type(query) or q == type(query).__name__
                ),
                None,
            )
            if method:
                with self.context():
                    return getattr(handler(), method)(query)
        raise IncorrectUsageError(f"no query handler for {type(query).__name__}")
