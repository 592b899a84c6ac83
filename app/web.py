"""FastAPI helpers: the domain and its runtime set up once per process, the domain handed to
route handlers, and Tidings' errors answered as HTTP (needs the `api` extra).

    from tidings.app.web import DomainDep, create_app

    api = create_app(my_domain)          # FastAPI(lifespan=..., exception handlers)

    @api.post("/orders")
    def place_order(body: OrderIn, domain: DomainDep) -> dict:
        return {"message_id": domain.process(PlaceOrder(**body.model_dump()))}

At startup the lifespan initialises the domain (unless it already is) and, when its commands or
events are processed async, builds the process's runtime (`runtime_for`: the Celery app whose engine
relays commits), once per process however many apps or restarts of the lifespan there are. A
`ValidationError` answers 422 `{"detail", "errors": {field: [messages]}}`, an
`ObjectNotFoundError` 404 `{"detail"}`. Build your own `FastAPI(lifespan=lifespan(domain))`
and call `add_error_handlers(api)` to compose them differently.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from tidings.app.bootstrap import Runtime, runtime_for
from tidings.domain import Domain
from tidings.domain.errors import ObjectNotFoundError, ValidationError

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def start(domain: Domain, *, create_tables: bool = False) -> Runtime | None:
    """Initialise `domain` if needed (and create its missing tables if asked); its runtime
    when commands or events are processed async (the same one for the whole process), else None."""
    if not domain.initialized:
        domain.init()
    if create_tables:
        domain.create_tables()
    modes = (domain.settings.command_processing, domain.settings.event_processing)
    return runtime_for(domain) if "async" in modes else None


def lifespan(domain: Domain, *, create_tables: bool = False) -> Lifespan:
    """A FastAPI lifespan that runs `start(domain)` at startup and keeps the domain and the
    runtime on `app.state` (`tidings_domain`, `tidings_runtime`)."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        app.state.tidings_runtime = start(domain, create_tables=create_tables)
        app.state.tidings_domain = domain
        yield

    return run


def domain_of(request: Request) -> Domain:
    """The dependency: the domain the app's lifespan started."""
    domain: Domain | None = getattr(request.app.state, "tidings_domain", None)
    if domain is None:
        raise RuntimeError("no domain on this app: build it with create_app(domain) or lifespan(domain)")
    return domain


DomainDep = Annotated[Domain, Depends(domain_of)]


async def invalid(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ValidationError)
    return JSONResponse({"detail": str(exc), "errors": exc.errors}, status_code=422)


async def not_found(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


def add_error_handlers(app: FastAPI) -> None:
    """`ValidationError` -> 422 naming the fields, `ObjectNotFoundError` -> 404."""
    app.add_exception_handler(ValidationError, invalid)
    app.add_exception_handler(ObjectNotFoundError, not_found)


def create_app(domain: Domain, *, create_tables: bool = False, **fastapi_options: Any) -> FastAPI:
    """A FastAPI app with `lifespan(domain)` and `add_error_handlers` (see the module docstring)."""
    app = FastAPI(lifespan=lifespan(domain, create_tables=create_tables), **fastapi_options)
    add_error_handlers(app)
    return app
