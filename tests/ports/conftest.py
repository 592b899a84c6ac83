"""Storage for the port contracts: each suite's subclasses name a provider (`provider = ...`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest

from tidings.domain.ports import Session
from tidings.domain.providers import Storage, load_storage
from tidings.domain.settings import DatabaseSettings, EventStoreSettings
from tidings.outbox.relay import MemoryOutbox
from tidings.outbox.writer import outbox_rows

MakeStorage = Callable[[str], Storage]


@pytest.fixture
def database_settings(request, tmp_path) -> dict[str, str]:
    """The default database of the test class's provider: memory, sqlite or postgresql."""
    provider = request.cls.provider
    if provider == "memory":
        return {"provider": "memory"}
    if provider == "sqlite":
        return {"provider": "sqlite", "database_uri": f"sqlite:///{tmp_path}/ports.db"}
    return {"provider": "postgresql", "database_uri": request.getfixturevalue("postgres_url")}


@pytest.fixture
def make_storage(database_settings) -> Iterator[MakeStorage]:
    """Storage for a domain name, on the one database of this test (its own pool each time, as
    another process would have); tables created, dropped afterwards."""
    built: list[Storage] = []

    def make(domain: str) -> Storage:
        storage = load_storage(
            domain, {"default": DatabaseSettings(**database_settings)}, EventStoreSettings(provider="memory")
        )
        if not built:
            storage.drop_tables()  # the PostgreSQL database lives for the whole session
        storage.create_tables()
        built.append(storage)
        return storage

    yield make
    if built:
        built[0].drop_tables()
    for storage in built:
        storage.dispose()


@pytest.fixture
def storage(make_storage) -> Storage:
    return make_storage("alpha")


@pytest.fixture
def neighbour(request, storage, make_storage) -> Storage:
    """Domain "beta" on the same database as `storage` (memory: the same rows and lock)."""
    if request.cls.provider != "memory":
        return make_storage("beta")
    db = storage.default
    return replace(storage, outbox=MemoryOutbox(db.outbox, db.lock, "beta"))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Envelope:
    """Just what the outbox writer reads of a message."""

    id: str
    stream: str
    type: str = "Test.Noted.v1"

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "stream": self.stream})


def envelopes(count: int, stream: str = "test::note-1") -> list[Envelope]:
    return [Envelope(f"m-{uuid.uuid4().hex}", stream) for _ in range(count)]


def write(storage: Storage, domain: str, messages: list[Envelope]) -> list[str]:
    """Commit these messages as `domain`'s outbox rows; returns their ids in order."""
    session: Session = storage.default.session()
    session.write_outbox(outbox_rows(messages, domain))
    session.commit()
    return [m.id for m in messages]


def ids(published: list[str]) -> list[str]:
    return [json.loads(envelope)["id"] for envelope in published]
