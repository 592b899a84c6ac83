"""The base of the Protean-style field declarations: `FieldSpec` (its options, its pydantic
annotation and `FieldInfo`) and the typed constructor wrapper."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Annotated, Any, ClassVar, Optional, ParamSpec, TypedDict

from pydantic import AfterValidator
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
