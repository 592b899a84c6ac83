"""The reference's event-handlers document (`../shared/reference/event-handlers.txt`): its
example as written (imports changed), and what it says `@handle` accepts."""

from __future__ import annotations

import pytest

from tidings import ConfigurationError


def test_the_documents_example_reduces_the_stock_level():
    # --- the document's example, `protean` -> `tidings` in the imports ---
    from tidings import Domain, handle
    from tidings.fields import Identifier, Integer, String

    domain = Domain()
    domain.config["event_processing"] = "sync"

    @domain.event(part_of="Order")
    class OrderShipped:
        order_id: Identifier(required=True)
        book_id: Identifier(required=True)
        quantity: Integer(required=True)
        total_amount: Integer(required=True)

    @domain.aggregate
    class Order:
        book_id: Identifier(required=True)
        quantity: Integer(required=True)
        total_amount: Integer(required=True)
        status: String(choices=["PENDING", "SHIPPED", "DELIVERED"], default="PENDING")

        def ship_order(self):
            self.status = "SHIPPED"
            self.raise_(  # (1)
                OrderShipped(
                    order_id=self.id,
                    book_id=self.book_id,
                    quantity=self.quantity,
                    total_amount=self.total_amount,
                )
            )

    @domain.aggregate
    class Inventory:
        book_id: Identifier(required=True)
        in_stock: Integer(required=True)

        def reduce_stock(self, quantity: int) -> None:
            self.in_stock -= quantity

    @domain.event_handler(part_of=Order)  # (2)
    class ManageInventory:
        @handle(OrderShipped)
        def reduce_stock_level(self, event: OrderShipped):
            repo = domain.repository_for(Inventory)
            inventory = repo.find_by(book_id=event.book_id)
            inventory.reduce_stock(event.quantity)  # (3)
            repo.add(inventory)

    domain.init()
    with domain.domain_context():
        # Persist Order
        order = Order(book_id="book-1", quantity=10, total_amount=100)
        domain.repository_for(Order).add(order)
        # Persist Inventory
        inventory = Inventory(book_id="book-1", in_stock=100)
        domain.repository_for(Inventory).add(inventory)
        # Ship Order
        order.ship_order()
        domain.repository_for(Order).add(order)
        # Verify that Inventory Level has been reduced
        stock = domain.repository_for(Inventory).get(inventory.id)
        print(stock.to_dict())
        assert stock.in_stock == 90
    # --- end ---
    assert stock.to_dict() == {"book_id": "book-1", "in_stock": 90, "id": inventory.id}


def library(target, calls):
    """A domain whose event handler says `@handle(target)`."""
    from tidings import Domain, handle
    from tidings.fields import Identifier

    domain = Domain("library")
    domain.config["event_processing"] = "sync"

    @domain.aggregate
    class Book:
        title: Identifier(required=True)

    @domain.event(part_of=Book)
    class BookAdded:
        book_id: Identifier(required=True)

    @domain.event(part_of=Book)
    class BookRemoved:
        book_id: Identifier(required=True)

    @domain.event_handler(part_of=Book)
    class Catalogue:
        @handle(target)
        def on(self, event):
            calls.append(type(event).__name__)

    return domain, Book, BookAdded, BookRemoved


@pytest.mark.parametrize("target", ["BookAdded", "Library.BookAdded.v1"])
def test_handle_with_the_name_or_type_string_of_a_registered_event_is_called(target):
    calls: list = []
    domain, Book, BookAdded, BookRemoved = library(target, calls)
    domain.init()
    with domain.domain_context():
        domain.publish([BookAdded(book_id="b-1"), BookRemoved(book_id="b-1")])
    assert calls == ["BookAdded"]


def test_handle_with_a_string_naming_nothing_fails_at_init_naming_the_fix():
    domain, *_ = library("BookAded", [])
    with pytest.raises(ConfigurationError) as caught:
        domain.init()
    message = str(caught.value)
    assert "Catalogue: @handle('BookAded') names no registered event" in message
    assert "Library.BookAdded.v1" in message and '"$any"' in message


def test_an_any_handler_receives_every_event_of_its_stream():
    calls: list = []
    domain, Book, BookAdded, BookRemoved = library("$any", calls)
    domain.init()
    with domain.domain_context():
        book = Book(title="Dune")
        book.raise_(BookAdded(book_id=book.id))
        domain.repository_for(Book).add(book)
        domain.publish(BookRemoved(book_id=book.id))
    assert calls == ["BookAdded", "BookRemoved"]
