"""The HTTP contract: status codes, bodies, and no write at all on a rejected request."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.bookshelf.support import configured, everything_written, outbox_rows
from tidings import Message
from tidings.examples.bookshelf.api import create_api

pytestmark = pytest.mark.parametrize("provider", ["memory", "sqlite"], indirect=True)

DUNE = {"title": "Dune", "author": "Frank Herbert", "isbn": "978-0441172719", "price": 9.99}


def add_book(client: TestClient, **fields) -> str:
    response = client.post("/books", json={**DUNE, **fields})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def place(client: TestClient, *lines: tuple[str, int]) -> dict:
    response = client.post(
        "/orders", json={"customer": "alice", "lines": [{"book_id": b, "quantity": q} for b, q in lines]}
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def stocked(client):
    """Dune with 5 copies in stock."""
    book_id = add_book(client)
    assert client.post(f"/books/{book_id}/stock", json={"quantity": 5}).status_code == 200
    return book_id


def test_adding_a_book_answers_201_with_the_book(client):
    response = client.post("/books", json=DUNE)
    assert response.status_code == 201
    body = response.json()
    assert body == {
        "id": body["id"],
        "title": "Dune",
        "author": "Frank Herbert",
        "isbn": "978-0441172719",
        "price": {"amount": 9.99, "currency": "USD"},
    }
    assert client.get(f"/books/{body['id']}").json() == body


@pytest.mark.parametrize(
    "body, fields",
    [
        ({**DUNE, "title": "", "price": -1}, {"title", "price"}),  # the command's rules
        ({"title": "Dune", "price": "cheap"}, {"author", "isbn", "price"}),  # the body's shape
        ({**DUNE, "currency": "EURO"}, {"currency"}),
    ],
)
def test_an_invalid_book_answers_422_naming_each_bad_field_and_writes_nothing(
    client, bookshelf, body, fields
):
    before = everything_written(bookshelf)
    response = client.post("/books", json=body)
    assert response.status_code == 422
    assert set(response.json()["errors"]) == fields
    assert all(isinstance(m, str) and m for ms in response.json()["errors"].values() for m in ms)
    assert everything_written(bookshelf) == before


def test_a_book_whose_isbn_is_taken_answers_409_and_writes_nothing(client, bookshelf):
    add_book(client)
    before = everything_written(bookshelf)
    response = client.post("/books", json={**DUNE, "title": "Dune Messiah"})
    assert response.status_code == 409
    assert "978-0441172719 already exists" in response.json()["detail"]
    assert everything_written(bookshelf) == before


@pytest.mark.parametrize(
    "method, url, body",
    [
        ("GET", "/books/nope", None),
        ("PUT", "/books/nope/price", {"price": 3}),
        ("POST", "/books/nope/stock", {"quantity": 3}),
        ("GET", "/books/nope/stock", None),
        ("GET", "/orders/nope", None),
        ("POST", "/orders/nope/ship", None),
        ("POST", "/orders/nope/cancel", None),
    ],
)
def test_an_unknown_id_answers_404_and_writes_nothing(client, bookshelf, method, url, body):
    add_book(client)
    before = everything_written(bookshelf)
    response = client.request(method, url, json=body)
    assert response.status_code == 404
    assert "'nope'" in response.json()["detail"]
    assert everything_written(bookshelf) == before


def test_updating_a_price_and_adding_stock_answer_200_with_the_new_state(client):
    book_id = add_book(client)
    response = client.put(f"/books/{book_id}/price", json={"price": 12.5, "currency": "EUR"})
    assert response.status_code == 200
    assert response.json()["price"] == {"amount": 12.5, "currency": "EUR"}
    response = client.post(f"/books/{book_id}/stock", json={"quantity": 4})
    assert response.status_code == 200
    assert response.json() == {"book_id": book_id, "in_stock": 4, "reservations": {}, "reserved": 0}
    assert client.get("/catalog").json() == {
        "books": [
            {
                "book_id": book_id,
                "title": "Dune",
                "author": "Frank Herbert",
                "price": 12.5,
                "currency": "EUR",
                "in_stock": 4,
            }
        ]
    }


def test_the_catalog_can_be_narrowed_to_one_author(client):
    add_book(client)
    emma = add_book(client, title="Emma", author="Jane Austen", isbn="978-0141439587")
    books = client.get("/catalog", params={"author": "Jane Austen"}).json()["books"]
    assert [b["book_id"] for b in books] == [emma]


def test_placing_an_order_answers_201_with_the_confirmed_order(client, stocked):
    order = place(client, (stocked, 2))
    assert order["status"] == "CONFIRMED" and order["cancellation_reason"] is None
    assert [(line["book_id"], line["quantity"]) for line in order["lines"]] == [(stocked, 2)]
    assert client.get(f"/orders/{order['id']}").json() == order
    assert client.get(f"/books/{stocked}/stock").json()["in_stock"] == 3


def test_an_order_beyond_the_stock_answers_201_with_the_rejection(client, stocked):
    order = place(client, (stocked, 6))
    assert order["status"] == "CANCELLED"
    assert order["cancellation_reason"] == (
        f"insufficient stock for book {stocked}: requested 6, available 5"
    )
    assert client.get(f"/books/{stocked}/stock").json()["in_stock"] == 5


@pytest.mark.parametrize(
    "lines, fields",
    [
        ([], {"lines"}),
        ([{"book_id": "BOOK", "quantity": 0}], {"lines.0.quantity"}),
        ([{"book_id": "BOOK", "quantity": 1}, {"book_id": "nope", "quantity": 1}], {"lines.1.book_id"}),
        ([{"book_id": "BOOK"}], {"lines.0.quantity"}),
    ],
)
def test_an_invalid_order_answers_422_naming_the_bad_lines_and_writes_nothing(
    client, bookshelf, stocked, lines, fields
):
    lines = json.loads(json.dumps(lines).replace("BOOK", stocked))
    before = everything_written(bookshelf)
    response = client.post("/orders", json={"customer": "alice", "lines": lines})
    assert response.status_code == 422
    assert set(response.json()["errors"]) == fields
    assert everything_written(bookshelf) == before


def test_shipping_then_cancelling_answers_200_then_409(client, bookshelf, stocked):
    order = place(client, (stocked, 2))
    response = client.post(f"/orders/{order['id']}/ship")
    assert response.status_code == 200 and response.json()["status"] == "SHIPPED"
    before = everything_written(bookshelf)
    response = client.post(f"/orders/{order['id']}/cancel")
    assert response.status_code == 409
    assert "it is SHIPPED" in response.json()["detail"]
    assert everything_written(bookshelf) == before


def test_cancelling_answers_200_with_the_reason_and_shipping_afterwards_409(client, bookshelf, stocked):
    order = place(client, (stocked, 2))
    response = client.post(f"/orders/{order['id']}/cancel", json={"reason": "changed my mind"})
    assert response.status_code == 200
    assert response.json()["status"] == "CANCELLED"
    assert response.json()["cancellation_reason"] == "changed my mind"
    assert client.get(f"/books/{stocked}/stock").json()["in_stock"] == 5
    before = everything_written(bookshelf)
    response = client.post(f"/orders/{order['id']}/ship")
    assert response.status_code == 409
    assert "it is CANCELLED" in response.json()["detail"]
    assert everything_written(bookshelf) == before


def test_cancelling_without_a_reason_records_the_default_one(client, stocked):
    order = place(client, (stocked, 1))
    response = client.post(f"/orders/{order['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["cancellation_reason"] == "cancelled by the customer"


def test_in_async_command_mode_a_write_answers_202_and_queues_the_command(provider):
    with configured(provider, command_processing="async") as domain, TestClient(create_api(domain)) as client:
        response = client.post("/books", json=DUNE)
        assert response.status_code == 202
        body = response.json()
        assert set(body) == {"message_id", "id"}
        # queued, not handled: the book does not exist yet
        assert client.get(f"/books/{body['id']}").status_code == 404
        [row] = outbox_rows(domain)
        message = Message.from_dict(json.loads(row["envelope"]))
        assert (message.id, message.type) == (body["message_id"], "Bookshelf.AddBook.v1")
        assert message.stream == f"bookshelf::book:command-{body['id']}"
        # once a worker handles it (as the Celery task does), the book has the answered id
        domain.run_handler(domain.handlers_for(message)[0], message, idempotency_key="worker")
        assert client.get(f"/books/{body['id']}").json()["title"] == "Dune"
