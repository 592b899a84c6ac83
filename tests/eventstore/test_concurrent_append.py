"""PostgreSQL appends without a lock across writers: a reader of settled records still sees
every event exactly once, each stream in its own order (see tidings.domain.pg_append)."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
import sqlalchemy as sa

from tests.eventstore.writers import COMMITS_PER_WRITER, WRITERS, append, record, store, write
from tests.waiting import wait_until
from tidings.domain.errors import ExpectedVersionError


@pytest.fixture
def db(postgres_url):
    database = store(postgres_url)
    database.drop_tables()
    database.create_tables()
    yield database
    database.drop_tables()
    database.dispose()


def test_a_settled_reader_sees_every_event_of_concurrent_writer_processes_once_in_stream_order(
    db, postgres_url
):
    categories = ["alpha", "beta"]
    seen: list[dict] = []
    stop = threading.Event()

    def read() -> None:  # what an event_store subscription does: a cursor over settled records
        cursor = 0
        while not stop.is_set():
            batch = db.read_categories(categories, cursor + 1, 50, settled=True)
            seen.extend(batch)
            cursor = batch[-1]["global_position"] if batch else cursor

    reader = threading.Thread(target=read)
    reader.start()
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=write, args=(postgres_url, w, categories)) for w in range(WRITERS)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(45)
    stored = db.read_categories(categories, 0, 100_000)
    try:
        wait_until(lambda: len(seen) >= len(stored), timeout=30, message="the reader to catch up")
    finally:
        stop.set()
        reader.join(5)
    assert [p.exitcode for p in writers] == [0] * WRITERS
    ids = [r["message_id"] for r in seen]
    assert len(ids) == len(set(ids)), "an event was read twice"
    assert sorted(ids) == sorted(r["message_id"] for r in stored)
    assert len(stored) >= WRITERS * COMMITS_PER_WRITER
    by_stream: dict[str, list[int]] = {}
    for r in seen:
        by_stream.setdefault(r["stream"], []).append(r["position"])
    assert all(positions == list(range(len(positions))) for positions in by_stream.values())


def test_a_younger_commit_waits_unread_until_an_older_transaction_ends(db):
    older = db.session()
    older.conn.execute(sa.text("SELECT pg_current_xact_id()"))
    append(db, [record("alpha-1")])
    assert db.read_categories(["alpha"], 0, 10) != []
    assert db.read_categories(["alpha"], 0, 10, settled=True) == []
    older.append_events([record("alpha-2")])
    older.commit()
    settled = db.read_categories(["alpha"], 0, 10, settled=True)
    assert [r["stream"] for r in settled] == ["alpha-2", "alpha-1"]  # the older transaction first


def test_an_append_behind_a_younger_transaction_on_its_stream_is_a_version_conflict(db):
    older = db.session()
    older.conn.execute(sa.text("SELECT pg_current_xact_id()"))
    append(db, [record("alpha-1", v=0)])
    older.append_events([record("alpha-1", v=1)])
    with pytest.raises(ExpectedVersionError):
        older.commit()
    append(db, [record("alpha-1", v=1)])  # run again: a new transaction, a newer id
    events = db.read_events("alpha-1", 0, 10)
    assert [(r["position"], r["data"]["v"]) for r in events] == [(0, 0), (1, 1)]
    assert events[0]["global_position"] < events[1]["global_position"]


def test_events_of_one_commit_take_consecutive_positions_in_their_streams(db):
    append(db, [record("alpha-1"), record("alpha-2"), record("alpha-1")])
    append(db, [record("alpha-1")])
    events = db.read_categories(["alpha"], 0, 10, settled=True)
    assert [(r["stream"], r["position"]) for r in events] == [
        ("alpha-1", 0),
        ("alpha-2", 0),
        ("alpha-1", 1),
        ("alpha-1", 2),
    ]
