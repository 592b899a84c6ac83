"""`tidings.app.web`, the FastAPI helper, through FastAPI's TestClient: the domain and its
runtime start once per process, route handlers get the domain, a `ValidationError` is a 422
naming the field, an unknown object a 404."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from tests.shop import build_shop
from tidings.app import bootstrap
from tidings.app.web import DomainDep, create_app


class OrderIn(BaseModel):
    book_id: str | None = None
    quantity: int


def shop_api(shop):
    api = create_app(shop, create_tables=True)
    Order = shop.registry["aggregate"]["Order"]
    ShipOrder = shop.registry["command"]["ShipOrder"]

    @api.post("/orders", status_code=201)
    def place(body: OrderIn, domain: DomainDep) -> dict:
        with domain.domain_context():  # Order() checks the fields: book_id is required
            return domain.repository_for(Order).add(Order(**body.model_dump())).to_dict()

    @api.get("/orders/{order_id}")
    def show(order_id: str, domain: DomainDep) -> dict:
        with domain.domain_context():
            return domain.repository_for(Order).get(order_id).to_dict()

    @api.post("/orders/{order_id}/ship", status_code=202)
    def ship(order_id: str, domain: DomainDep) -> dict:
        with domain.domain_context():
            domain.repository_for(Order).get(order_id)  # 404 before anything is queued
            return {"message_id": domain.process(ShipOrder(order_id=order_id))}

    return api


@pytest.fixture
def shop(tmp_path):
    shop = build_shop("async", "async")
    shop.config["databases"]["default"] = {"provider": "sqlite", "database_uri": f"sqlite:///{tmp_path}/s.db"}
    shop.config["event_store"] = {"provider": "sqlite"}
    yield shop
    shop.dispose()


def test_a_valid_request_goes_through_the_domain(shop):
    with TestClient(shop_api(shop)) as client:
        created = client.post("/orders", json={"book_id": "b-1", "quantity": 2})
        assert created.status_code == 201, created.text
        order_id = created.json()["id"]
        assert client.get(f"/orders/{order_id}").json()["quantity"] == 2
        shipped = client.post(f"/orders/{order_id}/ship")
        assert shipped.status_code == 202 and len(shipped.json()["message_id"]) == 36
    assert shop.storage.outbox.status().pending == 1  # the command waits in the outbox


def test_a_validation_error_is_a_422_naming_the_field(shop):
    with TestClient(shop_api(shop)) as client:
        response = client.post("/orders", json={"quantity": 2})
    assert response.status_code == 422
    body = response.json()
    assert list(body["errors"]) == ["book_id"]
    assert body["errors"]["book_id"] and "book_id" in body["detail"]


def test_an_unknown_object_is_a_404(shop):
    with TestClient(shop_api(shop)) as client:
        assert client.get("/orders/nope").status_code == 404
        response = client.post("/orders/nope/ship")
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]
    assert shop.storage.outbox.status().pending == 0  # nothing was queued


def test_the_domain_and_runtime_start_once_per_process(shop, monkeypatch):
    inits, builds = [], []
    init, build = shop.init, bootstrap.bootstrap
    monkeypatch.setattr(shop, "init", lambda *a, **k: inits.append(1) or init(*a, **k))
    monkeypatch.setattr(bootstrap, "bootstrap", lambda *a, **k: builds.append(1) or build(*a, **k))
    first, second = shop_api(shop), shop_api(shop)  # two apps, e.g. a mounted sub-application
    with TestClient(first) as client:
        assert client.get("/orders/nope").status_code == 404
    with TestClient(first), TestClient(second):  # the lifespan runs again, twice
        pass
    assert (len(inits), len(builds)) == (1, 1)
    runtime = first.state.tidings_runtime
    assert runtime is second.state.tidings_runtime is bootstrap.runtime_for(shop)
    assert shop.engine is runtime.engine  # commits hand their wake-up to this runtime


def test_a_sync_domain_builds_no_runtime(tmp_path):
    shop = build_shop("sync", "sync")
    shop.config["databases"]["default"] = {"provider": "memory"}
    with TestClient(shop_api(shop)) as client:
        assert client.get("/orders/nope").status_code == 404
    assert client.app.state.tidings_runtime is None
