"""Round trips to PostgreSQL per producer commit and per handled message (counts, not times):
a statement added to the write path shows up here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tidings import Domain, handle
from tidings.fields import Integer
from tidings.tasks.naming import task_name

ran: list[str] = []


def build_notes(url: str, prepared: bool = True) -> Domain:
    domain = Domain("notes")
    domain.config["event_processing"] = "async"
    domain.config["databases"]["default"] = {
        "provider": "postgresql",
        "database_uri": url,
        "prepared_statements": prepared,
    }
    domain.config["event_store"] = {"provider": "postgresql"}

    @domain.event(part_of="Note")
    class Noted:
        size: Integer(required=True)

    @domain.aggregate
    class Note:
        size: Integer(default=1)

        @classmethod
        def write(cls) -> Note:
            note = cls()
            note.raise_(Noted(size=note.size))
            return note

    @domain.event_handler(part_of=Note)
    class CountNotes:
        @handle(Noted)
        def count(self, event: Noted) -> None:
            ran.append(event.size)

    domain.init()
    return domain


class RoundTrips:
    """What one engine sends: BEGIN (psycopg2 sends it before the first statement), each
    statement, COMMIT / ROLLBACK, and pool pre-pings."""

    def __init__(self, engine: sa.Engine) -> None:
        self.sent: list[str] = []
        sa.event.listen(engine, "begin", lambda conn: self.sent.append("BEGIN"))
        sa.event.listen(engine, "commit", lambda conn: self.sent.append("COMMIT"))
        sa.event.listen(engine, "rollback", lambda conn: self.sent.append("ROLLBACK"))
        sa.event.listen(engine, "before_cursor_execute", self._statement)
        ping = engine.dialect.do_ping

        def counted_ping(dbapi_connection: object) -> bool:
            self.sent.append("PING")
            return ping(dbapi_connection)

        engine.dialect.do_ping = counted_ping  # type: ignore[method-assign]

    def _statement(self, conn, cursor, statement: str, *args: object) -> None:
        self.sent.append(" ".join(statement.split()[:3]))

    def during(self, action) -> list[str]:
        self.sent.clear()
        action()
        return list(self.sent)


@pytest.fixture
def notes(postgres_url) -> Iterator[tuple[Domain, RoundTrips]]:
    domain = build_notes(postgres_url)
    domain.drop_tables()
    domain.create_tables()
    yield domain, RoundTrips(domain.databases["default"].engine)
    domain.drop_tables()
    domain.dispose()


def write_note(domain: Domain) -> str:
    note_cls = domain.registry["aggregate"]["Note"]
    with domain.domain_context():
        return domain.repository_for(note_cls).add(note_cls.write()).id


def _stored(domain: Domain) -> tuple[int, ...]:
    with domain.databases["default"].engine.connect() as conn:
        return tuple(
            conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one()
            for t in ("note", "tidings_event_store", "tidings_outbox")
        )


def test_a_producer_commit_of_an_aggregate_and_its_event_is_three_round_trips(notes):
    domain, trips = notes
    first = trips.during(lambda: write_note(domain))  # a new connection prepares the statement
    assert [s.split()[0] for s in first] == ["BEGIN", "PREPARE", "EXECUTE", "COMMIT"]
    sent = trips.during(lambda: write_note(domain))
    # the aggregate row, the event, its stream position and its outbox row: one statement
    assert [s.split()[0] for s in sent] == ["BEGIN", "EXECUTE", "COMMIT"]
    assert first[1].split()[1] == sent[1].split()[1]  # the statement prepared first
    assert _stored(domain) == (2, 2, 2)


def test_without_prepared_statements_the_commit_sends_the_statement_text(postgres_url):
    domain = build_notes(postgres_url, prepared=False)
    domain.drop_tables()
    domain.create_tables()
    trips = RoundTrips(domain.databases["default"].engine)
    try:
        for _ in range(2):  # the first commit too: nothing is prepared
            assert trips.during(lambda: write_note(domain)) == ["BEGIN", "WITH new0 AS", "COMMIT"]
        assert _stored(domain) == (2, 2, 2)
    finally:
        domain.drop_tables()
        domain.dispose()


def test_a_statement_deallocated_behind_the_pool_fails_one_commit_then_is_prepared_again(notes):
    domain, trips = notes
    write_note(domain)
    with domain.databases["default"].engine.connect() as conn:  # the pool's one connection
        conn.exec_driver_sql("DEALLOCATE ALL")  # what a pooler's DISCARD ALL does
        conn.commit()
    with pytest.raises(sa.exc.DBAPIError, match="does not exist"):
        write_note(domain)
    sent = trips.during(lambda: write_note(domain))  # the caller's retry
    assert [s.split()[0] for s in sent] == ["BEGIN", "PREPARE", "EXECUTE", "COMMIT"]
    assert _stored(domain) == (2, 2, 2)  # the failed commit wrote nothing


def test_a_handled_message_is_three_round_trips_around_the_handler(notes):
    domain, trips = notes
    note_id = write_note(domain)
    message = domain.read_messages(f"notes::note-{note_id}")[0]
    handler = domain.registry["event_handler"]["CountNotes"]
    ran.clear()
    inbox_key = task_name(domain, handler)  # what the handler's Celery task runs it with
    sent = trips.during(lambda: domain.run_handler(handler, message, idempotency_key=inbox_key))
    assert ran == [1]
    assert sent == ["BEGIN", "INSERT INTO tidings_inbox", "COMMIT"]
