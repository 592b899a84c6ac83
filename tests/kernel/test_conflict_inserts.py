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
