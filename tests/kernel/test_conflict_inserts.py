"""Inbox rows and new aggregate rows are inserted with ON CONFLICT DO NOTHING (no savepoint):
the outcomes must be the ones the savepoint version gave, on every provider."""

from __future__ import annotations

import pytest

from tidings import Domain
from tidings.domain.errors import ExpectedVersionError
from tidings.domain.sql import DuplicateValueError
from tidings.fields import String


def build_accounts() -> Domain:
    domain = Domain("accounts")
    domain.config["event_processing"] = "sync"

    @domain.aggregate
    class Account:
        email: String(required=True, unique=True)

    return domain


def test_the_inbox_accepts_a_message_once_per_handler_and_the_transaction_goes_on(use_provider):
    domain = use_provider(build_accounts())
    Account = domain.registry["aggregate"]["Account"]
    with domain.domain_context(), domain.unit_of_work() as uow:
        session = uow.session_for(domain.outbox_database)
        assert session.mark_processed("Handler", "m-1") is True
        assert session.mark_processed("Handler", "m-1") is False
        assert session.mark_processed("Other", "m-1") is True
        domain.repository_for(Account).add(Account(email="a@example.com"))
    with domain.domain_context(), domain.unit_of_work() as uow:
        assert uow.session_for(domain.outbox_database).mark_processed("Handler", "m-1") is False
        assert domain.repository_for(Account).find_by(email="a@example.com").email


@pytest.mark.parametrize("provider", ["sqlite", "postgresql"], indirect=True)
def test_a_taken_identity_or_unique_value_raises_its_own_error(use_provider):
    domain = use_provider(build_accounts())
    Account = domain.registry["aggregate"]["Account"]
    with domain.domain_context():
        first = domain.repository_for(Account).add(Account(email="a@example.com"))
        with pytest.raises(DuplicateValueError, match="unique value is already taken"):
            domain.repository_for(Account).add(Account(email="a@example.com"))
        with pytest.raises(ExpectedVersionError, match="already exists"):
            domain.repository_for(Account).add(Account(id=first.id, email="b@example.com"))
        assert domain.repository_for(Account).find_by(email="a@example.com").id == first.id


def build_ledger() -> Domain:
    """An aggregate that raises an event, so its row, its event and its outbox row commit
    together (on PostgreSQL in one statement, held back until the commit or the next read)."""
    domain = Domain("ledger")
    domain.config["event_processing"] = "async"

    @domain.event(part_of="Entry")
    class Entered:
        email: String(required=True)

    @domain.aggregate
    class Entry:
        email: String(required=True, unique=True)

        @classmethod
        def enter(cls, email: str) -> Entry:
            entry = cls(email=email)
            entry.raise_(Entered(email=email))
            return entry

    return domain


def _counts(domain: Domain) -> tuple[int, ...]:
    """Aggregate rows, stored events, outbox rows."""
    with domain.databases["default"].engine.connect() as conn:
        return tuple(
            conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()
            for table in ("entry", "tidings_event_store", "tidings_outbox")
        )


@pytest.mark.parametrize("provider", ["sqlite", "postgresql"], indirect=True)
def test_a_new_row_is_seen_by_the_reads_and_sql_of_its_own_unit_of_work(use_provider):
    domain = use_provider(build_ledger())
    Entry = domain.registry["aggregate"]["Entry"]
    with domain.domain_context(), domain.unit_of_work() as uow:
        repo = domain.repository_for(Entry)
        entry = repo.add(Entry.enter("a@example.com"))
        assert repo.get(entry.id).email == "a@example.com"  # the held-back insert went first
        assert [e.id for e in repo.filter(email="a@example.com")] == [entry.id]
        conn = uow.session_for(domain.databases["default"]).conn  # a handler's own SQL
        assert conn.exec_driver_sql("SELECT count(*) FROM entry").scalar_one() == 1
    assert _counts(domain) == (1, 1, 1)


@pytest.mark.parametrize("provider", ["sqlite", "postgresql"], indirect=True)
def test_a_clash_found_at_commit_writes_nothing_of_the_unit_of_work(use_provider):
    domain = use_provider(build_ledger())
    Entry = domain.registry["aggregate"]["Entry"]
    with domain.domain_context():
        first = domain.repository_for(Entry).add(Entry.enter("a@example.com"))
        with pytest.raises(DuplicateValueError), domain.unit_of_work():
            domain.repository_for(Entry).add(Entry.enter("b@example.com"))
            domain.repository_for(Entry).add(Entry.enter("a@example.com"))
        with pytest.raises(ExpectedVersionError, match="already exists"), domain.unit_of_work():
            domain.repository_for(Entry).add(Entry.enter("c@example.com"))
            domain.repository_for(Entry).add(Entry(id=first.id, email="d@example.com"))
    assert _counts(domain) == (1, 1, 1)  # only the first entry, its event and its outbox row
