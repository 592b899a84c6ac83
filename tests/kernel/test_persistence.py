"""The kernel's promises, on memory, SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest

from tests.shop import build_shop
from tidings import ExpectedVersionError, ObjectNotFoundError, TooManyObjectsError


@pytest.fixture
def shop(use_provider):
    return use_provider(build_shop())


def entities(domain):
    reg = domain.registry
    return reg["aggregate"]["Order"], reg["aggregate"]["Inventory"], reg["command"]["ShipOrder"]


def test_shipping_an_order_reduces_inventory_in_sync_mode(shop):
    Order, Inventory, _ = entities(shop)
    with shop.domain_context():
        order = shop.repository_for(Order).add(Order(book_id="book-1", quantity=10))
        inventory = shop.repository_for(Inventory).add(Inventory(book_id="book-1", in_stock=100))
        order.ship_order()
        shop.repository_for(Order).add(order)
        assert shop.repository_for(Inventory).get(inventory.id).in_stock == 90


def test_process_returns_the_command_handlers_value_and_runs_event_handlers(shop):
    Order, Inventory, ShipOrder = entities(shop)
    with shop.domain_context():
        order = shop.repository_for(Order).add(Order(book_id="b2", quantity=3))
        shop.repository_for(Inventory).add(Inventory(book_id="b2", in_stock=5))
        assert shop.process(ShipOrder(order_id=order.id)) == "SHIPPED"
        assert shop.repository_for(Inventory).find_by(book_id="b2").in_stock == 2
        stored = shop.event_store_database.read_events("shop::order")
        assert [r["type"] for r in stored] == ["Shop.OrderShipped.v1"]
        commands = shop.event_store_database.read_events("shop::order:command")
        assert [r["type"] for r in commands] == ["Shop.ShipOrder.v1"]
        # the event raised while handling the command carries its causation
        assert stored[0]["metadata"]["causation_id"] == commands[0]["message_id"]
        assert stored[0]["metadata"]["origin_stream"] == commands[0]["stream"]


def test_failure_mid_handler_leaves_no_row_no_event_and_no_outbox_row(shop):
    Order, _, _ = entities(shop)
    shop.config["event_processing"] = "async"  # so the outbox would receive a row
    shop.init()
    with shop.domain_context():
        with pytest.raises(RuntimeError), shop.unit_of_work():
            order = Order(book_id="b3", quantity=1)
            shop.repository_for(Order).add(order)
            order.ship_order()
            shop.repository_for(Order).add(order)
            raise RuntimeError("boom")
        assert shop.repository_for(Order).all() == []
        assert shop.event_store_database.read_events("shop::order") == []
        assert outbox_count(shop) == 0


def outbox_count(domain) -> int:
    db = domain.outbox_database
    if hasattr(db, "outbox"):
        return len(db.outbox)
    import sqlalchemy as sa

    with db.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(db.outbox_table)).scalar()


def test_a_committed_async_event_writes_one_outbox_row_in_the_same_transaction(shop):
    Order, _, _ = entities(shop)
    shop.config["event_processing"] = "async"
    shop.init()
    with shop.domain_context():
        order = shop.repository_for(Order).add(Order(book_id="b4", quantity=1))
        order.ship_order()
        shop.repository_for(Order).add(order)
    assert outbox_count(shop) == 1
    assert len(shop.event_store_database.read_events("shop::order")) == 1


def test_saving_a_stale_aggregate_raises_expected_version_error(shop):
    Order, _, _ = entities(shop)
    with shop.domain_context():
        repo = shop.repository_for(Order)
        order = repo.add(Order(book_id="b5", quantity=1))
        first, second = repo.get(order.id), repo.get(order.id)
        first.quantity = 2
        repo.add(first)
        second.quantity = 3
        with pytest.raises(ExpectedVersionError):
            repo.add(second)
        assert repo.get(order.id).quantity == 2
        assert repo.get(order.id).version == 1


def test_repository_lookups_raise_typed_errors(shop):
    Order, _, _ = entities(shop)
    with shop.domain_context():
        repo = shop.repository_for(Order)
        with pytest.raises(ObjectNotFoundError):
            repo.get("missing")
        repo.add(Order(book_id="same", quantity=1))
        repo.add(Order(book_id="same", quantity=2))
        with pytest.raises(TooManyObjectsError):
            repo.find_by(book_id="same")
        with pytest.raises(ObjectNotFoundError):
            repo.find_by(book_id="other")
        assert sorted(o.quantity for o in repo.filter(book_id="same")) == [1, 2]
        victim = repo.filter(quantity=1)[0]
        repo.remove(victim)
        assert [o.quantity for o in repo.all()] == [2]
