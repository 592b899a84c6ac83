"""The pytest fixture shipped for users: their async domain, run eagerly in the test process."""

from __future__ import annotations

import pytest

from tests.shop import build_shop


@pytest.fixture
def tidings_domain():
    return build_shop("async", "async")


def test_the_eager_fixture_runs_async_commands_and_events_inline(tidings_eager):
    shop = tidings_eager
    Order = shop.registry["aggregate"]["Order"]
    Inventory = shop.registry["aggregate"]["Inventory"]
    order = shop.repository_for(Order).add(Order(book_id="b", quantity=2))
    shop.repository_for(Inventory).add(Inventory(book_id="b", in_stock=3))
    message_id = shop.process(shop.registry["command"]["ShipOrder"](order_id=order.id))
    assert isinstance(message_id, str)
    assert shop.repository_for(Inventory).find_by(book_id="b").in_stock == 1
