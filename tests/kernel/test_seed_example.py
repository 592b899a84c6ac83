"""The seed document's inventory example (event-handlers.txt), imports changed only, on every
provider: the handler is part_of Order and uses `domain.repository_for` and a domain method."""

from __future__ import annotations

from tidings import Domain, handle
from tidings.fields import Identifier, Integer, String


def build(tmp_path) -> Domain:
    domain = Domain(root_path=tmp_path)
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
            self.raise_(
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

    @domain.event_handler(part_of=Order)
    class ManageInventory:
        @handle(OrderShipped)
        def reduce_stock_level(self, event: OrderShipped):
            repo = domain.repository_for(Inventory)
            inventory = repo.find_by(book_id=event.book_id)
            inventory.reduce_stock(event.quantity)
            repo.add(inventory)

    return domain


def test_the_seed_inventory_example_runs_on_every_provider(tmp_path, use_provider):
    domain = use_provider(build(tmp_path))
    Order, Inventory = domain.registry["aggregate"]["Order"], domain.registry["aggregate"]["Inventory"]
    with domain.domain_context():
        order = Order(book_id="book-1", quantity=10, total_amount=100)
        domain.repository_for(Order).add(order)
        inventory = Inventory(book_id="book-1", in_stock=100)
        domain.repository_for(Inventory).add(inventory)
        order.ship_order()
        domain.repository_for(Order).add(order)
        stock = domain.repository_for(Inventory).get(inventory.id)
        assert stock.to_dict() == {"id": inventory.id, "book_id": "book-1", "in_stock": 90}
        [shipped] = domain.read_messages("test_seed_example::order")
        assert shipped.type == "TestSeedExample.OrderShipped.v1"
        assert shipped.data["quantity"] == 10 and shipped.metadata["global_position"] >= 1
