"""Protean-style field declarations, each mapped to a pydantic field with the same options.

class Order:
    quantity: Integer(required=True, min_value=1)
    status = String(choices=["PENDING", "SHIPPED"], default="PENDING")
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from enum import Enum
from typing import Annotated, Any, ClassVar, Optional
from uuid import UUID

from pydantic import AfterValidator, BeforeValidator
from pydantic import Field as PydanticField
from pydantic.fields import FieldInfo

_MISSING: Any = object()


class FieldSpec:
    """Base of the declarative fields; `annotation()` and `field_info()` give the pydantic side."""

    python_type: ClassVar[Any] = Any
    sql_kind: ClassVar[str] = "json"  # how the SQL providers store it: a column kind name

    def __init__(
        self,
        *,
        required: bool = False,
        default: Any = _MISSING,
        identifier: bool = False,
        unique: bool = False,
        choices: Sequence[Any] | type[Enum] | None = None,
        description: str | None = None,
    ) -> None:
        self.required = required
        self.default = default
        self.identifier = identifier
        self.unique = unique or identifier
        self.choices = choices
        self.description = description

    def base_type(self) -> Any:
        return self.python_type

    def constraints(self) -> dict[str, Any]:
        return {}

    def annotation(self) -> Any:
        typ = self.base_type()
        validators = []
        if self.choices is not None:
            allowed = _choice_values(self.choices)

            def check(value: Any, _allowed: tuple = allowed) -> Any:
                if value is not None and value not in _allowed:
                    raise ValueError(f"value {value!r} is not one of {list(_allowed)}")
                return value

            validators.append(AfterValidator(check))
        if validators:
            typ = Annotated[typ, *validators]
        if not self._is_required() and self._default() is None:
            typ = Optional[typ]  # noqa: UP045 - a runtime object, not an annotation
        return typ

    def _is_required(self) -> bool:
        return (self.required or self.identifier) and self.default is _MISSING

    def _default(self) -> Any:
        return None if self.default is _MISSING else self.default

    def field_info(self) -> FieldInfo:
        kwargs: dict[str, Any] = dict(self.constraints())
        extra = {"tidings_unique": self.unique, "tidings_identifier": self.identifier}
        if self.description:
            kwargs["description"] = self.description
        if self._is_required():
            return PydanticField(json_schema_extra=extra, **kwargs)
        default = self._default()
        if callable(default):
            return PydanticField(default_factory=default, json_schema_extra=extra, **kwargs)
        if isinstance(default, list | dict | set):
            return PydanticField(
                default_factory=lambda d=default: type(d)(d), json_schema_extra=extra, **kwargs
            )
        return PydanticField(default=default, json_schema_extra=extra, **kwargs)


def _choice_values(choices: Sequence[Any] | type[Enum]) -> tuple:
    if isinstance(choices, type) and issubclass(choices, Enum):
        return tuple(m.value for m in choices)
    return tuple(choices)


class String(FieldSpec):
    python_type = str
    sql_kind = "string"

    def __init__(self, *, max_length: int = 255, min_length: int | None = None, **kw: Any):
        super().__init__(**kw)
        self.max_length = max_length
        self.min_length = min_length

    def constraints(self) -> dict[str, Any]:
        out: dict[str, Any] = {"max_length": self.max_length}
        if self.min_length is not None:
            out["min_length"] = self.min_length
        return out


class Text(FieldSpec):
    python_type = str
    sql_kind = "text"


def _coerce_identifier(value: Any) -> Any:
    if isinstance(value, UUID | int) and not isinstance(value, bool):
        return str(value)
    return value


class Identifier(FieldSpec):
    """A string identity; UUIDs and integers are accepted and stored as strings."""

    sql_kind = "string"

    def base_type(self) -> Any:
        return Annotated[str, BeforeValidator(_coerce_identifier)]


class _Number(FieldSpec):
    def __init__(self, *, min_value: float | None = None, max_value: float | None = None, **kw):
        super().__init__(**kw)
        self.min_value = min_value
        self.max_value = max_value

    def constraints(self) -> dict[str, Any]:
        out = {}
        if self.min_value is not None:
            out["ge"] = self.min_value
        if self.max_value is not None:
            out["le"] = self.max_value
        return out


class Integer(_Number):
    python_type = int
    sql_kind = "integer"


class Float(_Number):
    python_type = float
    sql_kind = "float"


class Boolean(FieldSpec):
    python_type = bool
    sql_kind = "boolean"


class Date(FieldSpec):
    python_type = dt.date
    sql_kind = "date"


class DateTime(FieldSpec):
    python_type = dt.datetime
    sql_kind = "datetime"


class List(FieldSpec):
    def __init__(self, content_type: Any = Any, **kw: Any) -> None:
        kw.setdefault("default", list)
        super().__init__(**kw)
        self.content_type = content_type

    def base_type(self) -> Any:
        inner = self.content_type
        if isinstance(inner, FieldSpec):
            inner = inner.base_type()
        return list[inner]


class Dict(FieldSpec):
    def __init__(self, **kw: Any) -> None:
        kw.setdefault("default", dict)
        super().__init__(**kw)

    def base_type(self) -> Any:
        return dict[str, Any]


class ValueObject(FieldSpec):
    """A value object embedded in its owner; stored as JSON."""

    def __init__(self, value_object_cls: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.target = value_object_cls

    def base_type(self) -> Any:
        return self.target


class HasMany(FieldSpec):
    """Entities owned by an aggregate; stored with it, as JSON."""

    def __init__(self, to_cls: Any, **kw: Any) -> None:
        kw.setdefault("default", list)
        super().__init__(**kw)
        self.target = to_cls

    def base_type(self) -> Any:
        return list[self.target]


class HasOne(FieldSpec):
    """One entity owned by an aggregate; stored with it, as JSON."""

    def __init__(self, to_cls: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.target = to_cls

    def base_type(self) -> Any:
        return self.target


__all__ = [
    "FieldSpec",
    "String",
    "Text",
    "Identifier",
    "Integer",
    "Float",
    "Boolean",
    "Date",
    "DateTime",
    "List",
    "Dict",
    "ValueObject",
    "HasMany",
    "HasOne",
]
