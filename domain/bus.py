"""The message bus: processing a command, publishing events, running one handler for one
message in its own unit of work, and the breadth-first drain of sync processing.

It sits beside the registry (cosmicpython's message bus): `Domain` registers and validates,
`domain.init()` builds one bus, and everything that handles messages goes through it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from tidings.domain.context import current_message, current_uow
from tidings.domain.envelope import Message, MessageKind
from tidings.domain.errors import IncorrectUsageError
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


class MessageBus:
    """Runs handlers for messages. One per initialised domain."""

    def __init__(
        self,
        routes: Routes,
        stores: Stores,
        processing: Processing,
        context: Callable[[], AbstractContextManager[Any]],
        engine_loader: Callable[[], Engine | None] | None = None,
    ) -> None:
        self.routes = routes
        self.envelopes = Envelopes(routes.names)
        self.stores = stores
        self.processing = processing
        self.context = context  # enters the domain's context (for `current_domain`)
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
    def process(self, command: Any, asynchronous: bool | None = None) -> Any:
        """Handle a command: inline in sync mode (returns the handler's value), else via the
        outbox (returns the command's message id at once)."""
        message = self.envelopes.command(command)
        handlers = self.routes.handlers_for(message)
        if not handlers:
            raise IncorrectUsageError(f"no command handler for {type(command).__name__}")
        run_async = (self.processing.commands == "async") if asynchronous is None else asynchronous
        uow = self.active_uow()
        if uow is not None:
            # Called from a handler, a subscriber or an explicit unit of work: the command joins
            # that transaction, so it commits (and is deduplicated) with the caller's work, and
            # SQLite never waits on a second write transaction opened by the same thread.
            if run_async:
                uow.record([message])
                return message.id
            return self._handle_within(uow, handlers[0], message)
        if run_async:
            with self.unit_of_work() as own:
                own.record([message])
            return message.id
        with self._draining() as queue:
            result = self.run_handler(handlers[0], message, store_message=True)
            self._drain(queue)
        return result

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
    ) -> Any:
        """Run one handler for one message in its own unit of work.

        With `idempotency_key`, an inbox row (key, message id) commits with the handler's
        effects; a message already applied is skipped and SKIPPED is returned.
        """
        obj = self.routes.decode(message)
        try:
            with self.context(), self.unit_of_work() as uow:
                if idempotency_key and not uow.mark_processed(idempotency_key, message.id):
                    log.debug("%s already applied %s; skipped", idempotency_key, message.id)
                    return SKIPPED
                if store_message:
                    uow.store_only([message])
                return self._call(handler, message, obj)
        except Exception as exc:
            call_handle_error(handler, exc, message)
            raise

    def _handle_within(self, uow: UnitOfWork, handler: type, message: Message) -> Any:
        """Run a sync command handler inside `uow`; its events dispatch once `uow` commits."""
        obj = self.routes.decode(message)
        uow.store_only([message])
        try:
            return self._call(handler, message, obj)
        except Exception as exc:
            call_handle_error(handler, exc, message)
            raise

    def _call(self, handler: type, message: Message, obj: Any) -> Any:
        """The handler's methods for this message, with `message` the cause of what they raise."""
        token = current_message.set(message)
        try:
            instance, result = handler(), None
            for name in self.routes.methods_for(handler, message.type):
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
