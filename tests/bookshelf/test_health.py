"""GET /health: database, broker and outbox lag, or 503 naming what does not answer."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.bookshelf.support import configured
from tidings.examples.bookshelf.api import create_api


@pytest.mark.parametrize("provider", ["memory", "sqlite"], indirect=True)
def test_health_answers_ok_when_the_database_answers(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["database"]["ok"] is True
    assert body["outbox"]["pending"] == 0


def test_health_reports_the_outbox_lag_of_queued_commands(tmp_path):
    provider = {"provider": "sqlite", "database_uri": f"sqlite:///{tmp_path}/b.db"}
    # configured() puts the default broker on inline (memory://): no worker is needed
    with (
        configured(provider, command_processing="async", event_processing="async") as domain,
        TestClient(create_api(domain)) as client,
    ):
        client.post(
            "/books",
            json={"title": "Dune", "author": "Frank Herbert", "isbn": "978-0441172719", "price": 9.99},
        )
        body = client.get("/health").json()
    assert body["broker"] == {"ok": True, "transport": "memory"}
    assert body["outbox"]["pending"] >= 0 and body["outbox"]["published"] + body["outbox"]["pending"] >= 1


def test_health_answers_503_naming_the_database_that_does_not_answer(tmp_path):
    with (
        configured({"provider": "sqlite", "database_uri": f"sqlite:///{tmp_path}/b.db"}) as domain,
        TestClient(create_api(domain)) as client,
    ):
        database = domain.databases["default"]
        uri = database.uri
        database.dispose()
        (tmp_path / "a-file").write_text("")
        database.uri = f"sqlite:///{tmp_path}/a-file/bookshelf.db"  # a folder that cannot exist
        try:
            response = client.get("/health")
        finally:
            database.dispose()
            database.uri = uri
    assert response.status_code == 503
    assert response.json()["status"] == "degraded"
    assert response.json()["database"]["ok"] is False


def test_health_reports_every_broker_and_names_the_one_that_does_not_answer(tmp_path):
    with configured({"provider": "sqlite", "database_uri": f"sqlite:///{tmp_path}/b.db"}) as domain:
        domain.config["brokers"]["feed"] = {"provider": "redis", "url": "redis://:s3cret@127.0.0.1:1/0"}
        domain.init()
        with TestClient(create_api(domain)) as client:
            response = client.get("/health")
    assert response.status_code == 503
    brokers = response.json()["brokers"]
    assert brokers["default"] == {
        "provider": "inline",
        "healthy": True,
        "message_counts": {},
        "consumer_groups": {},
        "dlq_depth": 0,
    }
    assert brokers["feed"]["healthy"] is False and brokers["feed"]["provider"] == "redis"
    assert "s3cret" not in response.text
