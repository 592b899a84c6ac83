"""The reference's processing-events document (`../shared/reference/processing-events.txt`):
raising with `current_domain.publish`, and a subscriber of the domain's own events, which
receives each event as a dict, inside a unit of work, once the event is committed."""

from __future__ import annotations

import pytest

from tidings import ConfigurationError, Domain, ObjectNotFoundError, current_domain
from tidings.app.testing import eager_app
from tidings.fields import DateTime, Identifier, Integer, List, String


def shop(event_processing: str = "sync") -> Domain:
    domain = Domain("shop")
    domain.config["event_processing"] = event_processing
    domain.config["command_processing"] = event_processing
    domain.config["message_processing"] = "sync"

    @domain.aggregate
    class Order:
        customer: String()

    @domain.event(part_of=Order)
    class OrderCancelled:
        order_id: Identifier(required=True)
        order_items: List(content_type=dict)

    @domain.aggregate
    class Stock:
        sku: Identifier(identifier=True)
        quantity: Integer(default=0)

        def add_quantity(self, qty: int) -> None:
            self.quantity += qty

    # --- the document's subscriber (its decorator as the reference's docs write it) ---
    @domain.subscriber(event="OrderCancelled")
    class UpdateInventory:
        """Update Stock Inventory and replenish order items"""

        def __call__(self, event: dict) -> None:
            stock_repo = current_domain.repository_for(Stock)
            for item in event["order_items"]:
                stock = stock_repo.get(item["sku"])
                stock.add_quantity(item["qty"])

                stock_repo.add(stock)

    # --- end ---
    return domain


def cancel_an_order(domain: Domain) -> int:
    Order, Stock = domain.registry["aggregate"]["Order"], domain.registry["aggregate"]["Stock"]
    OrderCancelled = domain.registry["event"]["OrderCancelled"]
    with domain.domain_context():
        domain.repository_for(Stock).add(Stock(sku="dune", quantity=1))
        order = Order(customer="ada")
        order.raise_(OrderCancelled(order_id=order.id, order_items=[{"sku": "dune", "qty": 2}]))
        domain.repository_for(Order).add(order)
        return domain.repository_for(Stock).get("dune").quantity


def test_a_subscriber_of_a_domain_event_receives_it_as_a_dict_after_the_commit():
    domain = shop().init()
    assert cancel_an_order(domain) == 3
    # it runs as a handler of the event's stream
    [subscriber] = domain.registry["event_handler"].values()
    assert subscriber.__name__ == "UpdateInventory"
    assert domain.names.handler_categories(subscriber) == ["shop::order"]


@pytest.mark.parametrize("provider", ["memory", "sqlite"], indirect=True)
def test_a_subscriber_of_a_domain_event_runs_on_the_engine_in_its_own_queue(use_provider):
    domain = use_provider(shop(event_processing="async"))
    celery = eager_app(domain)
    assert "tidings.shop.UpdateInventory" in celery.tasks
    assert cancel_an_order(domain) == 3


def test_a_failing_subscriber_rolls_its_own_work_back_and_not_the_event():
    domain = shop()
    Stock = domain.registry["aggregate"]["Stock"]
    domain.init()
    with domain.domain_context():  # no stock "dune": the subscriber's repo.get fails
        Order, OrderCancelled = (
            domain.registry["aggregate"]["Order"],
            domain.registry["event"]["OrderCancelled"],
        )
        order = Order(customer="ada")
        order.raise_(OrderCancelled(order_id=order.id, order_items=[{"sku": "dune", "qty": 2}]))
        with pytest.raises(ObjectNotFoundError, match="dune"):
            domain.repository_for(Order).add(order)
        assert domain.repository_for(Order).get(order.id).customer == "ada"  # committed before
        assert domain.repository_for(Stock).all() == []


def test_subscribing_to_an_event_that_is_not_registered_fails_at_init():
    domain = Domain("shop")

    @domain.subscriber(event="OrderShipped")
    class Notify:
        def __call__(self, event: dict) -> None: ...

    with pytest.raises(ConfigurationError, match="event 'OrderShipped' is not a registered event"):
        domain.init()


def test_a_subscriber_takes_an_event_or_a_stream_not_both():
    domain = Domain("shop")
    with pytest.raises(ConfigurationError, match="takes 'event', not"):

        @domain.subscriber(event="OrderShipped", stream="orders")
        class Both:
            def __call__(self, event: dict) -> None: ...


def test_raising_events_with_current_domain_publish():
    domain = Domain("roles")
    domain.config["event_processing"] = "sync"
    added = []

    @domain.aggregate
    class Role:
        name = String(max_length=15, required=True)
        created_on = DateTime()

        @classmethod
        def add_new_role(cls, params):
            """Factory method to add a new Role to the system"""
            new_role = Role(name=params["name"])
            current_domain.publish(RoleAdded(role_name=new_role.name, added_on=new_role.created_on))
            return new_role

    @domain.event(part_of=Role)
    class RoleAdded:
        role_name = String(max_length=15, required=True)
        added_on = DateTime()

    @domain.subscriber(event=RoleAdded)
    class Audit:
        def __call__(self, event: dict) -> None:
            added.append(event["role_name"])

    domain.init()
    with domain.domain_context():
        role = Role.add_new_role({"name": "ADMIN"})
    assert role.name == "ADMIN" and added == ["ADMIN"]
