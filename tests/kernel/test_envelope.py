from __future__ import annotations

import json

import pytest

from tests.shop import build_shop
from tidings import InvalidMessageError, Message, MessageIntegrityError, UnknownMessageTypeError
from tidings.domain.envelope import checksum_of


@pytest.fixture
def shop():
    return build_shop().init()


def test_an_event_envelope_round_trips_through_json_losslessly(shop):
    OrderShipped = shop.registry["event"]["OrderShipped"]
    event = OrderShipped(order_id="o-1", book_id="b-1", quantity=2)
    message = shop.event_message(event)
    assert message.type == "Shop.OrderShipped.v1"
    assert message.kind == "EVENT"
    assert message.stream == "shop::order-o-1"
    assert message.stream_category == "shop::order"
    decoded = Message.from_dict(json.loads(message.to_json()))
    assert decoded == message
    again = shop.from_message(decoded)
    assert again == event and type(again) is OrderShipped


def test_a_command_travels_on_the_command_stream_of_its_aggregate(shop):
    ShipOrder = shop.registry["command"]["ShipOrder"]
    message = shop.bus.envelopes.command(ShipOrder(order_id="o-9"))
    assert message.kind == "COMMAND"
    assert message.stream == "shop::order:command-o-9"
    assert message.stream_category == "shop::order:command"


def test_an_unknown_type_is_a_typed_error(shop):
    raw = shop.event_message(
        shop.registry["event"]["OrderShipped"](order_id="o", book_id="b", quantity=1)
    ).to_dict()
    raw["type"] = "Shop.Nope.v1"
    with pytest.raises(UnknownMessageTypeError):
        shop.from_message(raw)


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '{"id": "x"}'])
def test_malformed_envelopes_are_typed_errors(raw):
    with pytest.raises(InvalidMessageError):
        Message.from_dict(raw)


def test_bad_data_in_a_known_type_is_a_typed_error(shop):
    raw = shop.event_message(
        shop.registry["event"]["OrderShipped"](order_id="o", book_id="b", quantity=1)
    ).to_dict()
    raw["data"]["quantity"] = "many"
    raw["checksum"] = checksum_of(raw["data"])  # built that way by its producer: intact, but invalid
    with pytest.raises(InvalidMessageError, match="quantity"):
        shop.from_message(raw)


def test_a_message_carries_the_checksum_of_its_data_and_decoding_verifies_it(shop):
    event = shop.registry["event"]["OrderShipped"](order_id="o", book_id="b", quantity=1)
    raw = shop.event_message(event).to_dict()
    assert raw["checksum"] == checksum_of({"order_id": "o", "book_id": "b", "quantity": 1})
    assert Message.from_dict(json.dumps(raw)).checksum == raw["checksum"]
    raw["data"]["quantity"] = 2
    with pytest.raises(MessageIntegrityError, match="checksum mismatch"):
        Message.from_dict(raw)


def test_a_message_stored_without_a_checksum_still_decodes(shop):
    event = shop.registry["event"]["OrderShipped"](order_id="o", book_id="b", quantity=1)
    raw = shop.event_message(event).to_dict()
    del raw["checksum"]  # a row written before messages had one
    decoded = Message.from_dict(raw)
    assert shop.from_message(decoded) == event
    assert decoded.checksum == checksum_of(raw["data"])  # filled in on decoding
