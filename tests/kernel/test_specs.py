"""Handler specs: each handler, after init(), is a frozen record derived once."""

from __future__ import annotations

import dataclasses

import pytest

from tests.shop import build_shop
from tidings import IncorrectUsageError
from tidings.domain.specs import HandlerKind


def test_each_handler_has_a_frozen_spec_with_its_names_categories_and_settings():
    shop = build_shop("async", "async").init()
    inventory = shop.registry["event_handler"]["ManageInventory"]
    spec = shop.bus.routes.spec(inventory)
    assert spec.kind is HandlerKind.EVENT_HANDLER
    assert (spec.task_name, spec.queue) == ("tidings.shop.ManageInventory", "shop.manage_inventory")
    assert spec.categories == ("shop::order",)
    assert spec.subscription.max_retries == 3 and not spec.polled and spec.pack_size is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.queue = "elsewhere"  # type: ignore[misc]


def test_settings_are_resolved_once_at_init_not_per_call():
    shop = build_shop("async", "async").init()
    handler = shop.registry["command_handler"]["OrderCommandHandler"]
    assert shop.subscription_settings(handler) is shop.subscription_settings(handler)
    assert [s.kind for s in shop.bus.routes.specs.values()] == [
        HandlerKind.COMMAND_HANDLER,
        HandlerKind.EVENT_HANDLER,
    ]


def test_a_class_that_is_not_a_registered_handler_has_no_spec():
    shop = build_shop().init()
    with pytest.raises(IncorrectUsageError, match="not a registered handler"):
        shop.bus.routes.spec(shop.registry["aggregate"]["Order"])
