"""Helpers for the bookshelf tests: a fresh domain per test and a view of everything it wrote."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from tidings import Domain
from tidings.examples.bookshelf.domain import domain as bookshelf_domain


@contextmanager
def configured(provider: dict[str, Any], **processing: str) -> Iterator[Domain]:
    """The bookshelf domain on `provider` (sync unless told), with fresh tables; its config is
    restored afterwards, as the domain is one module-level object shared by every test."""
    domain = bookshelf_domain
    saved = copy.deepcopy(domain.config)
    # A Celery app attaches its engine to the domain; keep it from leaking between tests.
    engine = domain.engine
    modes = {"event_processing": "sync", "command_processing": "sync", "message_processing": "sync"}
    domain.config.update({**modes, **processing})
    domain.config["databases"] = {"default": dict(provider)}
    domain.config["event_store"] = {"provider": provider["provider"]}
    domain.config["brokers"] = {"default": {"provider": "inline"}}  # tests pick their broker
    domain.init()
    domain.drop_tables()
    domain.create_tables()
    try:
        yield domain
    finally:
        domain.drop_tables()
        domain.dispose()
        domain.config.clear()
        domain.config.update(saved)
        domain.attach_engine(engine)
        domain.initialized = False  # its settings were this test's: the next user must init()


def _count(database: Any, table: sa.Table) -> int:
    with database.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()


def event_count(domain: Domain) -> int:
    store = domain.event_store_database
    return len(store.events) if hasattr(store, "events") else _count(store, store.event_store_table)


def outbox_rows(domain: Domain) -> list[dict[str, Any]]:
    db = domain.outbox_database
    if hasattr(db, "outbox"):
        return list(db.outbox)
    with db.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(db.outbox_table))]


def everything_written(domain: Domain) -> dict[str, Any]:
    """Every stored aggregate and projection, and how many events and outbox rows exist."""
    with domain.domain_context():
        rows = {
            model.__name__: [obj.to_dict() for obj in domain.repository_for(model).all()]
            for kind in ("aggregate", "projection")
            for model in domain.registry[kind].values()
        }
    return {"rows": rows, "events": event_count(domain), "outbox": len(outbox_rows(domain))}
