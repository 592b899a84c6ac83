"""What is particular to the Message DB event store: expected versions, names, configuration."""

from __future__ import annotations

import threading
import uuid

import pytest
import sqlalchemy as sa

from tests.shop import build_shop
from tests.waiting import wait_until
from tidings import ConfigurationError, ExpectedVersionError
from tidings.domain.database import event_record
from tidings.domain.envelope import Message, MessageKind, category_of
from tidings.domain.message_db import MessageDbDatabase


def record(stream: str, sequence: int | None = 0) -> dict:
    message = Message(
        type="Test.Happened.v1",
        kind=MessageKind.EVENT,
        stream=stream,
        stream_category=category_of(stream),
        sequence=sequence,
        data={"n": 1},
    )
    return event_record(message.to_dict())


@pytest.fixture
def store(message_db_url):
    db = MessageDbDatabase("event_store", message_db_url)
    yield db
    db.dispose()


def test_a_write_at_a_stale_expected_version_raises_expected_version_error(store):
    session = store.session()
    stream = f"test::thing-{uuid.uuid4()}"
    with pytest.raises(ExpectedVersionError, match=f"Wrong expected version: 5 .*{stream}"):
        session.write_message(record(stream), expected_version=5)
    session.rollback()
    assert store.read_events(stream, 0, 10) == []


def test_a_concurrent_writer_to_the_same_stream_gets_expected_version_error(store):
    stream = f"test::thing-{uuid.uuid4()}"
    first, second = store.session(), store.session()
    first.append_events([record(stream)])  # written, uncommitted, holding the category lock
    outcome: list[BaseException | None] = []

    def append_concurrently() -> None:
        try:
            second.append_events([record(stream)])  # expects -1, then waits for the lock
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)
            second.rollback()

    thread = threading.Thread(target=append_concurrently)
    thread.start()
    with store.engine.connect() as conn:
        wait_until(
            lambda: conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
                )
            ).scalar(),
            message="the second writer to wait for the stream's lock",
        )
    first.commit()
    thread.join(timeout=20)
    assert isinstance(outcome[0], ExpectedVersionError)
    assert [r["position"] for r in store.read_events(stream, 0, 10)] == [0]


def test_messages_without_an_aggregate_version_are_appended_without_expectation(store):
    stream = f"test::thing:command-{uuid.uuid4()}"
    for _ in range(2):
        session = store.session()
        session.append_events([record(stream, sequence=None)])
        session.commit()
    assert [r["position"] for r in store.read_events(stream, 0, 10)] == [0, 1]


def test_message_db_parses_our_categories_as_we_do(store):
    names = [f"shop::order-{uuid.uuid4()}", f"shop::order:command-{uuid.uuid4()}", "a::b-c-d"]
    with store.engine.connect() as conn:
        for name in names:
            assert conn.execute(sa.text("SELECT category(:s)"), {"s": name}).scalar() == category_of(name)


def test_message_db_requires_a_database_uri():
    shop = build_shop()
    shop.config["event_store"] = {"provider": "message_db"}
    with pytest.raises(ConfigurationError, match="'event_store.database_uri' is required for message_db"):
        shop.init()


def test_a_database_without_message_db_is_reported_with_the_installer_to_run(postgres_url):
    db = MessageDbDatabase("event_store", postgres_url)
    with pytest.raises(ConfigurationError, match="install it with .ci/install-message-db"):
        db.create_tables()
    db.dispose()


def test_the_shop_runs_end_to_end_on_postgresql_with_events_in_message_db(postgres_url, message_db_url):
    shop = build_shop()
    shop.config["databases"]["default"] = {"provider": "postgresql", "database_uri": postgres_url}
    shop.config["event_store"] = {"provider": "message_db", "database_uri": message_db_url}
    shop.init()
    shop.drop_tables()
    shop.create_tables()
    Order, Inventory = shop.registry["aggregate"]["Order"], shop.registry["aggregate"]["Inventory"]
    ShipOrder = shop.registry["command"]["ShipOrder"]
    try:
        with shop.domain_context():
            order = shop.repository_for(Order).add(Order(book_id="book-1", quantity=3))
            inventory = shop.repository_for(Inventory).add(Inventory(book_id="book-1", in_stock=5))
            assert shop.process(ShipOrder(order_id=order.id)) == "SHIPPED"
            assert shop.repository_for(Inventory).get(inventory.id).in_stock == 2
        [command] = shop.event_store_database.read_events("shop::order:command", 0, 10)
        [event] = shop.event_store_database.read_events("shop::order", 0, 10)
        assert (command["type"], event["type"]) == ("Shop.ShipOrder.v1", "Shop.OrderShipped.v1")
        assert event["metadata"]["causation_id"] == command["message_id"]
        assert event["global_position"] > command["global_position"]
    finally:
        shop.drop_tables()
        shop.dispose()


def test_a_business_commit_that_fails_leaves_no_event_in_message_db(message_db_url):
    shop = build_shop()  # business data in memory: its version check runs at commit
    shop.config["event_store"] = {"provider": "message_db", "database_uri": message_db_url}
    shop.init()
    Order, Inventory = shop.registry["aggregate"]["Order"], shop.registry["aggregate"]["Inventory"]
    with shop.domain_context():
        shop.repository_for(Inventory).add(Inventory(book_id="book-1", in_stock=5))
        order = shop.repository_for(Order).add(Order(book_id="book-1", quantity=1))
        repo = shop.repository_for(Order)
        with pytest.raises(ExpectedVersionError, match="changed concurrently"), shop.unit_of_work():
            late = repo.get(order.id)
            late.ship_order()
            repo.add(late)
            with shop.unit_of_work():  # commits first
                early = repo.get(order.id)
                early.ship_order()
                repo.add(early)
    shop.dispose()
    records = shop.event_store_database.read_events(f"shop::order-{order.id}", 0, 10)
    assert [r["position"] for r in records] == [0]
