"""The `tidings` command line."""

from __future__ import annotations

import click


@click.group()
def main() -> None:
    """Tidings: Celery-based orchestration for domain-driven Python."""


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
