"""The same domain reaches the same state async (Redis + a real worker) as sync."""

from __future__ import annotations

import pytest

from tests.engine.conftest import running_worker
from tests.shop import build_shop
from tests.waiting import wait_until


def ship_one(shop):
    Order = shop.registry["aggregate"]["Order"]
    Inventory = shop.registry["aggregate"]["Inventory"]
    ShipOrder = shop.registry["command"]["ShipOrder"]
    with shop.domain_context():
        order = shop.repository_for(Order).add(Order(book_id="b1", quantity=4))
        shop.repository_for(Inventory).add(Inventory(book_id="b1", in_stock=10))
        result = shop.process(ShipOrder(order_id=order.id))
    return order.id, result


def state(shop, order_id):
    with shop.domain_context():
        return (
            shop.repository_for(shop.registry["aggregate"]["Order"]).get(order_id).status,
            shop.repository_for(shop.registry["aggregate"]["Inventory"]).find_by(book_id="b1").in_stock,
        )


def test_the_inventory_example_reaches_the_same_state_async_as_sync(use_provider, redis_app):
    sync_shop = use_provider(build_shop("sync", "sync"))
    sync_order, _ = ship_one(sync_shop)
    expected = state(sync_shop, sync_order)
    sync_shop.drop_tables()

    shop = use_provider(build_shop("async", "async"))
    celery = redis_app(shop)
    with running_worker(celery):
        order_id, message_id = ship_one(shop)
        assert isinstance(message_id, str)  # async process returns the command's message id
        wait_until(lambda: state(shop, order_id) == expected, message="async end state")
    assert expected == ("SHIPPED", 6)


def test_eager_mode_gives_the_same_end_state_as_sync(use_provider):
    from tidings.app.testing import eager_app

    shop = use_provider(build_shop("async", "async"))
    eager_app(shop)
    order_id, _ = ship_one(shop)
    assert state(shop, order_id) == ("SHIPPED", 6)


@pytest.fixture(autouse=True)
def _quiet_celery_logs(caplog):
    caplog.set_level("WARNING")


def test_the_embedded_default_runs_on_sqlite_and_the_sqlalchemy_transport(tmp_path):
    from tidings.app.bootstrap import create_celery_app

    shop = build_shop("async", "async")
    shop.config["databases"]["default"] = {
        "provider": "sqlite",
        "database_uri": f"sqlite:///{tmp_path}/shop.db",
    }
    shop.config["event_store"] = {"provider": "sqlite"}
    shop.config["brokers"]["default"] = {
        "provider": "sqlalchemy",
        "url": f"sqla+sqlite:///{tmp_path}/broker.db",
    }
    shop.init()
    shop.create_tables()
    celery = create_celery_app(shop)
    with running_worker(celery, concurrency=1):
        order_id, _ = ship_one(shop)
        wait_until(lambda: state(shop, order_id) == ("SHIPPED", 6), message="embedded end state")
    shop.dispose()


def test_a_three_handler_chain_reaches_the_same_state_async_as_sync(use_provider, redis_app):
    from tests.engine.chain import build_chain, chain_state

    sync_chain = use_provider(build_chain("sync"))
    with sync_chain.domain_context():
        sync_chain.process(sync_chain.registry["command"]["StartJob"](job_id="j1", name="nightly"))
    expected = chain_state(sync_chain, "j1")
    assert expected == ("nightly", 2, "1 hop(s)")
    sync_chain.drop_tables()

    chain = use_provider(build_chain("async"))
    celery = redis_app(chain)
    with running_worker(celery):
        with chain.domain_context():
            chain.process(chain.registry["command"]["StartJob"](job_id="j1", name="nightly"))
        wait_until(lambda: chain_state(chain, "j1") == expected, message="chain end state")
