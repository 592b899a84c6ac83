"""Alembic's entry point for the framework tables: run by `tidings.domain.schema` (`tidings db
upgrade`, `make migration`), which hands it an open connection. Online only: the baseline
revision inspects the database it adopts."""

from __future__ import annotations

from alembic import context

from tidings.domain.schema import VERSION_TABLE, framework_metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run the framework migrations through tidings: `tidings db upgrade`, or `make migration` "
        "for a new revision"
    )
context.configure(
    connection=connection,
    target_metadata=framework_metadata(),
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite alters a table by copying it: batch operations do that
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
