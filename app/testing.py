"""Testing helpers for users' test suites.

    # conftest.py
    pytest_plugins = ["tidings.app.testing"]

    @pytest.fixture
    def tidings_domain():
        return my_project.domain      # your Domain; init() is called for you

    def test_something(tidings_eager):   # the domain, async config, run eagerly in-process
        tidings_eager.process(PlaceOrder(...))

`tidings_eager` keeps the domain's async configuration but runs every relayed message
inline through Celery's eager mode, so the same handler code, retries, DLQ hook and inbox
run in the test process without a broker.

It never touches the databases in the user's domain.toml: every test runs on a temporary
SQLite database of its own (tables created, dropped afterwards), its dead-letter queues are
emptied before and after, and the domain's configuration is put back when the test ends. To
run on a throwaway PostgreSQL instead, override `tidings_database`:

    @pytest.fixture
    def tidings_database():
        return {"provider": "postgresql", "database_uri": "postgresql://localhost/myapp_test"}

(its tables are created before each test and dropped after it: never point it at data you
keep).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from celery import Celery

from tidings.app.bootstrap import create_celery_app
from tidings.tasks import dlq
from tidings.tasks.naming import async_handlers, queue_name

if TYPE_CHECKING:
    from tidings.domain.domain import Domain


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
def isolated_eager(domain: Domain, database: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """`domain` in eager mode on storage of its own (see the module docstring); its
    configuration and initialisation are put back afterwards."""
    saved = {key: copy.deepcopy(domain.config.get(key)) for key in ("databases", "event_store")}
    was_initialized = bool(getattr(domain, "initialized", False))
    with tempfile.TemporaryDirectory(prefix="tidings-test-") as folder:
        _isolated_config(domain.config, database, Path(folder))
        try:
            domain.init()
            domain.create_tables()
            celery = eager_app(domain)
            reset_dlq(celery, domain)
            try:
                with domain.domain_context():
                    yield domain
            finally:
                reset_dlq(celery, domain)
                domain.drop_tables()
                domain.dispose()
        finally:
            domain.config.update(saved)
            if was_initialized:
                domain.init()  # the user's own configuration again (init opens no connection)
            else:
                domain.initialized = False  # the next user of the domain initialises it again


@pytest.fixture
def tidings_database() -> Mapping[str, Any] | None:
    """The database `tidings_eager` runs on: None (the default) is a temporary SQLite per
    test; override it to return `{"provider": "postgresql", "database_uri": ...}` for a
    throwaway PostgreSQL."""
    return None


@pytest.fixture
def tidings_eager(tidings_domain: Any, tidings_database: Mapping[str, Any] | None) -> Any:
    """The user's domain (from the `tidings_domain` fixture), initialised, in eager mode, on
    an isolated database."""
    with isolated_eager(tidings_domain, tidings_database) as domain:
        yield domain
