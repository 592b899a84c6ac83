from __future__ import annotations

import os
import uuid
from urllib.parse import urlparse, urlunparse

import pytest
import sqlalchemy as sa

from tests.services import DATABASE_URL, require_postgres
from tidings.domain.sql import normalize_uri


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    require_postgres()
    name = f"tidings_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(normalize_uri(DATABASE_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    parsed = urlparse(DATABASE_URL)
    yield urlunparse(parsed._replace(path=f"/{name}"))
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def own_postgres_url():
    """A PostgreSQL database for this test alone (for tests that need it empty), then dropped."""
    require_postgres()
    name = f"tidings_own_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalize_uri(DATABASE_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield urlunparse(urlparse(DATABASE_URL)._replace(path=f"/{name}"))
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def provider(request, tmp_path):
    """Database settings for each provider: the same behaviour must hold on all three."""
    if request.param == "memory":
        return {"provider": "memory"}
    if request.param == "sqlite":
        return {"provider": "sqlite", "database_uri": f"sqlite:///{tmp_path}/test.db"}
    return {"provider": "postgresql", "database_uri": request.getfixturevalue("postgres_url")}


@pytest.fixture
def use_provider(provider):
    """Apply `provider` to a domain (database and event store), create its tables, clean up."""
    created = []

    def apply(domain):
        domain.config["databases"]["default"] = dict(provider)
        domain.config["event_store"] = {"provider": provider["provider"]}
        domain.init()
        domain.drop_tables()
        domain.create_tables()
        created.append(domain)
        return domain

    yield apply
    for domain in created:
        domain.drop_tables()
        domain.dispose()
