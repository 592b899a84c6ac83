"""Protean-style field declarations, each mapped to a pydantic field with the same options.

Three spellings give the same pydantic field:

    class Order:
        quantity: Annotated[int, Integer(required=True, min_value=1)]   # typed code
        status: str = String(choices=["PENDING", "SHIPPED"], default="PENDING")  # typed code
        count: Integer(default=0)   # the reference spelling: runs, but not for a type checker

The field types are classes (`IntegerSpec`, ...); the public names (`Integer`, ...) are the
same class objects at runtime, typed for a type checker as constructors that return `Any`,
the way pydantic types `Field()` and dataclasses type `field()`. That is what lets
`quantity: int = Integer(...)` type-check. Typed code that subclasses a field type or checks
`isinstance` uses the `...Spec` name.
"""

from __future__ import annotations

import datetime as dt
from types import GenericAlias
from typing import Annotated, Any, Unpack
from uuid import UUID

from pydantic import BeforeValidator

from tidings.domain.field_spec import FieldOptions, FieldSpec, _constructor


class StringSpec(FieldSpec):
    """A string of at most `max_length` (255) and at least `min_length` characters."""

    python_type = str
    sql_kind = "string"

    def __init__(
        self, *, max_length: int = 255, min_length: int | None = None, **kw: Unpack[FieldOptions]
    ) -> None:
        super().__init__(**kw)
        self.max_length = max_length
        self.min_length = min_length

    def constraints(self) -> dict[str, Any]:
        out: dict[str, Any] = {"max_length": self.max_length}
        if self.min_length is not None:
            out["min_length"] = self.min_length
        return out


class TextSpec(FieldSpec):
    """A string without a length limit."""

    python_type = str
    sql_kind = "text"


def _coerce_identifier(value: Any) -> Any:
    if isinstance(value, UUID | int) and not isinstance(value, bool):
        return str(value)
    return value


class IdentifierSpec(FieldSpec):
    """A string identity; UUIDs and integers are accepted and stored as strings."""

    sql_kind = "string"

    def base_type(self) -> Any:
        return Annotated[str, BeforeValidator(_coerce_identifier)]


class _Number(FieldSpec):
    def __init__(
        self, *, min_value: float | None = None, max_value: float | None = None, **kw: Unpack[FieldOptions]
    ) -> None:
        super().__init__(**kw)
        self.min_value = min_value
        self.max_value = max_value

    def constraints(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.min_value is not None:
            out["ge"] = self.min_value
        if self.max_value is not None:
            out["le"] = self.max_value
        return out


class IntegerSpec(_Number):
    """An integer, at least `min_value` and at most `max_value`."""

    python_type = int
    sql_kind = "integer"


class FloatSpec(_Number):
    """A float, at least `min_value` and at most `max_value`."""

    python_type = float
    sql_kind = "float"


class BooleanSpec(FieldSpec):
    """True or False."""

    python_type = bool
    sql_kind = "boolean"


class DateSpec(FieldSpec):
    """A `datetime.date`."""

    python_type = dt.date
    sql_kind = "date"


class DateTimeSpec(FieldSpec):
    """A `datetime.datetime`."""

    python_type = dt.datetime
    sql_kind = "datetime"


class ListSpec(FieldSpec):
    """A list of `content_type` (a type, a field type such as `Integer()`, or an element's
    name); defaults to an empty list."""

    target_parameter = "content_type"

    def __init__(self, content_type: Any = Any, **kw: Unpack[FieldOptions]) -> None:
        kw.setdefault("default", list)
        super().__init__(**kw)
        self.content_type = content_type

    def base_type(self) -> Any:
        inner = self.content_type
        if isinstance(inner, FieldSpec):
            inner = inner.base_type()
        return GenericAlias(list, (inner,))


class DictSpec(FieldSpec):
    """A JSON object (`dict[str, Any]`); defaults to an empty dict."""

    def __init__(self, **kw: Unpack[FieldOptions]) -> None:
        kw.setdefault("default", dict)
        super().__init__(**kw)

    def base_type(self) -> Any:
        return dict[str, Any]


class ValueObjectSpec(FieldSpec):
    """A value object embedded in its owner; stored as JSON. The class, or its name."""

    target_parameter = "value_object_cls"

    def __init__(self, value_object_cls: Any, **kw: Unpack[FieldOptions]) -> None:
        super().__init__(**kw)
        self.target = value_object_cls

    def base_type(self) -> Any:
        return self.target


class HasManySpec(FieldSpec):
    """Entities owned by an aggregate; stored with it, as JSON. The class, or its name."""

    target_parameter = "to_cls"

    def __init__(self, to_cls: Any, **kw: Unpack[FieldOptions]) -> None:
        kw.setdefault("default", list)
        super().__init__(**kw)
        self.target = to_cls

    def base_type(self) -> Any:
        return GenericAlias(list, (self.target,))


class HasOneSpec(FieldSpec):
    """One entity owned by an aggregate; stored with it, as JSON. The class, or its name."""

    target_parameter = "to_cls"

    def __init__(self, to_cls: Any, **kw: Unpack[FieldOptions]) -> None:
        super().__init__(**kw)
        self.target = to_cls

    def base_type(self) -> Any:
        return self.target


# The public constructors: at runtime each is its class (`Integer is IntegerSpec`).
String = _constructor(StringSpec)
Text = _constructor(TextSpec)
Identifier = _constructor(IdentifierSpec)
Integer = _constructor(IntegerSpec)
Float = _constructor(FloatSpec)
Boolean = _constructor(BooleanSpec)
Date = _constructor(DateSpec)
DateTime = _constructor(DateTimeSpec)
List = _constructor(ListSpec)
Dict = _constructor(DictSpec)
ValueObject = _constructor(ValueObjectSpec)
HasMany = _constructor(HasManySpec)
HasOne = _constructor(HasOneSpec)

__all__ = [
    "FieldSpec",
    "FieldOptions",
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
    "StringSpec",
    "TextSpec",
    "IdentifierSpec",
    "IntegerSpec",
    "FloatSpec",
    "BooleanSpec",
    "DateSpec",
    "DateTimeSpec",
    "ListSpec",
    "DictSpec",
    "ValueObjectSpec",
    "HasManySpec",
    "HasOneSpec",
]
