"""How a handler task's failure is classified, and what each kind costs.

Three kinds, decided from the exception (and its causes) when a handler task raises:

- **final** — a `BusinessRuleError`, a type in the handler's `throws=(...)`, or invalid data
  (`InvalidMessageError`, `ValidationError`): the same message fails the same way on every
  attempt. Not retried; the `task_failure` hook dead-letters it at once (or drops it when
  the handler's `enable_dlq` is off).
- **transient** — the infrastructure, not the handler: a database disconnect, a locked
  SQLite file, a broker or socket connection error (`is_transient`). Retried with backoff
  until `[server.transient_retry] deadline_seconds` after the message's first such fault,
  *without* spending the handler's `max_retries`: the message is sent again with Celery's
  `retries` counter unchanged, and the fault count and first-fault time travel in the
  message's headers (`HEADER`). Past the deadline (or its `max_retries`) it is an ordinary
  failure.
- **ordinary** — everything else: Celery's own `autoretry_for` retries it per the handler's
  `max_retries` / `retry_delay_seconds` / backoff, then the hook dead-letters it.

On Redis a retry's countdown is held unacknowledged in the worker until due, so the longest
countdown (here `max_delay_seconds`) must stay below the visibility timeout: see
`tidings.app.factory._check_recovery_bound`.
"""

from __future__ import annotations

import functools
import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from tidings.domain.errors import BusinessRuleError, ConfigurationError, InvalidMessageError, ValidationError
from tidings.domain.settings import TransientRetrySettings

log = logging.getLogger("tidings.tasks")

HEADER = "tidings_transient"  # {"since": epoch seconds of the first fault, "count": retries}

# Invalid data and broken domain rules fail the same way on every attempt: no retry.
NOT_RETRIED: tuple[type[BaseException], ...] = (InvalidMessageError, ValidationError, BusinessRuleError)


def _transient_types() -> tuple[type[BaseException], ...]:
    """Exception types that are transient whatever their message (imported lazily: each
    driver is optional)."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    from kombu.exceptions import OperationalError as KombuOperationalError
    from sqlalchemy.exc import DisconnectionError

    types += [KombuOperationalError, DisconnectionError]
    try:
        import redis.exceptions

        types += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    except ImportError:  # pragma: no cover - redis is a dependency, but a broker-less install
        pass
    try:
        import psycopg2  # type: ignore[import-untyped]  # no stubs installed; only its error classes are read

        # OperationalError: connection refused/closed, server shutting down, serialization
        # failure and deadlock (TransactionRollbackError) - all worth another attempt.
        types.append(psycopg2.OperationalError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "disk i/o error")


def _one_is_transient(exc: BaseException, extra: tuple[type[BaseException], ...]) -> bool:
    import sqlite3

    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    if isinstance(exc, _TRANSIENT + extra):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:  # SQLAlchemy saw a disconnect and dropped the connection
            return True
        if isinstance(exc, OperationalError | InterfaceError):
            return _one_is_transient(exc.orig, extra) if exc.orig is not None else False
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return any(marker in text for marker in _SQLITE_TRANSIENT)
    return False


_TRANSIENT = _transient_types()


def is_transient(exc: BaseException, extra: tuple[type[BaseException], ...] = ()) -> bool:
    """True when `exc`, or an exception it was raised from, is a fault of the infrastructure
    (see the module docstring). A SQLAlchemy `OperationalError` counts only for a disconnect
    or a driver error that is one (psycopg2 `OperationalError`, SQLite "database is locked"):
    "no such table" is a bug, not a blip."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if _one_is_transient(current, extra):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def dotted_types(names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    """`"package.module.ErrorName"` -> the class; a name that is not an exception class is a
    configuration error, reported at start-up rather than when the fault happens."""
    out: list[type[BaseException]] = []
    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            found = getattr(importlib.import_module(module or "builtins"), attr)
        except (ImportError, AttributeError, ValueError):
            raise ConfigurationError(
                f"[server.transient_retry] exceptions: {name!r} cannot be imported"
            ) from None
        if not (isinstance(found, type) and issubclass(found, BaseException)):
            raise ConfigurationError(
                f"[server.transient_retry] exceptions: {name!r} is not an exception class"
            )
        out.append(found)
    return tuple(out)


def handler_throws(handler: type) -> tuple[type[BaseException], ...]:
    """A handler's `throws=` option as a tuple of exception classes (one class is accepted)."""
    declared = (getattr(handler, "meta_", None) or {}).get("throws") or ()
    declared = declared if isinstance(declared, tuple | list) else (declared,)
    for kind in declared:
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            raise ConfigurationError(f"{handler.__name__}: throws= takes exception classes, got {kind!r}")
    return tuple(declared)


@dataclass(frozen=True)
class TransientPolicy:
    """`[server.transient_retry]`, resolved once per runtime."""

    settings: TransientRetrySettings
    extra: tuple[type[BaseException], ...] = ()

    @classmethod
    def from_settings(cls, settings: TransientRetrySettings) -> TransientPolicy:
        return cls(settings, dotted_types(settings.exceptions))

    def delay(self, count: int) -> float:
        """The countdown before transient retry number `count + 1`."""
        s = self.settings
        if s.backoff == "fixed":
            raw = s.base_delay_seconds
        elif s.backoff == "linear":
            raw = s.base_delay_seconds * (count + 1)
        else:
            raw = s.base_delay_seconds * (2**count)
        return min(raw, s.max_delay_seconds)


def final_errors(handler: type) -> tuple[type[BaseException], ...]:
    """What a handler task never retries: `NOT_RETRIED` plus the handler's `throws`.
    (Given to Celery as `dont_autoretry_for`.)"""
    return NOT_RETRIED + handler_throws(handler)


def with_transient_retry(
    body: Callable[..., Any], policy: TransientPolicy, final: tuple[type[BaseException], ...]
) -> Callable[..., Any]:
    """Wrap a bound task body: a transient fault is sent again with a countdown without
    spending a retry; anything else propagates to Celery's `autoretry_for` as before."""

    @functools.wraps(body)
    def run(task: Task, *args: Any, **kwargs: Any) -> Any:
        try:
            return body(task, *args, **kwargs)
        except (Retry, Ignore, Reject):
            raise
        except final:
            raise
        except Exception as exc:
            if policy.settings.enabled and is_transient(exc, policy.extra):
                resend_transient(task, exc, policy)  # raises Retry, unless past the deadline
            raise

    return run


def transient_state(task: Task) -> tuple[float | None, int]:
    """(first fault time, transient retries so far) of the message being run."""
    headers = task.request.headers or {}
    state = headers.get(HEADER) or getattr(task.request, HEADER, None) or {}
    if not isinstance(state, dict):
        return None, 0
    since = state.get("since")
    return (float(since) if isinstance(since, int | float) else None), int(state.get("count") or 0)


def resend_transient(task: Task, exc: BaseException, policy: TransientPolicy) -> None:
    """Send the running message again after a backoff, Celery's `retries` unchanged, and raise
    `Retry` (the worker then acknowledges the original). Returns (does nothing) when past the
    deadline or the cap, and in eager mode (no broker to hold a countdown: the ordinary
    retries apply there)."""
    request = task.request
    if request.is_eager or request.called_directly:
        return
    now = time.time()
    since, count = transient_state(task)
    since = now if since is None else since
    s = policy.settings
    if now - since >= s.deadline_seconds or (s.max_retries is not None and count >= s.max_retries):
        log.warning(
            "%s: transient fault past its deadline (%d retries since %.0fs ago); counted as a failure: %r",
            task.name,
            count,
            now - since,
            exc,
        )
        return
    delay = policy.delay(count)
    headers = {**(request.headers or {}), HEADER: {"since": since, "count": count + 1}}
    signature = task.signature_from_request(
        request, countdown=delay, retries=request.retries, headers=headers
    )
    log.warning(
        "%s: transient fault (%s: %s); retry %d in %.1fs, not counted against max_retries",
        task.name,
        type(exc).__name__,
        exc,
        count + 1,
        delay,
    )
    try:
        signature.apply_async()
    except Exception as publish_error:  # noqa: BLE001 - the broker itself is down
        # Give the message back instead of dropping it (what `Task.retry` would do): on
        # Redis it comes back at once, or after the visibility timeout if the connection is gone.
        raise Reject(publish_error, requeue=True) from exc
    raise Retry(exc=exc, when=delay, sig=signature)
