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
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from tidings.app.bootstrap import create_celery_app


def eager_app(domain: Any) -> Celery:
    """A Celery app for `domain` that runs tasks inline (failures do not propagate: retries
    and the DLQ hook run as on a worker)."""
    return create_celery_app(
        domain, task_always_eager=True, task_eager_propagates=False, broker_url="memory://"
    )


@pytest.fixture
def tidings_eager(tidings_domain: Any) -> Any:
    """The user's domain (from the `tidings_domain` fixture), initialised, in eager mode."""
    if not tidings_domain.initialized:
        tidings_domain.init()
    tidings_domain.create_tables()
    eager_app(tidings_domain)
    with tidings_domain.domain_context():
        yield tidings_domain
    tidings_domain.drop_tables()
