"""The positions contract: a subscription has one owner at a time, a cursor that survives the
owner, failed positions that count attempts, and a rebuild that forgets all of it."""

from __future__ import annotations

import pytest

from tidings.domain.positions import FAILED, RETRYING

NAME = "tidings.alpha.Projector"


def record(position: int) -> dict:
    return {"global_position": position, "message_id": f"m-{position}", "type": "Alpha.Noted.v1"}


class PositionsContract:
    provider: str

    def test_a_cursor_starts_at_zero_and_keeps_what_its_owner_saved(self, storage):
        with storage.positions.owned(NAME) as lease:
            assert lease is not None and lease.position() == 0
            lease.save(7)
        with storage.positions.owned(NAME) as lease:
            assert lease.position() == 7
        storage.positions.reset(NAME, 3)
        with storage.positions.owned(NAME) as lease:
            assert lease.position() == 3

    def test_a_subscription_has_one_owner_at_a_time(self, storage, make_storage):
        other = self.another_process(storage, make_storage)
        with storage.positions.owned(NAME) as lease:
            assert lease is not None
            with other.positions.owned(NAME) as rival:
                assert rival is None
            with other.positions.owned("tidings.alpha.Elsewhere") as unrelated:
                assert unrelated is not None
        with other.positions.owned(NAME) as lease:
            assert lease is not None  # released with the block

    def test_failures_count_attempts_until_resolved_or_purged(self, storage):
        positions = storage.positions
        assert positions.record_failure(NAME, record(4), ValueError("bad"), final=False) == 1
        assert positions.record_failure(NAME, record(4), ValueError("worse"), final=True) == 2
        assert positions.record_failure(NAME, record(9), ValueError("bad"), final=False) == 1
        [failed] = positions.failures(NAME, FAILED)
        assert (failed["global_position"], failed["attempts"], failed["error_message"]) == (4, 2, "worse")
        assert [r["global_position"] for r in positions.failures(NAME, RETRYING)] == [9]
        positions.resolve(NAME, 9)
        assert positions.failures(NAME, RETRYING) == []
        assert positions.purge(NAME) == 1
        assert positions.failures(NAME) == []

    def test_forget_drops_the_cursor_the_failures_and_the_inbox_rows_of_one_subscription(self, storage):
        positions = storage.positions
        with positions.owned(NAME) as lease:
            lease.save(12)
        positions.record_failure(NAME, record(5), ValueError("bad"), final=True)
        positions.record_failure("tidings.alpha.Other", record(5), ValueError("bad"), final=True)
        session = storage.default.session()
        session.mark_processed(NAME, "m-5")
        session.commit()
        positions.forget(NAME)
        with positions.owned(NAME) as lease:
            assert lease.position() == 0
        assert positions.failures(NAME) == [] and len(positions.failures("tidings.alpha.Other")) == 1
        session = storage.default.session()
        assert session.mark_processed(NAME, "m-5") is True
        session.commit()

    def another_process(self, storage, make_storage):
        return make_storage("alpha")  # its own pool and connections


class TestMemoryPositions(PositionsContract):
    provider = "memory"

    def another_process(self, storage, make_storage):
        return storage  # memory ownership is per process: another thread of it


class TestSqlitePositions(PositionsContract):
    provider = "sqlite"


@pytest.mark.usefixtures("postgres_url")
class TestPostgresPositions(PositionsContract):
    provider = "postgresql"
