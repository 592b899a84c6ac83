"""The bookshelf with its async configuration, run by Celery in eager mode (no broker, no worker)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.bookshelf.support import configured
from tidings.app.testing import eager_app
from tidings.examples.bookshelf.api import create_api
from tidings.examples.bookshelf.scenario import (
    DomainDriver,
    HttpDriver,
    expected_final_state,
    final_state,
    run_scenario,
)

ASYNC = {"event_processing": "async", "command_processing": "async", "message_processing": "async"}

pytestmark = pytest.mark.parametrize("provider", ["memory", "sqlite"], indirect=True)


@pytest.fixture
def eager(provider):
    with configured(provider, **ASYNC) as domain:
        eager_app(domain)
        yield domain


def test_in_eager_mode_an_order_answers_202_and_is_confirmed_by_the_time_it_returns(eager):
    with TestClient(create_api(eager)) as client:
        response = client.post(
            "/books",
            json={"title": "Dune", "author": "Frank Herbert", "isbn": "978-0441172719", "price": 9.99},
        )
        assert response.status_code == 202
        book_id = response.json()["id"]
        assert client.post(f"/books/{book_id}/stock", json={"quantity": 5}).status_code == 202
        response = client.post(
            "/orders", json={"customer": "alice", "lines": [{"book_id": book_id, "quantity": 2}]}
        )
        assert response.status_code == 202
        order = client.get(f"/orders/{response.json()['id']}").json()
        assert order["status"] == "CONFIRMED"
        assert client.get("/catalog").json()["books"][0]["in_stock"] == 3


@pytest.mark.parametrize("over_http", [False, True], ids=["in-process", "http"])
def test_the_scenario_in_eager_mode_ends_in_the_exact_expected_state(eager, over_http):
    with TestClient(create_api(eager)) as client:
        driver = HttpDriver(client, eager) if over_http else DomainDriver(eager)
        ids = run_scenario(driver)
        assert final_state(driver, ids) == expected_final_state(ids)
