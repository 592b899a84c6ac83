"""The envelope's checksum on a worker path: a message altered in transit is dead-lettered
with the reason, and the handler never sees it."""

from __future__ import annotations

import pytest

from tests.shop import build_shop
from tidings.app.testing import eager_app
from tidings.tasks import dlq
from tidings.tasks.naming import queue_name, task_name

pytestmark = pytest.mark.parametrize("provider", ["memory", "sqlite"], indirect=True)


def test_a_tampered_message_lands_in_the_dlq_with_the_checksum_mismatch_as_its_reason(use_provider):
    domain = use_provider(build_shop(event_processing="async", command_processing="async"))
    celery = eager_app(domain)
    Order, Inventory = domain.registry["aggregate"]["Order"], domain.registry["aggregate"]["Inventory"]
    ShipOrder = domain.registry["command"]["ShipOrder"]
    handler = domain.registry["event_handler"]["ManageInventory"]
    queue = queue_name(domain, handler)
    dlq.purge(celery, queue)  # the in-memory transport outlives a test
    with domain.domain_context():
        order = domain.repository_for(Order).add(Order(book_id="b-1", quantity=2))
        inventory = domain.repository_for(Inventory).add(Inventory(book_id="b-1", in_stock=10))
        domain.process(ShipOrder(order_id=order.id))
        assert domain.repository_for(Inventory).get(inventory.id).in_stock == 8  # the intact path

        [shipped] = [m for m in domain.read_messages("shop::order") if m.type == "Shop.OrderShipped.v1"]
        tampered = shipped.to_dict()
        tampered["id"] = "tampered-1"  # a fresh id, so the inbox cannot be what skips it
        tampered["data"]["quantity"] = 7  # altered on the way; the checksum is the original's
        celery.tasks[task_name(domain, handler)].apply_async(args=[tampered], queue=queue)

        assert domain.repository_for(Inventory).get(inventory.id).in_stock == 8
    [entry] = dlq.list_entries(celery, queue)
    assert entry["message_id"] == "tampered-1"
    assert entry["error_type"] == "MessageIntegrityError"
    assert "checksum mismatch" in entry["error_message"]
    assert entry["attempts"] == 1  # never retried: it cannot get better
    assert entry["body"]["data"]["quantity"] == 7
    dlq.purge(celery, queue)
