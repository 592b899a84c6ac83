"""The bus's state and what follows a commit: units of work, the engine that wakes the
relay, and the breadth-first drain of sync processing (domain/bus.py builds on it)."""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from tidings.domain.context import current_uow
from tidings.domain.envelope import Message, MessageKind
from tidings.domain.errors import (
    CommandExpiredError,
)
from tidings.domain.messages import Envelopes
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


class Duplicate(Exception):
    """Internal: the command's idempotency key was taken; unwinds its unit of work."""

    def __init__(self, key: str, message_id: str, result: Any) -> None:
        super().__init__(key)
        self.key, self.message_id, self.result = key, message_id, result


class BusBase:
    """Units of work, the async engine and the sync drain, shared by the bus's layers."""

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

    def unit_of_work(self) -> UnitOfWork:
        return UnitOfWork(self.stores, self.processing.is_sync, self.committed, owner=self)

    def active_uow(self) -> UnitOfWork | None:
        """The unit of work in progress on this bus in this context, if any."""
        uow = current_uow.get()
        return uow if uow is not None and uow.in_progress and uow.owner is self else None

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

    def _check_deadline(self, message: Message) -> None:
        if message.expired():
            self.stats["commands_expired"] += 1
            raise CommandExpiredError(
                f"{message.type} {message.id} expired at {message.deadline.isoformat()}; not handled"  # type: ignore[union-attr]
            )

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
        raise NotImplementedError  # domain/running.py


class _Nested(deque[Message]):
    """Marks a queue borrowed from an outer dispatch loop."""

    def __init__(self, outer: deque[Message]) -> None:
        super().__init__()
        self.outer = outer

    def extend(self, items: Iterable[Message]) -> None:
        self.outer.extend(items)
