"""The inbox contract: a (handler, message) pair is applied once, inside the caller's
transaction, and its row commits or rolls back with that transaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest


class InboxContract:
    provider: str

    def test_a_duplicate_is_detected_within_one_transaction_and_the_transaction_goes_on(self, storage):
        session = storage.default.session()
        assert session.mark_processed("tidings.alpha.Apply", "m-1") is True
        assert session.mark_processed("tidings.alpha.Apply", "m-1") is False
        assert session.mark_processed("tidings.alpha.Other", "m-1") is True
        session.commit()
        later = storage.default.session()
        assert later.mark_processed("tidings.alpha.Apply", "m-1") is False
        assert later.mark_processed("tidings.alpha.Apply", "m-2") is True
        later.commit()

    def test_an_inbox_row_rolls_back_with_its_transaction(self, storage):
        session = storage.default.session()
        assert session.mark_processed("tidings.alpha.Apply", "m-1") is True
        session.rollback()
        again = storage.default.session()
        assert again.mark_processed("tidings.alpha.Apply", "m-1") is True  # never applied
        again.commit()

    def test_the_same_message_id_is_new_for_another_domains_handler(self, storage):
        session = storage.default.session()
        assert session.mark_processed("tidings.alpha.Apply", "m-1") is True
        assert session.mark_processed("tidings.beta.Apply", "m-1") is True
        session.commit()

    def test_purge_deletes_rows_processed_before_the_cut_only(self, storage):
        session = storage.default.session()
        session.mark_processed("tidings.alpha.Apply", "m-1")
        session.commit()
        assert storage.inbox.purge(datetime.now(UTC) - timedelta(hours=1)) == 0
        assert storage.inbox.purge(datetime.now(UTC) + timedelta(seconds=1)) == 1
        session = storage.default.session()
        assert session.mark_processed("tidings.alpha.Apply", "m-1") is True  # forgotten: applies again
        session.commit()

    def test_purge_with_a_prefix_deletes_only_that_domains_old_rows(self, storage):
        session = storage.default.session()
        for handler in ("tidings.alpha.Apply", "tidings.alpha.Apply#apply", "tidings.beta.Apply"):
            session.mark_processed(handler, "m-1")
        session.commit()
        later = datetime.now(UTC) + timedelta(seconds=1)
        assert storage.inbox.purge(later, prefix="tidings.alpha.") == 2
        session = storage.default.session()
        assert session.mark_processed("tidings.beta.Apply", "m-1") is False  # another domain's: kept
        session.rollback()

    def test_forget_deletes_one_handlers_rows_only(self, storage):
        session = storage.default.session()
        for handler in ("tidings.alpha.Apply", "tidings.alpha.Other"):
            session.mark_processed(handler, "m-1")
        session.commit()
        assert storage.inbox.forget("tidings.alpha.Apply") == 1
        session = storage.default.session()
        assert session.mark_processed("tidings.alpha.Apply", "m-1") is True
        assert session.mark_processed("tidings.alpha.Other", "m-1") is False
        session.commit()


class TestMemoryInbox(InboxContract):
    provider = "memory"


class TestSqliteInbox(InboxContract):
    provider = "sqlite"


@pytest.mark.usefixtures("postgres_url")
class TestPostgresInbox(InboxContract):
    provider = "postgresql"
