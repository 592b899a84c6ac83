"""The `tidings_worker` fixture of the pytest plugin: the user's domain on a real Celery worker
in the test process, waited on until quiescent, its dead letters read back."""

from __future__ import annotations

import pytest

from tests.shop import build_shop
from tidings.app.embedded_worker import NotQuiescentError, embedded_worker


@pytest.fixture
def tidings_domain():
    shop = build_shop("async", "async")
    # one quick retry, then the DLQ: a failing handler is dead-lettered within a second
    shop.config["server"]["stream_subscription"].update(max_retries=1, retry_delay_seconds=0.3)
    return shop


def stock_and_order(shop, in_stock: int | None):
    Order = shop.registry["aggregate"]["Order"]
    Inventory = shop.registry["aggregate"]["Inventory"]
    order = shop.repository_for(Order).add(Order(book_id="b", quantity=2))
    if in_stock is not None:
        shop.repository_for(Inventory).add(Inventory(book_id="b", in_stock=in_stock))
    return order, Inventory


def test_commands_and_events_are_handled_by_the_worker_then_it_is_quiescent(tidings_worker):
    shop = tidings_worker.domain
    order, Inventory = stock_and_order(shop, in_stock=3)
    shop.process(shop.registry["command"]["ShipOrder"](order_id=order.id))
    tidings_worker.wait_until_quiescent(timeout=30)
    # command -> event -> inventory, both hops on the worker, not inline
    assert shop.repository_for(Inventory).find_by(book_id="b").in_stock == 1
    assert tidings_worker.celery.tidings_runtime.stats["handled"] == 2
    assert tidings_worker.dead_letters() == []


def test_a_failing_handler_is_retried_then_its_dead_letter_is_read(tidings_worker):
    shop = tidings_worker.domain
    order, _ = stock_and_order(shop, in_stock=None)  # no inventory: ManageInventory fails
    shop.process(shop.registry["command"]["ShipOrder"](order_id=order.id))
    tidings_worker.wait_until_quiescent(timeout=30)  # only once the retry ran and failed too
    (letter,) = tidings_worker.dead_letters("ManageInventory")
    assert letter.error_type == "ObjectNotFoundError"
    assert letter.attempts == 2  # the first run and its one retry
    assert letter.body["type"] == "Shop.OrderShipped.v1"
    assert tidings_worker.dead_letters("OrderCommandHandler") == []
    with pytest.raises(LookupError, match="known: \\['ManageInventory', 'OrderCommandHandler'\\]"):
        tidings_worker.dead_letters("NoSuchHandler")


def test_waiting_fails_naming_what_is_still_owed_while_a_retry_is_due():
    shop = build_shop("async", "async")
    shop.config["server"]["stream_subscription"].update(max_retries=1, retry_delay_seconds=60)
    with embedded_worker(shop) as worker:
        order, _ = stock_and_order(worker.domain, in_stock=None)  # ManageInventory fails
        worker.domain.process(shop.registry["command"]["ShipOrder"](order_id=order.id))
        with pytest.raises(NotQuiescentError, match=r"not quiescent after 2s: 0 outbox rows, 1 runs owed"):
            worker.wait_until_quiescent(timeout=2)  # its retry is a minute away
        assert worker.dead_letters() == []  # not given up on yet


def test_the_domain_is_put_back_afterwards(tmp_path):
    shop = build_shop("async", "async")
    shop.config["databases"]["default"] = {
        "provider": "sqlite",
        "database_uri": f"sqlite:///{tmp_path}/dev.db",
    }
    shop.init()
    before = (shop.engine, dict(shop.config["databases"]), dict(shop.config["brokers"]))
    with embedded_worker(shop) as worker:
        assert worker.domain.settings.brokers["default"].provider == "memory"
        assert "tidings-test-" in worker.domain.settings.databases["default"].database_uri
    assert (shop.engine, shop.config["databases"], shop.config["brokers"]) == before
    assert shop.settings.databases["default"].database_uri.endswith("dev.db")
