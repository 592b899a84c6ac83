"""`event._metadata` as the reference has it: on the event right after `raise_()`, kept by the
commit, and on every command and received message."""

from __future__ import annotations

from tests.shop import build_shop
from tidings import current_domain, handle


def shop_with_a_spy(seen: list):
    domain = build_shop()
    OrderShipped = domain.registry["event"]["OrderShipped"]

    @domain.event_handler(part_of="Order")
    class Spy:
        @handle(OrderShipped)
        def record(self, event):
            seen.append(event._metadata)

    return domain.init()


def stocked(domain):
    Order, Inventory = domain.registry["aggregate"]["Order"], domain.registry["aggregate"]["Inventory"]
    order = domain.repository_for(Order).add(Order(book_id="b-1", quantity=2))
    domain.repository_for(Inventory).add(Inventory(book_id="b-1", in_stock=10))
    return order


def test_a_raised_event_has_its_metadata_right_after_raise_():
    domain = shop_with_a_spy([])
    with domain.domain_context():
        order = stocked(domain)
        order.ship_order()
        [event] = order._events
        meta = event._metadata
        assert meta.headers.stream == f"shop::order-{order.id}"
        assert meta.headers.type == "Shop.OrderShipped.v1"
        assert meta.headers.id and meta.headers.time
        assert meta.domain.kind == "EVENT"
        assert meta.domain.stream_category == "shop::order"
        assert meta.domain.fqn.endswith(".OrderShipped") and meta.domain.version == 1
        assert meta.domain.correlation_id and meta.domain.causation_id is None
        assert meta.envelope.checksum and meta.envelope.specversion == "1.0"
        assert meta.event_store.position is None  # not stored yet
        # the flat names of the reference's earlier releases
        assert (meta.id, meta.stream, meta.type, meta.kind) == (
            meta.headers.id,
            meta.headers.stream,
            meta.headers.type,
            "EVENT",
        )
        assert meta.timestamp == meta.headers.time
        assert meta.to_dict()["headers"]["id"] == meta.id


def test_the_commit_stores_the_event_under_the_id_it_was_raised_with():
    seen: list = []
    domain = shop_with_a_spy(seen)
    with domain.domain_context():
        order = stocked(domain)
        order.ship_order()
        [event] = order._events
        raised = event._metadata
        domain.repository_for(type(order)).add(order)
    [stored] = [m for m in domain.read_messages("shop::order") if m.type == "Shop.OrderShipped.v1"]
    assert stored.id == raised.id == event._metadata.id
    assert stored.time == raised.timestamp and stored.correlation_id == raised.correlation_id
    assert event._metadata.sequence_id is not None
    # the handler receives it with the same metadata; read back from the store, it has positions
    [received] = seen
    assert received.id == raised.id
    assert domain.from_message(stored)._metadata.event_store.position is not None


def test_an_event_raised_while_handling_a_command_is_caused_by_it_at_raise_time():
    domain = build_shop()
    ShipOrder = domain.registry["command"]["ShipOrder"]
    Order = domain.registry["aggregate"]["Order"]
    raised: list = []

    @domain.command_handler(part_of="Order")
    class Shipping:
        @handle(ShipOrder)
        def ship(self, command):
            order = current_domain.repository_for(Order).get(command.order_id)
            order.ship_order()
            raised.append(order._events[-1]._metadata)
            current_domain.repository_for(Order).add(order)

    del domain.registry["command_handler"]["OrderCommandHandler"]
    domain.init()
    with domain.domain_context():
        order = stocked(domain)
        command = ShipOrder(order_id=order.id)
        domain.process(command)
    [meta] = raised
    assert meta.causation_id == command._metadata.id
    assert meta.correlation_id == command._metadata.correlation_id
    assert command._metadata.kind == "COMMAND"
    assert command._metadata.stream == f"shop::order:command-{order.id}"


def test_an_event_has_no_metadata_before_its_domain_is_initialised():
    domain = build_shop()  # not initialised
    Order = domain.registry["aggregate"]["Order"]
    order = Order(book_id="b", quantity=1)
    order.ship_order()
    assert order._events[0]._metadata is None
