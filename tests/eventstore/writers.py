"""Writer processes for test_concurrent_append, in a module of their own: a spawned process
imports its target by module name, and a test module's name under pytest's importlib mode
depends on the checkout's folder name (not importable in the child)."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

from tidings.domain.errors import ExpectedVersionError
from tidings.domain.sql import SqlDatabase

WRITERS, COMMITS_PER_WRITER, STREAMS = 4, 60, 6


def store(url: str) -> SqlDatabase:
    db = SqlDatabase("default", url)
    db.add_event_store()
    db.add_message_tables()
    return db


def record(stream: str, **data: object) -> dict:
    return {
        "message_id": uuid.uuid4().hex,
        "stream": stream,
        "category": stream.split("-", 1)[0],
        "type": "Noted",
        "data": dict(data),
        "metadata": {"stream": stream},
        "time": datetime.now(UTC),
    }


def append(db: SqlDatabase, records: list[dict], take_id_first: bool = False) -> None:
    session = db.session()
    try:
        if take_id_first:  # as an inbox row or a lock would: this transaction's id is now older
            session.conn.execute(sa.text("SELECT pg_current_xact_id()"))
            time.sleep(random.uniform(0, 0.01))
        session.append_events(records)
        session.commit()
    except BaseException:
        session.rollback()
        raise


def write(url: str, writer: int, categories: list[str]) -> None:
    """One writer process: commits of one or two events on shared streams, retried on conflict."""
    db, rng = store(url), random.Random(writer)
    for n in range(COMMITS_PER_WRITER):
        stream = f"{rng.choice(categories)}-{rng.randrange(STREAMS)}"
        records = [record(stream, writer=writer, n=n, k=k) for k in range(rng.choice((1, 2)))]
        while True:
            try:
                append(db, records, take_id_first=rng.random() < 0.5)
                break
            except ExpectedVersionError:
                continue  # what the unit of work does: run again in a new transaction
    db.dispose()
