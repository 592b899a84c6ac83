"""`tidings db upgrade|create|check`: the framework tables under migrations, the models' tables
created, and the drift between the models and each database (one line per difference)."""

from __future__ import annotations

import sys

import click

from tidings.app.cli_common import domain_option, load
from tidings.domain import Domain, schema
from tidings.domain.sql import Difference, SchemaError, SqlDatabase


@click.group()
def db() -> None:
    """The domain's tables: Tidings's own (outbox, inbox, positions, dead letters, event
    store) through the migrations it ships, the models' created by `db create`."""


def sql_databases(domain: Domain) -> list[SqlDatabase]:
    """Each SQL database of the domain once (the event store's too when it has its own)."""
    return [store for store in domain.storage.stores.values() if isinstance(store, SqlDatabase)]


def report(domain: Domain, framework_only: bool = False) -> None:
    """Print every difference, one line each with its fix, and exit 1 if there is any."""
    if not sql_databases(domain):
        click.echo(f"'{domain.name}' has no SQL database: nothing to migrate or compare")
        return
    found: list[tuple[SqlDatabase, Difference]] = []
    for database in sql_databases(domain):
        found += [
            (database, d)
            for d in database.drift()
            if not framework_only or schema.is_framework_table(d.table)
        ]
    for database, difference in found:
        click.echo(f"drift in database '{database.name}': {difference}", err=True)
    if found:
        sys.exit(1)
    what = "framework tables" if framework_only else "tables"
    click.echo(f"{what} of '{domain.name}' match the models (migrations at {schema.head()})")


@db.command("upgrade")
@domain_option
def db_upgrade(domain_path: str | None) -> None:
    """Migrate the framework tables of every SQL database to the newest revision Tidings
    ships (a database whose tables an older `db create` made is adopted), then check them."""
    domain, _ = load(domain_path)
    for database in sql_databases(domain):
        if not database.holds_framework_tables:
            continue
        try:
            database.upgrade()
        except SchemaError as exc:
            raise click.ClickException(f"database '{database.name}' NOT upgraded: {exc}") from None
        click.echo(f"database '{database.name}': framework tables at revision {schema.head()}")
    report(domain, framework_only=True)


@db.command("create")
@domain_option
def db_create(domain_path: str | None) -> None:
    """Migrate the framework tables and create the models' missing tables (aggregates,
    projections), then report any drift between the models and the databases; exits 1 on
    drift. For your own tables' migrations, hand `domain.metadata` to Alembic."""
    domain, _ = load(domain_path)
    try:
        domain.create_tables()
    except SchemaError as exc:
        raise click.ClickException(f"tables of '{domain.name}' are NOT in place: {exc}") from None
    report(domain)


@db.command("check")
@domain_option
def db_check(domain_path: str | None) -> None:
    """Change nothing; print one line per difference between the models and the databases
    (missing tables, columns or indexes, types, nullability, migrations not applied) with
    its fix, and exit 1 if there is any."""
    domain, _ = load(domain_path)
    report(domain)
