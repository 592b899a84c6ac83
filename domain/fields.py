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

import copy
import datetime as dt
from collections.abc import Callable, Sequence
from enum import Enum
from types import GenericAlias
from typing import Annotated, Any, ClassVar, Optional, ParamSpec, TypedDict, Unpack
from uuid import UUID

from pydantic import AfterValidator, BeforeValidator
from pydantic import Field as PydanticField
from pydantic.fields import FieldInfo

_MISSING: Any = object()
_P = ParamSpec("_P")


class FieldOptions(TypedDict, total=False):
    """The options every field type accepts (see `FieldSpec.__init__`)."""

    required: bool
    default: Any
    identifier: bool
    unique: bool
    choices: Sequence[Any] | type[Enum] | None
    description: str | None


class FieldSpec:
    """Base of the declarative fields; `annotation()` and `field_info()` give the pydantic side.

    `required`: no default, the value must be given. `default`: a value, or a callable that
    makes one. `identifier`: the element's identity (implies required and unique).
    `unique`: stored with a unique constraint. `choices`: the allowed values (a sequence or
    an Enum). `description`: goes to the JSON schema.
    """

    python_type: ClassVar[Any] = Any
    sql_kind: ClassVar[str] = "json"  # how the SQL providers store it: a column kind name
    # The parameter that names another element (`HasMany(Item)`): it may be given by name,
    # as a string, and is then resolved with the registry's names at `domain.init()`.
    target_parameter: ClassVar[str | None] = None

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

    def __repr__(self) -> str:
        shown = {k: v for k, v in vars(self).items() if not (v is _MISSING or v is None or v is False)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def has_default(self) -> bool:
        """Whether a default was given (`default=...`)."""
        return self.default is not _MISSING

    def with_default(self, default: Any) -> FieldSpec:
        """A copy of this spec with `default` (for `x: Annotated[int, Integer()] = 3`)."""
        spec = copy.copy(self)
        spec.default = default
        return spec

    def base_type(self) -> Any:
        """The python type of a value, before choices and optionality."""
        return self.python_type

    def constraints(self) -> dict[str, Any]:
        """Keyword arguments for pydantic's `Field` (`ge`, `max_length`, ...)."""
        return {}

    def annotation(self) -> Any:
        """The pydantic annotation: the base type, checked against `choices`, optional
        when the field is neither required nor defaulted to a value."""
        typ = self.base_type()
        validators = []
        if self.choices is not None:
            allowed = _choice_values(self.choices)

            def check(value: Any, _allowed: tuple[Any, ...] = allowed) -> Any:
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
        """The pydantic `FieldInfo`: default (or factory), constraints, description."""
        kwargs: dict[str, Any] = dict(self.constraints())
        kwargs["json_schema_extra"] = {"tidings_unique": self.unique, "tidings_identifier": self.identifier}
        if self.description:
            kwargs["description"] = self.description
        if not self._is_required():
            default = self._default()
            if callable(default):
                kwargs["default_factory"] = default
            elif isinstance(default, list | dict | set):
                kwargs["default_factory"] = lambda d=default: type(d)(d)  # a fresh copy each time
            else:
                kwargs["default"] = default
        info: FieldInfo = PydanticField(**kwargs)
        return info


def _choice_values(choices: Sequence[Any] | type[Enum]) -> tuple[Any, ...]:
    if isinstance(choices, type) and issubclass(choices, Enum):
        return tuple(m.value for m in choices)
    return tuple(choices)


def _constructor(cls: Callable[_P, FieldSpec]) -> Callable[_P, Any]:
    """The field type itself, typed as a constructor that returns `Any`.

    A type checker then accepts `quantity: int = Integer(required=True)` (as it accepts
    pydantic's `Field()`), and still checks the arguments against the class's `__init__`.
    """
    return cls


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
