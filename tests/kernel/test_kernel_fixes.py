"""Regressions found while building the bookshelf example (examples/bookshelf)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.kernel.test_persistence import outbox_count
from tests.shop import build_shop
from tidings import Domain
from tidings.fields import Identifier, Integer


def test_zero_argument_super_works_in_methods_of_decorated_elements(tmp_path):
    domain = Domain("shop", root_path=tmp_path)

    @domain.aggregate
    class Stock:
        level: Integer(default=0)

        def to_dict(self) -> dict:
            return {**super().to_dict(), "low": self.level < 5}

        @classmethod
        def empty(cls):
            return super().model_validate({"id": "s-1"})

    assert Stock(id="s-1", level=2).to_dict() == {"id": "s-1", "level": 2, "low": True}
    assert Stock.empty().level == 0


def test_a_model_with_its_own_identifier_has_no_extra_id_field(tmp_path):
    domain = Domain("shop", root_path=tmp_path)

    @domain.aggregate
    class Stock:
        book_id: Identifier(identifier=True)
        level: Integer(default=0)

    @domain.projection
    class Shelf:
        book_id: Identifier(identifier=True)

    @domain.aggregate
    class Plain:
        level: Integer(default=0)

    domain.init()
    assert list(Stock.model_fields) == ["book_id", "level"]
    assert list(Shelf.model_fields) == ["book_id"]
    assert list(Plain.model_fields) == ["id", "level"]  # the automatic identity is still there
    assert "id" not in domain.metadata.tables["stock"].c


@pytest.fixture
def shop(use_provider):
    return use_provider(build_shop())


@pytest.fixture
def async_shop(use_provider):
    return use_provider(build_shop(command_processing="async"))


def test_a_command_processed_inside_a_unit_of_work_commits_and_rolls_back_with_it(shop):
    Order, Inventory = shop.registry["aggregate"]["Order"], shop.registry["aggregate"]["Inventory"]
    ShipOrder = shop.registry["command"]["ShipOrder"]
    with shop.domain_context():
        order = shop.repository_for(Order).add(Order(book_id="b1", quantity=2))
        shop.repository_for(Inventory).add(Inventory(book_id="b1", in_stock=5))
        with pytest.raises(RuntimeError), shop.unit_of_work():
            assert shop.process(ShipOrder(order_id=order.id)) == "SHIPPED"
            raise RuntimeError("the caller fails after the command")
        assert shop.repository_for(Order).get(order.id).status == "PENDING"
        assert shop.event_store_database.read_events("shop::order:command") == []

        with shop.unit_of_work():
            shop.repository_for(Order).get(order.id)  # on SQLite this transaction now writes
            assert shop.process(ShipOrder(order_id=order.id)) == "SHIPPED"
        assert shop.repository_for(Order).get(order.id).status == "SHIPPED"
        # the events raised by the handler were dispatched once the caller committed
        assert shop.repository_for(Inventory).find_by(book_id="b1").in_stock == 3
        assert len(shop.event_store_database.read_events("shop::order:command")) == 1


def test_an_async_command_issued_inside_a_unit_of_work_is_queued_only_if_it_commits(async_shop):
    ShipOrder = async_shop.registry["command"]["ShipOrder"]
    with async_shop.domain_context():
        with pytest.raises(RuntimeError), async_shop.unit_of_work():
            async_shop.process(ShipOrder(order_id="o-1"))
            raise RuntimeError("the caller fails after the command")
        assert outbox_count(async_shop) == 0
        with async_shop.unit_of_work():
            message_id = async_shop.process(ShipOrder(order_id="o-1"))
    assert outbox_count(async_shop) == 1
    db = async_shop.outbox_database
    if hasattr(db, "outbox"):
        assert db.outbox[0]["message_id"] == message_id
    else:
        with db.engine.connect() as conn:
            assert conn.execute(sa.select(db.outbox_table.c.message_id)).scalar() == message_id
