"""Tidings' pytest plugin: pytest loads it by itself once tidings is installed (the `pytest11`
entry point `tidings`); nothing to register in a conftest.py (`-p no:tidings` turns it off).

    # conftest.py: which domain the fixtures run (default: TIDINGS_DOMAIN, else ./domain.py)
    @pytest.fixture
    def tidings_domain():
        return my_project.domain

    def test_placing_an_order(tidings_eager):    # handlers run inline, through Celery's eager mode
        tidings_eager.process(PlaceOrder(...))

    def test_a_declined_payment_is_dead_lettered(tidings_worker):    # a real worker in a thread
        tidings_worker.domain.process(PlaceOrder(...))
        tidings_worker.wait_until_quiescent()
        (letter,) = tidings_worker.dead_letters("PaymentHandler")
        assert letter.error_type == "PaymentDeclined"

Both run on a temporary SQLite database per test, never on the databases of domain.toml;
override `tidings_database` to run on a throwaway PostgreSQL (its tables are dropped after
each test). This module imports the rest of Tidings only when a fixture is used, so a test
run that uses none pays nothing for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import pytest


@pytest.fixture
def tidings_domain() -> Any:
    """The domain under test: override it in your conftest.py; by default the one the
    `tidings` CLI would find (TIDINGS_DOMAIN, else domain.py or subdomain.py in the current
    directory)."""
    from tidings.app.loading import DomainNotFoundError, load_domain

    try:
        return load_domain(os.environ.get("TIDINGS_DOMAIN") or None)
    except DomainNotFoundError as exc:
        pytest.fail(
            f"tidings: define a `tidings_domain` fixture that returns your Domain, or set "
            f"TIDINGS_DOMAIN ({exc})",
            pytrace=False,
        )


@pytest.fixture
def tidings_database() -> Mapping[str, Any] | None:
    """The database the fixtures run on: None (the default) is a temporary SQLite per test;
    override it to return `{"provider": "postgresql", "database_uri": ...}` for a throwaway
    PostgreSQL."""
    return None


@pytest.fixture
def tidings_eager(tidings_domain: Any, tidings_database: Mapping[str, Any] | None) -> Iterator[Any]:
    """The domain, initialised, in eager mode (its async handlers run inline through Celery),
    on an isolated database; read its dead letters with `tidings.app.testing.dead_letters`."""
    from tidings.app.testing import isolated_eager

    with isolated_eager(tidings_domain, tidings_database) as domain:
        yield domain


@pytest.fixture
def tidings_worker(tidings_domain: Any, tidings_database: Mapping[str, Any] | None) -> Iterator[Any]:
    """An `EmbeddedWorker` (app/embedded_worker.py): the domain on an isolated database and
    an in-process broker, with a real Celery worker on all its queues in a thread. Commit
    through `tidings_worker.domain`, then `wait_until_quiescent()` and `dead_letters()`."""
    from tidings.app.embedded_worker import embedded_worker

    with embedded_worker(tidings_domain, tidings_database) as worker:
        yield worker
