"""Event stores for the contract suite: memory, SQLite, PostgreSQL and Message DB."""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlparse, urlunparse

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from tests.services import DATABASE_URL, require_postgres, unavailable
from tests.waiting import wait_until
from tidings.domain.sql import normalize_uri

MESSAGE_DB_NAME = os.environ.get("MESSAGE_DB_NAME", "message_store")


def _admin_url(database: str) -> str:
    return urlunparse(urlparse(normalize_uri(DATABASE_URL))._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def message_db_installed() -> None:
    """Message DB is installed in the local PostgreSQL, or the test skips (fails in CI)."""
    require_postgres()
    engine = sa.create_engine(_admin_url(MESSAGE_DB_NAME), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT message_store.message_store_version()")
    except sa.exc.DBAPIError:
        unavailable(
            f"Message DB is not installed in database '{MESSAGE_DB_NAME}' (run .ci/install-message-db)"
        )
    finally:
        engine.dispose()


@pytest.fixture
def message_db_url(message_db_installed) -> str:
    """A fresh copy of the installed message store, reached as its least-privilege role."""
    name = f"tidings_msgdb_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(_admin_url("postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)

    def copy_template() -> bool:
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{MESSAGE_DB_NAME}"')
            return True
        except OperationalError as exc:  # someone is connected to the template right now
            if "is being accessed by other users" in str(exc):
                return False
            raise

    wait_until(copy_template, timeout=15, message=f"a copy of database {MESSAGE_DB_NAME}")
    parsed = urlparse(DATABASE_URL)
    netloc = f"message_store@{parsed.hostname or '127.0.0.1'}:{parsed.port or 5432}"
    yield urlunparse(parsed._replace(netloc=netloc, path=f"/{name}"))
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()
