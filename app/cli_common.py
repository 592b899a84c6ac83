"""What the `tidings` commands share: finding the domain, and its handlers' queues."""

from __future__ import annotations

from typing import Any

import click
from celery import Celery

from tidings.app.bootstrap import runtime_for
from tidings.app.loading import load_domain
from tidings.domain import Domain

DOMAIN_HELP = (
    "dotted path, file or folder, optionally :name (e.g. tidings.examples.bookshelf, src/shop, "
    "shop:domain); default: TIDINGS_DOMAIN, else domain.py or subdomain.py here"
)


def domain_path_of(domain_path: str | None) -> str | None:
    """The subcommand's --domain, else the group's (or TIDINGS_DOMAIN); None: discover it."""
    if domain_path is None:
        root = click.get_current_context(silent=True)
        domain_path = (root.find_root().obj or {}).get("domain_path") if root else None
    return domain_path


def load(domain_path: str | None) -> tuple[Domain, Celery]:
    """The domain: the subcommand's --domain, else the group's (or TIDINGS_DOMAIN), else found."""
    domain = load_domain(domain_path_of(domain_path))
    if not domain.initialized:
        domain.init()
    return domain, runtime_for(domain).celery


def queues(domain: Domain, handler: str | None) -> list[str]:
    from tidings.tasks.naming import async_handlers, queue_name

    handlers = async_handlers(domain)
    if handler:
        handlers = [h for h in handlers if h.__name__ == handler]
        if not handlers:
            raise click.BadParameter(f"no handler named {handler!r}", param_hint="--handler")
    return [queue_name(domain, h) for h in handlers]


def polled(domain: Domain, handler: str | None) -> list[type]:
    """The event_store handlers (optionally one): their failures are failed positions."""
    from tidings.tasks.naming import event_store_handlers

    return [h for h in event_store_handlers(domain) if not handler or h.__name__ == handler]


def failed_positions(domain: Domain, handler: str | None) -> list[dict[str, Any]]:
    from tidings.tasks.naming import task_name
    from tidings.tasks.positions import position_store

    store = position_store(domain)
    return [row for h in polled(domain, handler) for row in store.failures(task_name(domain, h))]


domain_option = click.option("--domain", "domain_path", default=None, help=DOMAIN_HELP)
handler_option = click.option("--handler", default=None, help="one handler (default: all)")
