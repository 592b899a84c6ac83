from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.bookshelf.support import configured
from tidings.examples.bookshelf.api import create_api


@pytest.fixture
def bookshelf(provider):
    """The bookshelf domain in sync mode on each provider, with fresh tables."""
    with configured(provider) as domain:
        yield domain


@pytest.fixture
def client(bookshelf):
    """The API over the sync bookshelf (the lifespan runs: startup creates the tables)."""
    with TestClient(create_api(bookshelf)) as test_client:
        yield test_client
