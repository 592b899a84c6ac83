"""The event-store contract: the same behaviour on memory, SQLite, PostgreSQL and Message DB."""

from __future__ import annotations

import uuid

import pytest

from tests.shop import build_shop
from tidings import ExpectedVersionError

RECORD_KEYS = {
    "global_position",
    "message_id",
    "stream",
    "category",
    "position",
    "type",
    "data",
    "metadata",
    "time",
}


@pytest.fixture(params=["memory", "sqlite", "postgresql", "message_db"])
def shop(request, tmp_path):
    """The shop domain with its events in each event store (Message DB: business data in memory)."""
    domain = build_shop()
    if request.param == "memory":
        pass
    elif request.param == "sqlite":
        uri = f"sqlite:///{tmp_path}/test.db"
        domain.config["databases"]["default"] = {"provider": "sqlite", "database_uri": uri}
        domain.config["event_store"] = {"provider": "sqlite"}
    elif request.param == "postgresql":
        uri = request.getfixturevalue("postgres_url")
        domain.config["databases"]["default"] = {"provider": "postgresql", "database_uri": uri}
        domain.config["event_store"] = {"provider": "postgresql"}
    else:
        domain.config["event_store"] = {
            "provider": "message_db",
            "database_uri": request.getfixturevalue("message_db_url"),
        }
    domain.init()
    domain.drop_tables()
    domain.create_tables()
    yield domain
    domain.drop_tables()
    domain.dispose()


def new_order(domain, quantity: int = 1):
    """An order for a book of its own, in stock (the sync handler reduces that stock)."""
    Order, Inventory = domain.registry["aggregate"]["Order"], domain.registry["aggregate"]["Inventory"]
    book_id = f"book-{uuid.uuid4().hex[:8]}"
    with domain.domain_context():
        domain.repository_for(Inventory).add(Inventory(book_id=book_id, in_stock=1000))
        return domain.repository_for(Order).add(Order(book_id=book_id, quantity=quantity))


def ship(domain, order, times: int = 1):
    """Raise OrderShipped `times` times in one unit of work; returns the reloaded order."""
    Order = domain.registry["aggregate"]["Order"]
    with domain.domain_context(), domain.unit_of_work():
        repo = domain.repository_for(Order)
        order = repo.get(order.id)
        for _ in range(times):
            order.ship_order()
        repo.add(order)
    return order


def stream_of(order) -> str:
    return f"shop::order-{order.id}"


def test_events_appended_in_a_unit_of_work_read_back_by_stream_and_by_category(shop):
    order = new_order(shop, quantity=7)
    ship(shop, order)
    by_stream = shop.event_store_database.read_events(stream_of(order), 0, 100)
    by_category = shop.event_store_database.read_events("shop::order", 0, 100)
    assert by_stream == by_category
    [record] = by_stream
    assert set(record) == RECORD_KEYS
    assert record["type"] == "Shop.OrderShipped.v1"
    assert record["stream"] == stream_of(order)
    assert record["category"] == "shop::order"
    assert record["data"] == {"order_id": order.id, "book_id": order.book_id, "quantity": 7}
    assert record["metadata"]["id"] == record["message_id"]
    assert record["metadata"]["kind"] == "EVENT"


def test_positions_count_from_zero_in_each_stream(shop):
    first, second = new_order(shop), new_order(shop)
    ship(shop, first, times=2)
    ship(shop, second)
    ship(shop, first)
    store = shop.event_store_database
    assert [r["position"] for r in store.read_events(stream_of(first), 0, 100)] == [0, 1, 2]
    assert [r["position"] for r in store.read_events(stream_of(second), 0, 100)] == [0]


def test_a_category_reads_in_global_order_across_streams(shop):
    first, second = new_order(shop), new_order(shop)
    ship(shop, first)
    ship(shop, second)
    ship(shop, first)
    records = shop.event_store_database.read_events("shop::order", 0, 100)
    assert [r["stream"] for r in records] == [stream_of(first), stream_of(second), stream_of(first)]
    positions = [r["global_position"] for r in records]
    assert positions == sorted(positions) and len(set(positions)) == 3


def test_from_position_is_a_stream_position_for_streams_and_global_for_categories(shop):
    first, second = new_order(shop), new_order(shop)
    ship(shop, first, times=3)
    ship(shop, second)
    store = shop.event_store_database
    assert [r["position"] for r in store.read_events(stream_of(first), 1, 100)] == [1, 2]
    assert [r["position"] for r in store.read_events(stream_of(first), 1, 1)] == [1]
    everything = store.read_events("shop::order", 0, 100)
    later = store.read_events("shop::order", everything[2]["global_position"], 100)
    assert later == everything[2:]
    assert store.read_events("shop::order", 0, 2) == everything[:2]
    assert store.read_events("shop::order", everything[-1]["global_position"] + 1, 100) == []


def test_commands_are_stored_in_their_own_category(shop):
    ShipOrder = shop.registry["command"]["ShipOrder"]
    order = new_order(shop)
    with shop.domain_context():
        shop.process(ShipOrder(order_id=order.id))
    store = shop.event_store_database
    [command] = store.read_events("shop::order:command", 0, 100)
    assert command["stream"] == f"shop::order:command-{order.id}"
    assert command["category"] == "shop::order:command"
    assert [r["type"] for r in store.read_events("shop::order", 0, 100)] == ["Shop.OrderShipped.v1"]


def test_a_unit_of_work_on_a_stale_aggregate_fails_and_stores_none_of_its_events(shop):
    Order = shop.registry["aggregate"]["Order"]
    order = new_order(shop)
    with shop.domain_context():
        repo = shop.repository_for(Order)
        first, second = repo.get(order.id), repo.get(order.id)
        first.ship_order()
        repo.add(first)
        second.ship_order()
        with pytest.raises(ExpectedVersionError):
            repo.add(second)
    assert len(shop.event_store_database.read_events(stream_of(order), 0, 100)) == 1


def test_read_categories_merges_categories_in_global_order_from_a_position(shop):
    store = shop.event_store_database
    ShipOrder = shop.registry["command"]["ShipOrder"]
    first, second = new_order(shop), new_order(shop)
    with shop.domain_context():
        shop.process(ShipOrder(order_id=first.id))  # a command, then its event
    ship(shop, second)
    both = store.read_categories(["shop::order", "shop::order:command"], 0, 100)
    assert [(r["category"], r["stream"]) for r in both] == [
        ("shop::order:command", f"shop::order:command-{first.id}"),
        ("shop::order", stream_of(first)),
        ("shop::order", stream_of(second)),
    ]
    positions = [r["global_position"] for r in both]
    assert positions == sorted(positions)
    assert store.read_categories(["shop::order", "shop::order:command"], positions[1], 1) == both[1:2]
    assert store.read_categories(["shop::order"], 0, 100) == both[1:]


def test_last_position_is_the_highest_global_position_of_the_categories_or_unknown(shop):
    store = shop.storage.event_store
    if shop.settings.event_store.provider == "message_db":
        assert store.last_position(["shop::order"]) is None  # no cheap maximum in its interface
        return
    assert store.last_position(["shop::order"]) == 0
    first = new_order(shop)
    ship(shop, first)
    records = store.read_events("shop::order", 0, 100)
    assert store.last_position(["shop::order"]) == records[-1]["global_position"]
    assert store.last_position(["shop::nothing"]) == 0
