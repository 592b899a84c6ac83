from __future__ import annotations

import pytest

from tidings import BaseAggregate, BaseEvent, ConfigurationError, Domain, ValidationError, handle
from tidings.fields import HasMany, Identifier, Integer, String, ValueObject


def test_init_lists_every_registry_problem_at_once(tmp_path):
    domain = Domain("shop", root_path=tmp_path)

    @domain.aggregate
    class Order:
        quantity: Integer()

    @domain.event
    class Orphan:
        x: Integer()

    class NotRegistered(BaseEvent):
        y: int = 0

    @domain.command(part_of=Order)
    class Ship:
        order_id: Identifier()

    @domain.event_handler
    class NoPartOf:
        @handle(NotRegistered)
        def on(self, e):
            pass

    @domain.event_handler(part_of=Order, stream_category="nowhere")
    class WrongCategory:
        pass

    @domain.command_handler(part_of=Order)
    class First:
        @handle(Ship)
        def a(self, c):
            pass

    @domain.command_handler(part_of=Order)
    class Second:
        @handle(Ship)
        def b(self, c):
            pass

    with pytest.raises(ConfigurationError) as caught:
        domain.init()
    text = str(caught.value)
    assert "event Orphan: 'part_of' is required" in text
    assert "event handler NoPartOf: 'part_of' is required" in text
    assert "@handle(NotRegistered)" in text
    assert "command Ship has 2 command handlers" in text
    assert "stream_category 'nowhere'" in text


def test_an_unknown_decorator_option_is_refused_with_the_allowed_ones(tmp_path):
    domain = Domain("shop", root_path=tmp_path)
    with pytest.raises(ConfigurationError, match="part_off"):
        domain.event(part_off="Order")(type("E", (), {}))


def test_plain_pydantic_and_protean_style_fields_are_both_first_class(tmp_path):
    domain = Domain("shop", root_path=tmp_path)

    @domain.value_object
    class Money:
        amount: float
        currency: String(max_length=3, default="USD")

    @domain.entity(part_of="Cart")
    class Line:
        sku: String(required=True)
        qty: int = 1

    @domain.aggregate
    class Cart(BaseAggregate):
        owner: str
        total: ValueObject(Money)
        lines: HasMany("Line")
        count: int = 0

    domain.init()
    cart = Cart(owner="ann", total=Money(amount=3.5), lines=[Line(sku="a")])
    assert cart.to_dict()["total"] == {"amount": 3.5, "currency": "USD"}
    assert cart.lines[0].id and cart.lines[0].qty == 1
    with pytest.raises(ValidationError) as caught:
        Cart(owner="ann", total={"amount": 1, "currency": "EURO"})
    assert "total.currency" in caught.value.errors
    with pytest.raises(ValidationError):
        cart.count = "lots"
    with pytest.raises(ValidationError):
        Money(amount=1).amount = 2  # value objects are immutable


def test_events_and_commands_are_immutable(tmp_path):
    domain = Domain("shop", root_path=tmp_path)

    @domain.aggregate
    class Order:
        pass

    @domain.event(part_of=Order)
    class Placed:
        order_id: Identifier(required=True)

    domain.init()
    with pytest.raises(ValidationError):
        Placed(order_id="1").order_id = "2"
