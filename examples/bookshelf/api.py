"""The bookshelf's HTTP API: thin routes that build commands and hand them to the domain.

With sync command processing a write answers 201 (200 for a state change) with the resource;
with async processing it answers 202 with `{"message_id", "id"}` before the command is handled.
Errors: 422 `{"detail", "errors": {field: [messages]}}` for invalid input, 404 for unknown ids,
409 when the current state forbids the request. A rejected request writes nothing.

    uvicorn tidings.examples.bookshelf.api:app
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from tidings import Domain
from tidings.app.health import health as check_health
from tidings.app.web import create_app
from tidings.domain.sql import DuplicateValueError
from tidings.examples.bookshelf import domain as bookshelf
from tidings.examples.bookshelf.domain import (
    AddBook,
    AddStock,
    Book,
    BusinessRuleError,
    CancelOrder,
    GetCatalog,
    Inventory,
    Order,
    PlaceOrder,
    ShipOrder,
    UpdatePrice,
    ensure_books_exist,
)


# Request bodies only give the shape; the commands carry the rules (they are checked again
# when built, in the same words, whether the command then runs inline or later on a worker).
class BookIn(BaseModel):
    title: str
    author: str
    isbn: str
    price: float
    currency: str = "USD"


class PriceIn(BaseModel):
    price: float
    currency: str = "USD"


class StockIn(BaseModel):
    quantity: int


class LineIn(BaseModel):
    book_id: str
    quantity: int


class OrderIn(BaseModel):
    customer: str
    lines: list[LineIn]


class CancelIn(BaseModel):
    reason: str | None = None


def field_errors(errors: list[dict[str, Any]]) -> dict[str, list[str]]:
    """FastAPI's error list as `{"lines.0.quantity": [message]}`, as the domain reports them."""
    out: dict[str, list[str]] = {}
    for error in errors:
        loc = [str(p) for p in error.get("loc", ())]
        if loc and loc[0] == "body":
            loc = loc[1:]
        out.setdefault(".".join(loc) or "__all__", []).append(error.get("msg", "invalid"))
    return out


def create_api(domain: Domain = bookshelf.domain, *, create_tables: bool = True) -> FastAPI:
    """The API over `domain`; at startup the domain is initialised (unless it already is) and,
    when it processes anything async, the process's runtime is built, so commits kick the
    outbox relay at once instead of waiting for the beat tick (tidings.app.web)."""

    # ValidationError -> 422 and ObjectNotFoundError -> 404 come with create_app
    api = create_app(domain, create_tables=create_tables, title="Bookshelf")

    @api.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"detail": "invalid request", "errors": field_errors(exc.errors())}, status_code=422
        )

    @api.exception_handler(BusinessRuleError)
    async def conflict(_request: Request, exc: BusinessRuleError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @api.exception_handler(DuplicateValueError)
    async def duplicate(_request: Request, exc: DuplicateValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    def submit(command: Any, resource_id: str, show: Callable[[], dict], created: bool) -> JSONResponse:
        """Process the command; answer 202 when it is queued, else the resource it produced."""
        with domain.domain_context():
            result = domain.process(command)
            if domain.settings.command_processing == "async":
                return JSONResponse({"message_id": result, "id": resource_id}, status_code=202)
            return JSONResponse(show(), status_code=201 if created else 200)

    def get_book(book_id: str) -> Book:
        return domain.repository_for(Book).get(book_id)

    def get_order(order_id: str) -> Order:
        return domain.repository_for(Order).get(order_id)

    @api.post("/books")
    def add_book(body: BookIn) -> JSONResponse:
        command = AddBook(**body.model_dump())
        with domain.domain_context():
            if domain.repository_for(Book).filter(isbn=command.isbn):
                raise BusinessRuleError(f"a book with ISBN {command.isbn} already exists")
        return submit(command, command.book_id, lambda: get_book(command.book_id).to_dict(), True)

    @api.get("/books/{book_id}")
    def show_book(book_id: str) -> dict:
        with domain.domain_context():
            return get_book(book_id).to_dict()

    @api.put("/books/{book_id}/price")
    def update_price(book_id: str, body: PriceIn) -> JSONResponse:
        command = UpdatePrice(book_id=book_id, **body.model_dump())
        with domain.domain_context():
            get_book(book_id)
        return submit(command, book_id, lambda: get_book(book_id).to_dict(), False)

    @api.post("/books/{book_id}/stock")
    def add_stock(book_id: str, body: StockIn) -> JSONResponse:
        command = AddStock(book_id=book_id, quantity=body.quantity)
        with domain.domain_context():
            get_book(book_id)
        return submit(
            command, book_id, lambda: domain.repository_for(Inventory).get(book_id).to_dict(), False
        )

    @api.get("/books/{book_id}/stock")
    def show_stock(book_id: str) -> dict:
        with domain.domain_context():
            return domain.repository_for(Inventory).get(book_id).to_dict()

    @api.get("/catalog")
    def catalog(author: str | None = None) -> dict:
        with domain.domain_context():
            entries = domain.dispatch(GetCatalog(author=author))
        return {"books": [entry.to_dict() for entry in entries]}

    @api.post("/orders")
    def place_order(body: OrderIn) -> JSONResponse:
        command = PlaceOrder(**body.model_dump())  # errors name the line: `lines.0.quantity`
        with domain.domain_context():
            ensure_books_exist(command.lines)
        return submit(command, command.order_id, lambda: get_order(command.order_id).to_dict(), True)

    @api.get("/orders/{order_id}")
    def show_order(order_id: str) -> dict:
        with domain.domain_context():
            return get_order(order_id).to_dict()

    @api.post("/orders/{order_id}/ship")
    def ship_order(order_id: str) -> JSONResponse:
        with domain.domain_context():
            get_order(order_id).check("ship")
        return submit(ShipOrder(order_id=order_id), order_id, lambda: get_order(order_id).to_dict(), False)

    @api.post("/orders/{order_id}/cancel")
    def cancel_order(order_id: str, body: CancelIn | None = None) -> JSONResponse:
        given = {"reason": body.reason} if body and body.reason is not None else {}
        command = CancelOrder(order_id=order_id, **given)
        with domain.domain_context():
            get_order(order_id).check("cancel")
        return submit(command, order_id, lambda: get_order(order_id).to_dict(), False)

    @api.get("/health")
    def health(request: Request) -> JSONResponse:
        """Database, broker and outbox lag; 503 when degraded."""
        if not domain.initialized:
            return JSONResponse({"status": "degraded", "detail": "domain not initialised"}, 503)
        runtime = getattr(request.app.state, "tidings_runtime", None)
        report = check_health(domain, runtime.celery if runtime else None)
        return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)

    return api


app = create_api()
