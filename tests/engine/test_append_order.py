"""A handler's transaction takes its id with the inbox row, before it loads the aggregate: when
a younger transaction appends to the same stream meanwhile, the handler's append would land
before it in global order. It is refused and the handler runs again (PostgreSQL)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from tidings import Domain, current_domain, handle
from tidings.fields import Identifier, Integer
from tidings.tasks.naming import task_name

competing: list[str] = []  # streams to append to from another transaction, once


def build_tally(url: str) -> Domain:
    domain = Domain("tally")
    domain.config["event_processing"] = "async"
    domain.config["databases"]["default"] = {"provider": "postgresql", "database_uri": url}
    domain.config["event_store"] = {"provider": "postgresql"}

    @domain.event(part_of="Tally")
    class Counted:
        tally_id: Identifier(required=True)

    @domain.event(part_of="Tally")
    class Bumped:
        count: Integer(required=True)

    @domain.aggregate
    class Tally:
        count: Integer(default=0)

        def bump(self) -> None:
            self.count += 1
            self.raise_(Bumped(count=self.count))

    @domain.event_handler(part_of=Tally)
    class BumpTally:
        @handle(Counted)
        def bump(self, event: Counted) -> None:
            if competing:  # between this run's inbox row and its load of the aggregate
                append_from_elsewhere(current_domain, competing.pop())
            repo = current_domain.repository_for(Tally)
            tally = repo.get(event.tally_id)
            tally.bump()
            repo.add(tally)

    domain.init()
    return domain


def append_from_elsewhere(domain: Domain, stream: str) -> None:
    session = domain.databases["default"].session()
    record = {
        "message_id": uuid.uuid4().hex,
        "stream": stream,
        "category": stream.split("-", 1)[0],
        "type": "tally.Noted",
        "data": {},
        "metadata": {},
        "time": datetime.now(UTC),
    }
    session.append_events([record])
    session.commit()


@pytest.fixture
def tally(postgres_url):
    domain = build_tally(postgres_url)
    domain.drop_tables()
    domain.create_tables()
    yield domain
    domain.drop_tables()
    domain.dispose()


def test_an_append_behind_a_younger_transaction_is_run_again_and_lands_in_stream_order(tally):
    Tally, Counted = tally.registry["aggregate"]["Tally"], tally.registry["event"]["Counted"]
    handler = tally.registry["event_handler"]["BumpTally"]
    with tally.domain_context():
        tally_id = tally.repository_for(Tally).add(Tally()).id
    stream = f"tally::tally-{tally_id}"
    competing.append(stream)
    retries = tally.bus.stats["version_retries"]

    message = tally.event_message(Counted(tally_id=tally_id))
    tally.run_handler(handler, message, idempotency_key=task_name(tally, handler))

    assert tally.bus.stats["version_retries"] == retries + 1
    events = tally.event_store_database.read_events(stream, 0, 10)
    assert [e["position"] for e in events] == [0, 1]
    assert events[0]["type"] == "tally.Noted" and "Bumped" in events[1]["type"]
    assert events[0]["global_position"] < events[1]["global_position"]
    with tally.domain_context():
        assert tally.repository_for(Tally).get(tally_id).count == 1
