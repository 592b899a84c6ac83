"""`uvicorn tidings.examples.bookshelf.api:app`: the module's app on domain.toml and the environment."""

from __future__ import annotations

import copy

import pytest
from fastapi.testclient import TestClient

from tidings.domain.settings import DatabaseSettings
from tidings.examples.bookshelf import api
from tidings.examples.bookshelf.domain import domain

VARIABLES = [
    "TIDINGS_EVENT_PROCESSING",
    "TIDINGS_COMMAND_PROCESSING",
    "TIDINGS_MESSAGE_PROCESSING",
    "TIDINGS_DATABASE_PROVIDER",
    "DATABASE_URL",
    "TIDINGS_BROKER_PROVIDER",
    "BROKER_URL",
]
BOOK = {"title": "Dune", "author": "Frank Herbert", "isbn": "978-0441172719", "price": 9.99}


@pytest.fixture
def fresh_start(tmp_path, monkeypatch):
    """No bookshelf variable set, the working folder empty; the domain is left uninitialised."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    saved = copy.deepcopy(domain.config)
    domain.initialized = False
    yield tmp_path
    domain.drop_tables()
    domain.dispose()
    domain.config.clear()
    domain.config.update(saved)
    domain.initialized = False


def test_on_the_embedded_defaults_the_app_starts_on_sqlite_and_queues_commands(fresh_start):
    with TestClient(api.app) as client:
        assert client.get("/health").json()["status"] == "ok"
        response = client.post("/books", json=BOOK)
    assert response.status_code == 202  # async by default: a worker handles the command
    assert domain.settings.databases["default"] == DatabaseSettings(
        provider="sqlite", database_uri="sqlite:///.tidings/bookshelf.db"
    )
    assert (fresh_start / ".tidings" / "bookshelf.db").is_file()


def test_the_environment_chooses_the_processing_modes_and_the_database(fresh_start, monkeypatch):
    monkeypatch.setenv("TIDINGS_COMMAND_PROCESSING", "sync")
    monkeypatch.setenv("TIDINGS_EVENT_PROCESSING", "sync")
    monkeypatch.setenv("TIDINGS_DATABASE_PROVIDER", "memory")
    with TestClient(api.app) as client:
        response = client.post("/books", json=BOOK)
        assert response.status_code == 201
        assert client.get("/catalog").json()["books"][0]["title"] == "Dune"
    assert not (fresh_start / ".tidings").exists()
