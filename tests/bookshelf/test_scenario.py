"""The bookshelf scenario end to end in sync mode: in-process and over HTTP, on each provider."""

from __future__ import annotations

import pytest

from tidings.examples.bookshelf.scenario import (
    DomainDriver,
    HttpDriver,
    expected_final_state,
    final_state,
    run_scenario,
)


def test_the_scenario_driven_in_process_ends_in_the_exact_expected_state(bookshelf):
    driver = DomainDriver(bookshelf)
    ids = run_scenario(driver)
    assert final_state(driver, ids) == expected_final_state(ids)


@pytest.mark.parametrize("provider", ["memory", "sqlite"], indirect=True)
def test_the_scenario_driven_over_http_ends_in_the_same_state(client, bookshelf):
    driver = HttpDriver(client, bookshelf)
    ids = run_scenario(driver)
    assert final_state(driver, ids) == expected_final_state(ids)
    # the HTTP reads agree with the domain's own
    assert final_state(DomainDriver(bookshelf), ids) == expected_final_state(ids)


def test_every_step_of_the_scenario_is_recorded_in_the_event_store_in_causal_order(bookshelf):
    ids = run_scenario(DomainDriver(bookshelf))
    rejected = ids["orders"]["rejected"]
    events = bookshelf.event_store_database.read_events(f"bookshelf::order-{rejected}")
    assert [e["type"] for e in events] == ["Bookshelf.OrderPlaced.v1", "Bookshelf.OrderRejected.v1"]
    # the rejection was caused by the inventory's shortage, itself caused by OrderPlaced
    shortage = [
        e
        for e in bookshelf.event_store_database.read_events("bookshelf::inventory")
        if e["type"] == "Bookshelf.StockShortageDetected.v1"
    ]
    assert [e["data"]["order_id"] for e in shortage] == [rejected]
    assert shortage[0]["metadata"]["causation_id"] == events[0]["message_id"]
    assert events[1]["metadata"]["causation_id"] == shortage[0]["message_id"]
