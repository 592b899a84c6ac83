"""The bookshelf's rules, driven through the domain in sync mode on the memory provider."""

from __future__ import annotations

import pytest

from tests.bookshelf.support import configured, everything_written
from tidings import InvalidMessageError, Message, ObjectNotFoundError, ValidationError
from tidings.examples.bookshelf.domain import (
    AddBook,
    AddStock,
    BookAdded,
    BookCatalog,
    BookCatalogProjector,
    BusinessRuleError,
    CancelOrder,
    Inventory,
    LineItem,
    Order,
    OrderEventHandler,
    PlaceOrder,
    ShipOrder,
    StockAdded,
    shortage_reason,
)
from tidings.examples.bookshelf.scenario import DomainDriver

MEMORY = {"provider": "memory"}


@pytest.fixture
def shelf():
    """A sync bookshelf on the memory provider holding Dune (10 in stock) and Emma (3)."""
    with configured(MEMORY) as domain:
        driver = DomainDriver(domain)
        dune = driver.add_book("Dune", "Frank Herbert", "isbn-dune", 9.99)
        emma = driver.add_book("Emma", "Jane Austen", "isbn-emma", 7.5)
        driver.add_stock(dune, 10)
        driver.add_stock(emma, 3)
        yield domain, driver, dune, emma


def test_a_new_book_gets_an_empty_inventory_and_a_catalog_entry():
    with configured(MEMORY) as domain:
        driver = DomainDriver(domain)
        book_id = driver.add_book("Dune", "Frank Herbert", "isbn-dune", 9.99)
        assert driver.stock(book_id) == {"book_id": book_id, "in_stock": 0, "reservations": {}, "reserved": 0}
        assert driver.catalog() == [
            {
                "book_id": book_id,
                "title": "Dune",
                "author": "Frank Herbert",
                "price": 9.99,
                "currency": "USD",
                "in_stock": 0,
            }
        ]


def test_an_order_that_fits_is_confirmed_and_holds_its_stock(shelf):
    domain, driver, dune, emma = shelf
    order_id = driver.place_order("alice", [(dune, 4), (emma, 3)])
    assert driver.order(order_id)["status"] == "CONFIRMED"
    assert driver.stock(dune)["in_stock"] == 6 and driver.stock(dune)["reservations"] == {order_id: 4}
    assert driver.stock(emma)["in_stock"] == 0 and driver.stock(emma)["reserved"] == 3
    assert [(e["title"], e["in_stock"]) for e in driver.catalog()] == [("Dune", 6), ("Emma", 0)]


def test_two_lines_for_the_same_book_are_reserved_together(shelf):
    domain, driver, dune, _ = shelf
    order_id = driver.place_order("alice", [(dune, 4), (dune, 5)])
    assert driver.order(order_id)["status"] == "CONFIRMED"
    assert driver.stock(dune)["reservations"] == {order_id: 9}


def test_a_short_order_reserves_nothing_and_is_cancelled_with_the_shortage_as_reason(shelf):
    domain, driver, dune, emma = shelf
    order_id = driver.place_order("carol", [(dune, 2), (emma, 4)])
    assert driver.order(order_id) | {"lines": None} == {
        "id": order_id,
        "customer": "carol",
        "lines": None,
        "status": "CANCELLED",
        "cancellation_reason": shortage_reason(emma, 4, 3),
    }
    assert driver.stock(dune)["in_stock"] == 10 and driver.stock(dune)["reserved"] == 0
    assert driver.stock(emma)["in_stock"] == 3


def test_shipping_an_order_takes_its_reserved_stock_out_of_the_warehouse(shelf):
    domain, driver, dune, _ = shelf
    order_id = driver.place_order("alice", [(dune, 4)])
    driver.ship_order(order_id)
    assert driver.order(order_id)["status"] == "SHIPPED"
    assert driver.stock(dune) | {"book_id": None} == {
        "book_id": None,
        "in_stock": 6,
        "reservations": {},
        "reserved": 0,
    }


def test_cancelling_a_confirmed_order_puts_its_stock_back(shelf):
    domain, driver, dune, _ = shelf
    order_id = driver.place_order("bob", [(dune, 4)])
    driver.cancel_order(order_id, "changed my mind")
    assert driver.order(order_id)["status"] == "CANCELLED"
    assert driver.order(order_id)["cancellation_reason"] == "changed my mind"
    assert driver.stock(dune)["in_stock"] == 10 and driver.stock(dune)["reserved"] == 0
    assert [(e["title"], e["in_stock"]) for e in driver.catalog()][0] == ("Dune", 10)


@pytest.mark.parametrize("command", [ShipOrder, CancelOrder])
def test_a_cancelled_order_can_be_neither_shipped_nor_cancelled_again(shelf, command):
    domain, driver, dune, _ = shelf
    order_id = driver.place_order("bob", [(dune, 4)])
    driver.cancel_order(order_id, "changed my mind")
    before = everything_written(domain)
    with domain.domain_context(), pytest.raises(BusinessRuleError, match="it is CANCELLED"):
        domain.process(command(order_id=order_id))
    assert everything_written(domain) == before


def test_a_shipped_order_cannot_be_cancelled(shelf):
    domain, driver, dune, _ = shelf
    order_id = driver.place_order("alice", [(dune, 1)])
    driver.ship_order(order_id)
    with domain.domain_context(), pytest.raises(BusinessRuleError, match="allowed only when CONFIRMED"):
        domain.process(CancelOrder(order_id=order_id))
    assert driver.order(order_id)["status"] == "SHIPPED"


def test_a_pending_order_waits_for_the_inventory_and_cannot_be_cancelled_meanwhile():
    order = Order.place("o-1", "alice", [LineItem(book_id="b-1", quantity=1)])
    assert order.status == "PENDING"
    with pytest.raises(BusinessRuleError, match="cannot cancel order o-1: it is PENDING"):
        order.cancel("too slow")
    with pytest.raises(BusinessRuleError, match="cannot ship order o-1"):
        order.ship()


def test_an_order_for_an_unknown_book_is_refused_and_nothing_is_written(shelf):
    domain, driver, dune, _ = shelf
    before = everything_written(domain)
    with domain.domain_context(), pytest.raises(ValidationError) as caught:
        domain.process(
            PlaceOrder(
                customer="eve",
                lines=[LineItem(book_id=dune, quantity=1), LineItem(book_id="nope", quantity=1)],
            )
        )
    assert caught.value.errors == {"lines.1.book_id": ["no book with id 'nope'"]}
    assert everything_written(domain) == before


def test_a_book_whose_isbn_is_taken_is_refused(shelf):
    domain, driver, _, _ = shelf
    before = everything_written(domain)
    with domain.domain_context(), pytest.raises(BusinessRuleError, match="ISBN isbn-dune already exists"):
        domain.process(AddBook(title="Dune II", author="F. H.", isbn="isbn-dune", price=1))
    assert everything_written(domain) == before


def test_stock_cannot_be_added_to_an_unknown_book(shelf):
    domain, _, _, _ = shelf
    with domain.domain_context(), pytest.raises(ObjectNotFoundError):
        domain.process(AddStock(book_id="nope", quantity=1))
    with domain.domain_context():
        assert domain.repository_for(Inventory).filter(book_id="nope") == []


def test_a_supplier_restock_adds_stock_to_the_book_with_that_isbn(shelf):
    domain, driver, dune, emma = shelf
    with domain.domain_context():
        domain.brokers.publish("supplier::restock", {"type": "restock", "isbn": "isbn-emma", "quantity": 6})
    assert driver.stock(emma)["in_stock"] == 9
    assert driver.stock(dune)["in_stock"] == 10
    assert [(e["title"], e["in_stock"]) for e in driver.catalog()] == [("Dune", 10), ("Emma", 9)]


@pytest.mark.parametrize(
    "payload, error, message",
    [
        (
            {"type": "restock", "isbn": "isbn-unknown", "quantity": 6},
            ObjectNotFoundError,
            "unknown ISBN: 'isbn-unknown'",
        ),
        ({"type": "restock", "quantity": 6}, ObjectNotFoundError, "unknown ISBN: None"),
        ({"type": "recall", "isbn": "isbn-emma"}, InvalidMessageError, "'recall' is not 'restock'"),
    ],
)
def test_a_supplier_message_that_cannot_be_applied_raises_a_clear_error_and_changes_nothing(
    shelf, payload, error, message
):
    domain, _, _, _ = shelf
    before = everything_written(domain)
    with domain.domain_context(), pytest.raises(error, match=message):
        domain.brokers.publish("supplier::restock", payload)
    assert everything_written(domain) == before


def test_a_redelivered_order_placed_holds_the_stock_only_once(shelf):
    domain, driver, dune, _ = shelf
    order_id = driver.place_order("alice", [(dune, 4)])
    placed = domain.event_store_database.read_events(f"bookshelf::order-{order_id}")[0]
    domain.run_handler(OrderEventHandler, Message.from_dict({**placed["metadata"], "data": placed["data"]}))
    assert driver.stock(dune)["in_stock"] == 6 and driver.stock(dune)["reservations"] == {order_id: 4}
    assert driver.order(order_id)["status"] == "CONFIRMED"


def test_the_catalog_keeps_the_stock_when_it_arrives_before_the_book(shelf):
    """In async mode the projector may see an inventory event before the book's BookAdded."""
    domain, _, _, _ = shelf
    with domain.domain_context():
        stock = domain.event_message(StockAdded(book_id="b-9", quantity=5, in_stock=5))
        added = domain.event_message(
            BookAdded(
                book_id="b-9",
                title="Ulysses",
                author="James Joyce",
                isbn="isbn-u",
                price=20.0,
                currency="EUR",
            )
        )
    domain.run_handler(BookCatalogProjector, stock)
    domain.run_handler(BookCatalogProjector, added)
    with domain.domain_context():
        entry = domain.repository_for(BookCatalog).get("b-9")
    assert entry.to_dict() == {
        "book_id": "b-9",
        "title": "Ulysses",
        "author": "James Joyce",
        "price": 20.0,
        "currency": "EUR",
        "in_stock": 5,
    }
