"""SQLAlchemy tables derived from the registered models: one table per aggregate/projection."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from tidings.domain.fields import FieldSpec
from tidings.domain.naming import snake

if TYPE_CHECKING:
    from tidings.domain.elements import StoredModel

VERSION_COLUMN = "_version"
STREAM_POSITION_KEY = "uq_tidings_event_stream_position"  # one event per (stream, position)

_SQL_TYPES: dict[str, Any] = {
    "string": lambda spec: sa.String(getattr(spec, "max_length", 255) or 255),
    "text": lambda spec: sa.Text(),
    "integer": lambda spec: sa.BigInteger(),
    "float": lambda spec: sa.Float(),
    "boolean": lambda spec: sa.Boolean(),
    "date": lambda spec: sa.Date(),
    "datetime": lambda spec: sa.DateTime(timezone=True),
    "json": lambda spec: sa.JSON(),
}
_PY_KINDS: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "float",
    bool: "boolean",
    dt.date: "date",
    dt.datetime: "datetime",
}


def column_kind(model: StoredModel, name: str) -> str:
    """How a field is stored: a scalar column kind, or 'json' for anything structured."""
    spec: FieldSpec | None = model._field_specs.get(name)
    if spec is not None:
        return spec.sql_kind
    annotation = model.model_fields[name].annotation
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    if len(args) == 1 and getattr(annotation, "__origin__", None) is not list:
        annotation = args[0]
    return _PY_KINDS.get(annotation, "json")


def table_name(model: StoredModel) -> str:
    return model.meta_.get("table") or snake(model.__name__)


def define_model_table(metadata: sa.MetaData, model: StoredModel, versioned: bool) -> sa.Table:
    """Columns named as the fields; the identity is the primary key; `unique` fields are unique."""
    columns = []
    for name, info in model.model_fields.items():
        kind = column_kind(model, name)
        spec = model._field_specs.get(name)
        sql_type = _SQL_TYPES[kind](spec)
        is_id = name == model._id_field
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        columns.append(
            sa.Column(
                name,
                sql_type,
                primary_key=is_id,
                unique=bool(extra.get("tidings_unique")) and not is_id,
                nullable=not is_id,
            )
        )
    if versioned:
        columns.append(sa.Column(VERSION_COLUMN, sa.Integer, nullable=False, default=0))
    return sa.Table(table_name(model), metadata, *columns)


def define_event_store(metadata: sa.MetaData) -> sa.Table:
    """Append-only: global position, stream, per-stream position, type, data, metadata, time."""
    return sa.Table(
        "tidings_event_store",
        metadata,
        sa.Column(
            "global_position",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("message_id", sa.String(64), nullable=False, unique=True),
        sa.Column("stream", sa.String(255), nullable=False),
        sa.Column("category", sa.String(255), nullable=False, index=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("stream", "position", name=STREAM_POSITION_KEY),
    )
