"""Running one handler for one message: each method in its own unit of work with its inbox
row, re-run on a version conflict, `handle_error` on failure."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from tidings.domain.bus_base import SKIPPED, BusBase, Duplicate
from tidings.domain.context import current_message
from tidings.domain.envelope import Message
from tidings.domain.errors import (
    CommandExpiredError,
    ExpectedVersionError,
)
from tidings.domain.inbox import METHOD_SEP, mark_many
from tidings.domain.uow import UnitOfWork

log = logging.getLogger("tidings")


class PackMemberFailed(Exception):  # noqa: N818 - a signal to the pack's caller, not an error kind
    """One message of a pack raised: the pack's transaction rolled back; `index` says which."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(f"pack member {index} failed: {error!r}")
        self.index, self.error = index, error


class HandlerRunner(BusBase):
    """The bus's handler runs (`run_handler`, `run_subscriber`)."""

    if TYPE_CHECKING:  # the command-key steps are MessageBus's (domain/bus.py), the one bus built

        @staticmethod
        def _claim(uow: UnitOfWork, key: str | None, message: Message) -> None: ...
        @staticmethod
        def _record(uow: UnitOfWork, key: str | None, result: Any) -> None: ...

    def run_handler(
        self,
        handler: type,
        message: Message,
        *,
        store_message: bool = False,
        idempotency_key: str | None = None,
        command_key: str | None = None,
        sync_command: bool = False,
    ) -> Any:
        """Run one handler for one message; each of its methods for the message in its own unit
        of work (the reference's contract: a failing method does not undo another's work).

        With `idempotency_key`, inbox rows commit with the handler's effects: a handler with
        one method has the row (key, message id); with several, each applied method has
        (key#method, message id) and the handler's row follows once all are applied, so a
        retry re-runs only the methods that failed. A message already applied is skipped and
        SKIPPED is returned. Each unit is re-run on `ExpectedVersionError` (`version_retry`).
        Failures of several methods are raised together as an ExceptionGroup.

        `command_key`, `sync_command`: a sync `process()` (its idempotency key, its deadline).
        """
        obj = self.routes.decode(message)
        methods = self.routes.methods_for(handler, message.type)
        if len(methods) <= 1 or command_key is not None:
            # one unit: a command's idempotency key must record its whole result
            marks = [idempotency_key] if idempotency_key else []
            return self._run_unit(
                handler, message, obj, methods, marks, store_message, command_key, sync_command
            )
        if idempotency_key and self._applied(idempotency_key, message.id):
            return SKIPPED
        failures: list[Exception] = []
        result: Any = SKIPPED
        for index, name in enumerate(methods):
            marks = [f"{idempotency_key}{METHOD_SEP}{name}"] if idempotency_key else []
            try:
                outcome = self._run_unit(
                    handler, message, obj, [name], marks, store_message and index == 0, None, sync_command
                )
            except Exception as exc:  # noqa: BLE001 - the other methods still run; raised below
                failures.append(exc)
                continue
            if outcome is not SKIPPED:
                result = outcome
        if failures:
            if len(failures) == 1:
                raise failures[0]
            raise ExceptionGroup(f"{len(failures)} methods of {handler.__name__} failed", failures)
        if idempotency_key:
            # every method is applied: the handler's own row (what quiescence counts). Written
            # after the methods' units, so a crash in between only means one more pass that
            # skips every method and writes it.
            with self.context(), self.unit_of_work() as uow:
                uow.mark_processed(idempotency_key, message.id)
        return result

    def packable(self, handler: type, messages: list[Message]) -> bool:
        """Can `messages` run as one pack? Only when the handler has at most one method for
        each: several methods keep an inbox row each (`run_handler`), one unit per method."""
        return all(len(self.routes.methods_for(handler, m.type)) <= 1 for m in messages)

    def run_pack(self, handler: type, messages: list[Message], *, idempotency_key: str) -> set[str]:
        """Run `handler` for every message of a pack in ONE unit of work: one multi-row inbox
        insert skips what was applied before, then the new messages' effects, one commit.
        Returns the ids applied now (the rest were duplicates).

        If a message raises, the whole transaction rolls back (nothing of the pack is applied)
        and `PackMemberFailed` names it: the caller splits it out and runs the rest again as
        a pack. A version conflict counts as a failure here; the single-message task that the
        member is split out to re-runs it (`version_retry`)."""
        applied: set[str] = set()
        with self.context(), self.unit_of_work() as uow:
            new = mark_many(uow, idempotency_key, [m.id for m in messages])
            for index, message in enumerate(messages):
                if message.id not in new or message.id in applied:  # a duplicate applies once
                    continue
                try:
                    obj = self.routes.decode(message)
                    self._call(handler, message, obj, self.routes.methods_for(handler, message.type))
                except Exception as exc:
                    call_handle_error(handler, exc, message)
                    raise PackMemberFailed(index, exc) from exc
                applied.add(message.id)
        return applied

    def _applied(self, key: str, message_id: str) -> bool:
        """Has `key` applied `message_id` already? (Tried in a transaction that rolls back.)"""
        session = self.stores.outbox.session()
        try:
            return not session.mark_processed(key, message_id)
        finally:
            session.rollback()

    def _run_unit(
        self,
        handler: type,
        message: Message,
        obj: Any,
        methods: list[str],
        marks: list[str],
        store_message: bool,
        command_key: str | None,
        sync_command: bool,
    ) -> Any:
        """`methods` in one unit of work with inbox rows `marks`, re-run on a version conflict."""
        retry = 0
        while True:
            try:
                with self.context(), self.unit_of_work() as uow:
                    for mark in marks:
                        if not uow.mark_processed(mark, message.id):
                            log.debug("%s already applied %s; skipped", mark, message.id)
                            return SKIPPED
                    if sync_command:
                        self._claim(uow, command_key, message)
                        self._check_deadline(message)
                    if store_message:
                        uow.store_only([message])
                    result = self._call(handler, message, obj, methods)
                    self._record(uow, command_key, result)
                    return result
            except (Duplicate, CommandExpiredError):
                raise
            except ExpectedVersionError as exc:
                retry += 1
                delay = self._version_retry_delay(retry, message)
                if delay is None:
                    call_handle_error(handler, exc, message)
                    raise
                self.stats["version_retries"] += 1
                log.info(
                    "%s: version conflict on %s (%s); re-run %d in %.3fs",
                    handler.__name__,
                    message.id,
                    exc,
                    retry,
                    delay,
                )
                time.sleep(delay)
            except Exception as exc:
                call_handle_error(handler, exc, message)
                raise

    def _version_retry_delay(self, retry: int, message: Message) -> float | None:
        """Seconds before re-run `retry`, or None: retries off, used up, or past the deadline."""
        policy = self.version_retry
        if not policy.enabled or retry > policy.max_retries:
            return None
        delay = policy.delay(retry)
        if message.deadline is not None and datetime.now(UTC) + timedelta(seconds=delay) >= message.deadline:
            return None  # never sleep past the command's deadline
        return delay

    def _handle_within(self, uow: UnitOfWork, handler: type, message: Message, key: str | None = None) -> Any:
        """Run a sync command handler inside `uow`; its events dispatch once `uow` commits."""
        self._check_deadline(message)
        obj = self.routes.decode(message)
        uow.store_only([message])
        try:
            result = self._call(handler, message, obj, self.routes.methods_for(handler, message.type))
        except Exception as exc:
            call_handle_error(handler, exc, message)
            raise
        self._record(uow, key, result)
        return result

    def _call(self, handler: type, message: Message, obj: Any, methods: list[str]) -> Any:
        """The handler's `methods`, with `message` the cause of what they raise."""
        token = current_message.set(message)
        try:
            instance, result = handler(), None
            for name in methods:
                result = getattr(instance, name)(obj)
            return result
        finally:
            current_message.reset(token)

    def run_subscriber(
        self,
        subscriber: type,
        payload: dict[str, Any],
        *,
        idempotency_key: str | None = None,
        message_id: str | None = None,
    ) -> Any:
        """Run one subscriber for one external payload in its own unit of work."""
        try:
            with self.context(), self.unit_of_work() as uow:
                if idempotency_key and message_id and not uow.mark_processed(idempotency_key, message_id):
                    return SKIPPED
                instance = subscriber()
                methods = self.routes.subscriber_methods(subscriber, payload)
                if not methods:
                    return instance(payload)
                result = None
                for name in methods:
                    result = getattr(instance, name)(payload)
                return result
        except Exception as exc:
            call_handle_error(subscriber, exc, payload)
            raise


def call_handle_error(handler: type, exc: Exception, message: Any) -> None:
    """Give the handler its `handle_error(exc, message)` hook; a failure there is only logged."""
    try:
        handler.handle_error(exc, message)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - the hook must never take the pipeline down
        log.exception("%s.handle_error raised while handling %r", handler.__name__, exc)
