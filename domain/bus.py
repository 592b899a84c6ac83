"""The message bus: processing a command, publishing events, running one handler for one
message in its own unit of work, and the breadth-first drain of sync processing.

It sits beside the registry (cosmicpython's message bus): `Domain` registers and validates,
`domain.init()` builds one bus, and everything that handles messages goes through it.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from tidings.domain.context import current_message, current_uow
from tidings.domain.envelope import Message, MessageKind
from tidings.domain.errors import (
    CommandExpiredError,
    DuplicateCommandError,
    ExpectedVersionError,
    IncorrectUsageError,
)
from tidings.domain.inbox import METHOD_SEP
from tidings.domain.messages import Envelopes
from tidings.domain.registry import query_targets
from tidings.domain.routing import Routes
from tidings.domain.uow import Stores, UnitOfWork

log = logging.getLogger("tidings")

SKIPPED = object()  # run_handler's result for a message this handler already applied
_sync_queue: ContextVar[deque[Message] | None] = ContextVar("tidings_sync_queue", default=None)


class Engine(Protocol):
    """What the bus needs from an async engine (the Celery runtime provides one)."""

    def committed(self, messages: list[Message]) -> None:
        """Called after a commit that wrote outbox rows: wake the relay."""

    def deliver(
        self, broker: Any, stream: str, message_id: str, message: dict[str, Any], subscribers: list[type]
    ) -> None:
        """Hand an external message just published on `broker` to these subscribers."""


@dataclass(frozen=True)
class Processing:
    """How each kind of message is processed: inline (`sync`) or through the outbox (`async`)."""

    events: str = "async"
    commands: str = "async"
    external: str = "async"

    def is_sync(self, message: Message) -> bool:
        mode = self.events if message.kind == MessageKind.EVENT else self.commands
        return mode == "sync"


@dataclass(frozen=True)
class VersionRetry:
    """`[server.version_retry]`: re-runs of a handler unit that met `ExpectedVersionError`."""

    enabled: bool = True
    max_retries: int = 3
    base_delay: float = 0.05
    max_delay: float = 1.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before re-run number `retry` (1, 2, ...): exponential, capped."""
        return min(self.max_delay, self.base_delay * 2 ** (retry - 1))


@dataclass(frozen=True)
class CommandOptions:
    """How `process()` treats one command: its idempotency key and whether a duplicate raises."""

    idempotency_key: str | None = None
    raise_on_duplicate: bool = False


class _Duplicate(Exception):
    """Internal: the command's idempotency key was taken; unwinds its unit of work."""

    def __init__(self, key: str, message_id: str, result: Any) -> None:
        super().__init__(key)
        self.key, self.message_id, self.result = key, message_id, result


class MessageBus:
    """Runs handlers for messages. One per initialised domain."""

    def __init__(
        self,
        routes: Routes,
        stores: Stores,
        processing: Processing,
        context: Callable[[], AbstractContextManager[Any]],
        engine_loader: Callable[[], Engine | None] | None = None,
        version_retry: VersionRetry | None = None,
        command_timeout: float | None = None,
    ) -> None:
        self.routes = routes
        self.envelopes = Envelopes(routes.names)
        self.stores = stores
        self.processing = processing
        self.context = context  # enters the domain's context (for `current_domain`)
        self.version_retry = version_retry or VersionRetry()
        self.command_timeout = command_timeout  # `command_default_timeout`, seconds
        # Outcomes the bus itself decides: `commands_expired`, `version_retries`
        self.stats: Counter[str] = Counter()
        self._engine: Engine | None = None
        self._engine_loader = engine_loader

    # ---- the engine ---------------------------------------------------------------------------
    @property
    def engine(self) -> Engine | None:
        return self._engine

    def attach_engine(self, engine: Engine | None) -> None:
        """The async engine this bus hands committed messages to (None detaches it)."""
        self._engine, self._engine_loader = engine, None

    def _engine_for_commit(self) -> Engine | None:
        # A process that never built the Celery runtime (an API process, a script) still
        # wakes the relay: the engine is loaded on its first async commit.
        if self._engine is None and self._engine_loader is not None:
            loader, self._engine_loader = self._engine_loader, None
            try:
                self._engine = loader()
            except Exception:  # noqa: BLE001 - the rows are committed; beat relays them
                log.warning("could not start the async engine; beat will relay the outbox", exc_info=True)
        return self._engine

    # ---- units of work ------------------------------------------------------------------------
    def unit_of_work(self) -> UnitOfWork:
        return UnitOfWork(self.stores, self.processing.is_sync, self.committed, owner=self)

    def active_uow(self) -> UnitOfWork | None:
        """The unit of work in progress on this bus in this context, if any."""
        uow = current_uow.get()
        return uow if uow is not None and uow.in_progress and uow.owner is self else None

    # ---- entry points -------------------------------------------------------------------------
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
    ) -> Any:
        """Handle a command: inline in sync mode (returns the handler's value), else via the
        outbox (returns the command's message id at once).

        `idempotency_key`: a key already taken returns the first command's result (sync) or
        message id (async) without processing again, or raises DuplicateCommandError when
        `raise_on_duplicate`. The key commits with the command, so a command that failed
        leaves it free. `correlation_id` replaces the inherited one. `deadline` (a datetime
        or a Unix time) or `timeout` (seconds from now), else the handler's `timeout`, else
        `command_default_timeout`: a command handled later is skipped (sync: CommandExpiredError).
        """
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
        except _Duplicate as dup:
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
            raise _Duplicate(key, first.message_id, result)

    @staticmethod
    def _record(uow: UnitOfWork, key: str | None, result: Any) -> None:
        # what a duplicate returns: the result as JSON (a value JSON cannot hold as its str())
        if key is not None:
            uow.record_command_result(key, json.dumps(result, default=str))

    def _check_deadline(self, message: Message) -> None:
        if message.expired():
            self.stats["commands_expired"] += 1
            raise CommandExpiredError(
                f"{message.type} {message.id} expired at {message.deadline.isoformat()}; not handled"  # type: ignore[union-attr]
            )

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

    # ---- after a commit -----------------------------------------------------------------------
    def committed(self, messages: list[Message]) -> None:
        """Called by the unit of work once its transaction committed."""
        if not messages:
            return
        sync = [m for m in messages if self.processing.is_sync(m)]
        relayed = [m for m in messages if not self.processing.is_sync(m)]
        engine = self._engine_for_commit() if relayed else None
        if engine is not None:
            try:
                engine.committed(relayed)
            except Exception:  # noqa: BLE001 - committed rows are relayed by the next tick
                log.warning(
                    "could not kick the relay; the next beat tick will pick the rows up", exc_info=True
                )
        if sync:
            with self._draining() as queue:
                queue.extend(sync)
                self._drain(queue)

    @contextmanager
    def _draining(self) -> Iterator[deque[Message]]:
        """The breadth-first queue of sync messages; the outermost caller owns and drains it."""
        queue = _sync_queue.get()
        if queue is not None:
            yield _Nested(queue)
            return
        queue = deque()
        token = _sync_queue.set(queue)
        try:
            yield queue
        finally:
            _sync_queue.reset(token)

    def _drain(self, queue: deque[Message]) -> None:
        if isinstance(queue, _Nested):
            return  # the outer loop drains, so nested handling stays breadth-first
        while queue:
            message = queue.popleft()
            for handler in self.routes.handlers_for(message):
                self.run_handler(handler, message)

    # ---- running handlers ---------------------------------------------------------------------
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
            except (_Duplicate, CommandExpiredError):
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


class _Nested(deque[Message]):
    """Marks a queue borrowed from an outer dispatch loop."""

    def __init__(self, outer: deque[Message]) -> None:
        super().__init__()
        self.outer = outer

    def extend(self, items: Iterable[Message]) -> None:
        self.outer.extend(items)


def call_handle_error(handler: type, exc: Exception, message: Any) -> None:
    """Give the handler its `handle_error(exc, message)` hook; a failure there is only logged."""
    try:
        handler.handle_error(exc, message)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - the hook must never take the pipeline down
        log.exception("%s.handle_error raised while handling %r", handler.__name__, exc)
