"""The `tidings` command line."""

from __future__ import annotations

import json
import logging
import sys

import click

from app.factory import celery_app_for
from app.loading import load_domain


@click.group()
def main() -> None:
    """Tidings: Celery-based orchestration for domain-driven Python."""


def _load(domain_path: str):
    domain = load_domain(domain_path)
    if not domain.initialized:
        domain.init()
    return domain, celery_app_for(domain)


@main.command()
@click.option("--domain", "domain_path", required=True, help="dotted path, e.g. examples.bookshelf")
@click.option("--debug", is_flag=True, help="log every message")
@click.option("--test-mode", is_flag=True, help="process everything pending, then exit")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="prefork")
@click.option("--concurrency", type=int, default=None)
@click.option("--no-beat", is_flag=True, help="do not embed beat (run `celery beat` once elsewhere)")
def server(domain_path: str, debug: bool, test_mode: bool, pool: str, concurrency: int | None,
           no_beat: bool) -> None:
    """Start a worker on all of the domain's queues (beat embedded unless --no-beat)."""
    from app.server import run_until_quiescent, subscription_lines, worker_argv

    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    domain, celery = _load(domain_path)
    click.echo("Registered subscriptions:")
    for line in subscription_lines(domain):
        click.echo(f"  {line}")
    if test_mode:
        summary = run_until_quiescent(celery, domain, pool="solo" if pool == "prefork" else pool)
        click.echo(json.dumps(summary, indent=2))
        sys.exit(0 if summary["quiescent"] and not summary["dead_lettered"] else 1)
    celery.worker_main(worker_argv(domain, pool=pool, concurrency=concurrency,
                                   beat=not no_beat, debug=debug))


@main.command()
def demo() -> None:
    """Run the bookshelf demo on the embedded default (SQLite, no services)."""
    import tempfile

    from domain import Domain, current_domain, handle
    from domain.fields import Identifier, Integer

    with tempfile.TemporaryDirectory() as folder:
        shop = Domain("shop", root_path=folder)
        shop.config.update(event_processing="sync", command_processing="sync")
        shop.config["databases"]["default"] = {"provider": "sqlite",
                                               "database_uri": f"sqlite:///{folder}/shop.db"}
        shop.config["event_store"] = {"provider": "sqlite"}

        @shop.aggregate
        class Inventory:
            book_id: Identifier(required=True)
            in_stock: Integer(required=True)

        @shop.event(part_of=Inventory)
        class StockReduced:
            book_id: Identifier(required=True)
            quantity: Integer(required=True)

        @shop.event_handler(part_of=Inventory)
        class Audit:
            @handle(StockReduced)
            def seen(self, event):
                click.echo(f"handled {event.message.type} for {event.book_id}")

        shop.init()
        shop.create_tables()
        with shop.domain_context():
            repo = current_domain.repository_for(Inventory)
            inv = repo.add(Inventory(book_id="dune", in_stock=5))
            inv.in_stock -= 2
            inv.raise_(StockReduced(book_id="dune", quantity=2))
            repo.add(inv)
            click.echo(f"in stock: {repo.get(inv.id).in_stock}")
        shop.dispose()
