"""The outbox contract: every provider claims, publishes, backs off and owns rows alike."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from tests.ports.conftest import MakeStorage, envelopes, ids, write
from tidings.domain.providers import Storage
from tidings.outbox.relay import Backoff, relay_pending_messages
from tidings.outbox.writer import outbox_rows

NO_WAIT = Backoff(base=0.0, maximum=0.0)  # a failed row is due again at once


class FailingAt:
    """Publishes into `sent` and raises on the `n`-th call (1-based) only."""

    def __init__(self, n: int) -> None:
        self.n, self.calls, self.sent = n, 0, []

    def __call__(self, envelope: str) -> None:
        self.calls += 1
        if self.calls == self.n:
            raise ConnectionError("broker down")
        self.sent.append(envelope)


class OutboxContract:
    provider: str

    def test_a_relay_publishes_due_rows_in_the_order_they_were_written_and_marks_them(self, storage):
        written = write(storage, "alpha", envelopes(3)) + write(storage, "alpha", envelopes(2))
        sent: list[str] = []
        assert storage.outbox.relay_batch(sent.append, 10, Backoff()) == 5
        assert ids(sent) == written
        status = storage.outbox.status()
        assert (status.pending, status.published, status.failing) == (0, 5, 0)
        assert storage.outbox.relay_batch(sent.append, 10, Backoff()) == 0  # nothing twice

    def test_a_batch_claims_at_most_batch_size_rows_oldest_first(self, storage):
        written = write(storage, "alpha", envelopes(5))
        sent: list[str] = []
        assert storage.outbox.relay_batch(sent.append, 2, Backoff()) == 2
        assert storage.outbox.relay_batch(sent.append, 2, Backoff()) == 2
        assert ids(sent) == written[:4]
        assert storage.outbox.status().pending == 1

    def test_rows_of_a_rolled_back_transaction_are_never_relayed(self, storage):
        session = storage.default.session()
        session.write_outbox(outbox_rows(envelopes(2), "alpha"))
        session.rollback()
        assert storage.outbox.relay_batch(lambda e: None, 10, Backoff()) == 0
        assert storage.outbox.status().pending == 0

    def test_a_failed_publish_backs_off_that_row_and_the_rest_of_its_batch_in_order(self, storage):
        written = write(storage, "alpha", envelopes(4))
        publish = FailingAt(2)
        assert storage.outbox.relay_batch(publish, 10, Backoff(base=60)) == 1
        status = storage.outbox.status()
        assert (status.pending, status.published, status.failing) == (3, 1, 3)
        assert storage.outbox.relay_batch(publish, 10, Backoff()) == 0  # backed off: not due
        assert ids(publish.sent) == written[:1]

    def test_rows_backed_off_are_published_later_in_their_original_order(self, storage):
        written = write(storage, "alpha", envelopes(4))
        publish = FailingAt(3)
        assert storage.outbox.relay_batch(publish, 10, NO_WAIT) == 2
        assert storage.outbox.relay_batch(publish, 10, NO_WAIT) == 2
        assert ids(publish.sent) == written
        assert storage.outbox.status().failing == 0

    def test_a_failing_flush_leaves_the_whole_batch_pending(self, storage):
        written = write(storage, "alpha", envelopes(3))

        class Buffered(list):
            def flush(self) -> None:
                raise ConnectionError("pipeline lost")

        assert storage.outbox.relay_batch(Buffered(), 10, NO_WAIT) == 0
        assert storage.outbox.status().pending == 3
        sent: list[str] = []
        assert storage.outbox.relay_batch(sent.append, 10, NO_WAIT) == 3
        assert ids(sent) == written

    def test_published_rows_are_purged_after_the_retention_pending_ones_never(self, storage):
        write(storage, "alpha", envelopes(3))
        storage.outbox.relay_batch(lambda e: None, 2, Backoff())
        assert storage.outbox.purge_published(datetime.now(UTC) - timedelta(hours=1)) == 0
        assert storage.outbox.purge_published(datetime.now(UTC) + timedelta(seconds=1)) == 2
        status = storage.outbox.status()
        assert (status.pending, status.published) == (1, 0)

    def test_a_relay_never_claims_reports_or_purges_another_domains_rows(self, storage, neighbour):
        theirs = write(storage, "beta", envelopes(3))
        mine = write(storage, "alpha", envelopes(2))
        sent: list[str] = []
        assert storage.outbox.relay_batch(sent.append, 10, Backoff()) == 2
        assert ids(sent) == mine
        assert storage.outbox.status().pending == 0 and storage.outbox.status().published == 2
        assert neighbour.outbox.status().pending == 3
        assert storage.outbox.purge_published(datetime.now(UTC) + timedelta(seconds=1)) == 2
        theirs_sent: list[str] = []
        assert neighbour.outbox.relay_batch(theirs_sent.append, 10, Backoff()) == 3
        assert ids(theirs_sent) == theirs
        assert neighbour.outbox.purge_published(datetime.now(UTC) + timedelta(seconds=1)) == 3

    def test_two_relays_at_once_publish_every_row_exactly_once(self, storage, make_storage: MakeStorage):
        written = set(write(storage, "alpha", envelopes(300)))
        relays = [storage, self.second_relay(storage, make_storage)]
        start = threading.Barrier(2)

        def relay(own: Storage) -> list[str]:
            sent: list[str] = []
            start.wait(timeout=10)
            relay_pending_messages(own.outbox, sent.append, batch_size=10, backoff=Backoff())
            return ids(sent)

        with ThreadPoolExecutor(2) as pool:
            first, second = (f.result(timeout=60) for f in [pool.submit(relay, s) for s in relays])
        assert not set(first) & set(second), "a row was published by both relays"
        assert len(first) + len(second) == len(written) and set(first) | set(second) == written
        assert storage.outbox.status().published == len(written)

    def second_relay(self, storage: Storage, make_storage: MakeStorage) -> Storage:
        """Another relay of the same domain: its own pool, as another process."""
        return make_storage("alpha")


class TestMemoryOutbox(OutboxContract):
    provider = "memory"

    def second_relay(self, storage: Storage, make_storage: MakeStorage) -> Storage:
        return storage  # one process: two threads share the store (and its lock)


class TestSqliteOutbox(OutboxContract):
    provider = "sqlite"


@pytest.mark.usefixtures("postgres_url")
class TestPostgresOutbox(OutboxContract):
    provider = "postgresql"
