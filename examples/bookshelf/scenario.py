"""The bookshelf's end-to-end scenario, drivable in-process or over HTTP.

    driver = DomainDriver(domain)                  # or HttpDriver(TestClient(app), domain)
    ids = run_scenario(driver, settle)
    assert final_state(driver, ids) == expected_final_state(ids)

`settle()` runs after every step that sends a command or a message. In sync mode it has nothing
to do; in async mode it must return only once everything the step caused has been handled,
because each step relies on the effects of the ones before it (stock must be there to reserve).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from tidings import Domain
from tidings.examples.bookshelf.domain import (
    AddBook,
    AddStock,
    Book,
    CancelOrder,
    GetCatalog,
    Inventory,
    LineItem,
    Order,
    PlaceOrder,
    ShipOrder,
    UpdatePrice,
    shortage_reason,
)

RESTOCK_STREAM = "supplier::restock"

BOOKS: dict[str, dict[str, Any]] = {
    "dune": {"title": "Dune", "author": "Frank Herbert", "isbn": "978-0441172719", "price": 9.99},
    "emma": {"title": "Emma", "author": "Jane Austen", "isbn": "978-0141439587", "price": 7.5},
}

Ids = dict[str, dict[str, str]]  # {"books": {name: id}, "orders": {name: id}}


class Driver(Protocol):
    """What the scenario needs from the application; each write returns once it is accepted."""

    def add_book(self, title: str, author: str, isbn: str, price: float) -> str: ...
    def update_price(self, book_id: str, price: float) -> None: ...
    def add_stock(self, book_id: str, quantity: int) -> None: ...
    def place_order(self, customer: str, lines: list[tuple[str, int]]) -> str: ...
    def ship_order(self, order_id: str) -> None: ...
    def cancel_order(self, order_id: str, reason: str) -> None: ...
    def supplier_restock(self, isbn: str, quantity: int) -> None: ...
    def catalog(self) -> list[dict[str, Any]]: ...
    def stock(self, book_id: str) -> dict[str, Any]: ...
    def order(self, order_id: str) -> dict[str, Any]: ...


class DomainDriver:
    """Drives the domain directly: commands through `domain.process`, reads through repositories."""

    def __init__(self, domain: Domain) -> None:
        self.domain = domain

    def _process(self, command: Any) -> None:
        with self.domain.domain_context():
            self.domain.process(command)

    def add_book(self, title: str, author: str, isbn: str, price: float) -> str:
        command = AddBook(title=title, author=author, isbn=isbn, price=price)
        self._process(command)
        return command.book_id

    def update_price(self, book_id: str, price: float) -> None:
        self._process(UpdatePrice(book_id=book_id, price=price))

    def add_stock(self, book_id: str, quantity: int) -> None:
        self._process(AddStock(book_id=book_id, quantity=quantity))

    def place_order(self, customer: str, lines: list[tuple[str, int]]) -> str:
        command = PlaceOrder(customer=customer, lines=[LineItem(book_id=b, quantity=q) for b, q in lines])
        self._process(command)
        return command.order_id

    def ship_order(self, order_id: str) -> None:
        self._process(ShipOrder(order_id=order_id))

    def cancel_order(self, order_id: str, reason: str) -> None:
        self._process(CancelOrder(order_id=order_id, reason=reason))

    def supplier_restock(self, isbn: str, quantity: int) -> None:
        with self.domain.domain_context():
            self.domain.brokers.publish(
                RESTOCK_STREAM, {"type": "restock", "isbn": isbn, "quantity": quantity}
            )

    def catalog(self) -> list[dict[str, Any]]:
        with self.domain.domain_context():
            return [entry.to_dict() for entry in self.domain.dispatch(GetCatalog())]

    def stock(self, book_id: str) -> dict[str, Any]:
        with self.domain.domain_context():
            return self.domain.repository_for(Inventory).get(book_id).to_dict()

    def order(self, order_id: str) -> dict[str, Any]:
        with self.domain.domain_context():
            return self.domain.repository_for(Order).get(order_id).to_dict()

    def book(self, book_id: str) -> dict[str, Any]:
        with self.domain.domain_context():
            return self.domain.repository_for(Book).get(book_id).to_dict()


class HttpDriver:
    """Drives the API with an HTTP client (a `TestClient` or an `httpx.Client` with a base URL).

    The supplier's restock is no API call: it is published on the domain, as a feed would.
    """

    def __init__(self, client: Any, domain: Domain) -> None:
        self.client = client
        self.domain = domain

    def _send(self, method: str, url: str, body: dict | None = None) -> dict[str, Any]:
        response = self.client.request(method, url, json=body)
        if response.status_code not in (200, 201, 202):
            raise AssertionError(f"{method} {url} answered {response.status_code}: {response.text}")
        return response.json()

    def add_book(self, title: str, author: str, isbn: str, price: float) -> str:
        body = {"title": title, "author": author, "isbn": isbn, "price": price}
        return self._send("POST", "/books", body)["id"]

    def update_price(self, book_id: str, price: float) -> None:
        self._send("PUT", f"/books/{book_id}/price", {"price": price})

    def add_stock(self, book_id: str, quantity: int) -> None:
        self._send("POST", f"/books/{book_id}/stock", {"quantity": quantity})

    def place_order(self, customer: str, lines: list[tuple[str, int]]) -> str:
        body = {"customer": customer, "lines": [{"book_id": b, "quantity": q} for b, q in lines]}
        return self._send("POST", "/orders", body)["id"]

    def ship_order(self, order_id: str) -> None:
        self._send("POST", f"/orders/{order_id}/ship")

    def cancel_order(self, order_id: str, reason: str) -> None:
        self._send("POST", f"/orders/{order_id}/cancel", {"reason": reason})

    def supplier_restock(self, isbn: str, quantity: int) -> None:
        DomainDriver(self.domain).supplier_restock(isbn, quantity)

    def catalog(self) -> list[dict[str, Any]]:
        return self._send("GET", "/catalog")["books"]

    def stock(self, book_id: str) -> dict[str, Any]:
        return self._send("GET", f"/books/{book_id}/stock")

    def order(self, order_id: str) -> dict[str, Any]:
        return self._send("GET", f"/orders/{order_id}")


def run_scenario(driver: Driver, settle: Callable[[], None] = lambda: None) -> Ids:
    """Two books, stock, four orders (shipped, cancelled, rejected, left open), a restock."""

    def step(result: Any = None) -> Any:
        settle()
        return result

    books = {name: step(driver.add_book(**book)) for name, book in BOOKS.items()}
    dune, emma = books["dune"], books["emma"]
    step(driver.update_price(dune, 12.99))
    step(driver.add_stock(dune, 10))
    step(driver.add_stock(emma, 5))

    orders = {"shipped": step(driver.place_order("alice", [(dune, 3), (emma, 2)]))}  # 7 and 3 left
    step(driver.ship_order(orders["shipped"]))

    orders["cancelled"] = step(driver.place_order("bob", [(dune, 2)]))
    step(driver.cancel_order(orders["cancelled"], "changed my mind"))  # the 2 go back: 7 left

    # Emma is short (4 wanted, 3 left): nothing is reserved, not even the Dune that would fit.
    orders["rejected"] = step(driver.place_order("carol", [(emma, 4), (dune, 1)]))

    orders["open"] = step(driver.place_order("dave", [(emma, 1)]))  # confirmed, never shipped
    step(driver.supplier_restock(BOOKS["emma"]["isbn"], 6))
    return {"books": books, "orders": orders}


def final_state(driver: Driver, ids: Ids) -> dict[str, Any]:
    """What the scenario is judged on, read through the driver."""
    return {
        "catalog": [
            {k: entry[k] for k in ("title", "author", "price", "currency", "in_stock")}
            for entry in driver.catalog()
        ],
        "stock": {
            name: {k: stock[k] for k in ("in_stock", "reserved", "reservations")}
            for name, book_id in ids["books"].items()
            for stock in [driver.stock(book_id)]
        },
        "orders": {
            name: {k: order[k] for k in ("status", "cancellation_reason")}
            for name, order_id in ids["orders"].items()
            for order in [driver.order(order_id)]
        },
    }


def expected_final_state(ids: Ids) -> dict[str, Any]:
    """The exact state after `run_scenario`, given the ids it returned."""
    emma = ids["books"]["emma"]
    return {
        "catalog": [
            {"title": "Dune", "author": "Frank Herbert", "price": 12.99, "currency": "USD", "in_stock": 7},
            {"title": "Emma", "author": "Jane Austen", "price": 7.5, "currency": "USD", "in_stock": 8},
        ],
        "stock": {
            "dune": {"in_stock": 7, "reserved": 0, "reservations": {}},
            "emma": {"in_stock": 8, "reserved": 1, "reservations": {ids["orders"]["open"]: 1}},
        },
        "orders": {
            "shipped": {"status": "SHIPPED", "cancellation_reason": None},
            "cancelled": {"status": "CANCELLED", "cancellation_reason": "changed my mind"},
            "rejected": {"status": "CANCELLED", "cancellation_reason": shortage_reason(emma, 4, 3)},
            "open": {"status": "CONFIRMED", "cancellation_reason": None},
        },
    }
