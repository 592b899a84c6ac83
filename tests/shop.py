"""The kernel issue's example domain, built fresh for each test."""

from __future__ import annotations

from tidings import Domain, current_domain, handle
from tidings.fields import Identifier, Integer, String


def build_shop(event_processing: str = "sync", command_processing: str = "sync") -> Domain:
    domain = Domain("shop")
    domain.config["event_processing"] = event_processing
    domain.config["command_processing"] = command_processing
    domain.config["message_processing"] = "sync"

    @domain.event(part_of="Order")
    class OrderShipped:
        order_id: Identifier(required=True)
        book_id: Identifier(required=True)
        quantity: Integer(required=True)

    @domain.aggregate
    class Order:
        book_id: Identifier(required=True)
        quantity: Integer(required=True)
        status: String(choices=["PENDING", "SHIPPED"], default="PENDING")

        def ship_order(self):
            self.status = "SHIPPED"
            self.raise_(OrderShipped(order_id=self.id, book_id=self.book_id, quantity=self.quantity))

    @domain.aggregate
    class Inventory:
        book_id: Identifier(required=True)
        in_stock: Integer(required=True)

    @domain.command(part_of="Order")
    class ShipOrder:
        order_id: Identifier(required=True)

    @domain.command_handler(part_of=Order)
    class OrderCommandHandler:
        @handle(ShipOrder)
        def ship(self, command: ShipOrder):
            repo = current_domain.repository_for(Order)
            order = repo.get(command.order_id)
            order.ship_order()
            repo.add(order)
            return order.status

    @domain.event_handler(part_of=Inventory, stream_category="order")
    class ManageInventory:
        @handle(OrderShipped)
        def reduce(self, event: OrderShipped):
            repo = current_domain.repository_for(Inventory)
            inv = repo.find_by(book_id=event.book_id)
            inv.in_stock -= event.quantity
            repo.add(inv)

    return domain
