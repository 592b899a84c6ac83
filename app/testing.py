"""Testing helpers for users' test suites; the fixtures are in app/pytest_plugin.py, which
pytest loads by itself once tidings is installed (entry point `pytest11`).

`isolated_eager(domain)` keeps the domain's async configuration but runs every relayed
message inline through Celery's eager mode, so the same handler code, retries, DLQ hook and
inbox run in the test process without a broker. `embedded_worker(domain)`
(app/embedded_worker.py) runs them on a real Celery worker in a thread instead.

Both never touch the databases in the user's domain.toml: the domain runs on a temporary
SQLite database of its own (tables created, dropped afterwards), or on the `database` given
(a throwaway PostgreSQL: its tables are dropped afterwards), its dead-letter queues are
emptied before and after, and the domain's configuration and engine are put back when the
test ends. `dead_letters(domain)` reads what was dead-lettered meanwhile.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Celery

from tidings.app.bootstrap import create_celery_app
from tidings.tasks import dlq
from tidings.tasks.naming import async_handlers, queue_name

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

__all__ = ["DeadLetter", "dead_letters", "eager_app", "isolated", "isolated_eager", "reset_dlq"]


def eager_app(domain: Domain) -> Celery:
    """A Celery app for `domain` that runs tasks inline (failures do not propagate: retries
    and the DLQ hook run as on a worker)."""
    return create_celery_app(
        domain, task_always_eager=True, task_eager_propagates=False, broker_url="memory://"
    )


def _isolated_config(config: dict[str, Any], database: Mapping[str, Any] | None, folder: Path) -> None:
    """Point every named database and the event store of `config` at the test's own storage:
    `database` for all of them, else one temporary SQLite file per named database."""
    names = list(config.get("databases") or {"default": {}}) or ["default"]
    if database is not None:
        config["databases"] = {name: dict(database) for name in names}
    else:
        config["databases"] = {
            name: {"provider": "sqlite", "database_uri": f"sqlite:///{folder / name}.db"} for name in names
        }
    # The event store follows the default database (a message_db store becomes that too).
    config["event_store"] = {"provider": config["databases"]["default"]["provider"]}


def reset_dlq(celery: Celery, domain: Domain) -> None:
    """Empty the dead-letter queue of every handler of `domain` (the eager app's memory broker
    keeps them for the whole process otherwise)."""
    for handler in async_handlers(domain):
        dlq.purge(celery, queue_name(domain, handler))


@contextmanager
def isolated(
    domain: Domain, database: Mapping[str, Any] | None = None, broker: Mapping[str, Any] | None = None
) -> Iterator[Domain]:
    """`domain` initialised on storage of its own (and on `broker` as its default broker, if
    given), tables created and dropped afterwards; its configuration, engine and
    initialisation are put back afterwards."""
    keys = ("databases", "event_store", "brokers")
    saved = {key: copy.deepcopy(domain.config[key]) for key in keys if key in domain.config}
    engine = domain.engine
    was_initialized = bool(getattr(domain, "initialized", False))
    with tempfile.TemporaryDirectory(prefix="tidings-test-") as folder:
        _isolated_config(domain.config, database, Path(folder))
        if broker is not None:
            domain.config["brokers"] = {**(domain.config.get("brokers") or {}), "default": dict(broker)}
        try:
            domain.init()
            domain.create_tables()
            try:
                yield domain
            finally:
                domain.drop_tables()
                domain.dispose()
        finally:
            for key in keys:
                domain.config.pop(key, None)
            domain.config.update(saved)
            if domain.initialized:
                domain.attach_engine(engine)  # not the test's Celery app: it is gone
            if was_initialized:
                domain.init()  # the user's own configuration again (init opens no connection)
            else:
                domain.initialized = False  # the next user of the domain initialises it again


@contextmanager
def isolated_eager(domain: Domain, database: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """`domain` in eager mode on storage of its own (see the module docstring)."""
    with isolated(domain, database):
        celery = eager_app(domain)
        reset_dlq(celery, domain)
        try:
            with domain.domain_context():
                yield domain
        finally:
            reset_dlq(celery, domain)


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered delivery, as a test reads it (`entry`: everything recorded)."""

    queue: str
    message_id: str | None
    error_type: str | None
    error_message: str | None
    attempts: int | None
    body: Any
    entry: dict[str, Any]


def dead_letters(domain: Domain, handler: type | str | None = None) -> list[DeadLetter]:
    """What `domain` dead-lettered, oldest first: every handler's, or one handler's (its
    class or its name)."""
    queue = None
    if handler is not None:
        found = [h for h in async_handlers(domain) if h is handler or h.__name__ == handler]
        if not found:
            known = sorted(h.__name__ for h in async_handlers(domain))
            raise LookupError(f"no async handler {handler!r} in {domain.name} (known: {known})")
        queue = queue_name(domain, found[0])
    return [
        DeadLetter(
            queue=e["queue"],
            message_id=e.get("message_id"),
            error_type=e.get("error_type"),
            error_message=e.get("error_message"),
            attempts=e.get("attempts"),
            body=e.get("body"),
            entry=e,
        )
        for e in domain.storage.dead_letters.entries(queue, limit=100_000)
    ]
