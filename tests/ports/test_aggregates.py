"""The aggregates contract: versioned rows, upserts, filters, deletes and truncation, the same
on every provider (session operations, as the repositories use them)."""

from __future__ import annotations

import pytest

from tidings import Domain
from tidings.domain.errors import ExpectedVersionError
from tidings.fields import Integer, String


@pytest.fixture
def database(database_settings):
    """The default database of a domain with one aggregate, `note`."""
    domain = Domain("alpha")
    domain.config["databases"]["default"] = dict(database_settings)

    @domain.aggregate
    class Note:
        text: String(required=True)
        stars: Integer(default=0)

    domain.init()
    domain.drop_tables()
    domain.create_tables()
    yield domain.storage.default
    domain.drop_tables()
    domain.dispose()


def saved(database, identity: str, data: dict, expected: int, versioned: bool = True) -> int:
    session = database.session()
    version = session.save("note", identity, {"id": identity, **data}, expected, versioned)
    session.commit()
    return version


class AggregatesContract:
    provider: str

    def test_a_new_row_is_version_0_and_each_save_at_the_current_version_adds_one(self, database):
        assert saved(database, "n-1", {"text": "a", "stars": 1}, -1) == 0
        assert saved(database, "n-1", {"text": "b", "stars": 2}, 0) == 1
        session = database.session()
        data, version = session.get("note", "n-1")
        session.commit()
        assert (data["text"], data["stars"], version) == ("b", 2, 1)

    def test_a_save_at_a_stale_version_fails_and_changes_nothing(self, database):
        saved(database, "n-1", {"text": "a", "stars": 1}, -1)
        saved(database, "n-1", {"text": "b", "stars": 1}, 0)
        session = database.session()
        with pytest.raises(ExpectedVersionError):
            session.save("note", "n-1", {"id": "n-1", "text": "stale", "stars": 1}, 0, True)
        session.rollback()
        session = database.session()
        assert session.get("note", "n-1")[0]["text"] == "b"
        session.commit()

    def test_a_rolled_back_save_leaves_no_row(self, database):
        session = database.session()
        session.save("note", "n-1", {"id": "n-1", "text": "a", "stars": 1}, -1, True)
        session.rollback()
        session = database.session()
        assert session.get("note", "n-1") is None
        session.commit()

    def test_find_filters_by_field_in_identity_order_and_delete_removes(self, database):
        for identity, stars in (("n-2", 5), ("n-1", 5), ("n-3", 1)):
            saved(database, identity, {"text": identity, "stars": stars}, -1)
        session = database.session()
        assert [data["id"] for data, _ in session.find("note", {"stars": 5})] == ["n-1", "n-2"]
        assert session.delete("note", "n-1") is True and session.delete("note", "n-9") is False
        session.commit()
        session = database.session()
        assert [data["id"] for data, _ in session.find("note", {})] == ["n-2", "n-3"]
        session.commit()

    def test_truncate_empties_one_table(self, database):
        saved(database, "n-1", {"text": "a", "stars": 1}, -1)
        database.truncate("note")
        session = database.session()
        assert session.find("note", {}) == []
        session.commit()

    def test_ping_answers(self, database):
        database.ping()


class TestMemoryAggregates(AggregatesContract):
    provider = "memory"


class TestSqliteAggregates(AggregatesContract):
    provider = "sqlite"


@pytest.mark.usefixtures("postgres_url")
class TestPostgresAggregates(AggregatesContract):
    provider = "postgresql"
