"""Base elements (pydantic v2 models) and the metaclass that accepts Protean-style fields.

Both spellings are first class:

    class Order(BaseAggregate):          # plain pydantic
        quantity: int = 0

    @domain.aggregate
    class Order:                         # Protean-style
        quantity: Integer(required=True)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, ClassVar, TypeAlias, TypeVar, cast
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, PrivateAttr
from pydantic import ValidationError as PydanticValidationError
from pydantic._internal._model_construction import ModelMetaclass
from pydantic.fields import FieldInfo

from tidings.domain.context import domain_of
from tidings.domain.errors import ConfigurationError, IncorrectUsageError, from_pydantic
from tidings.domain.field_annotations import FieldAnnotationError, spec_in_annotation
from tidings.domain.fields import FieldSpec, IdentifierSpec
from tidings.domain.metadata import Metadata


def _new_id() -> str:
    return str(uuid4())


def _resolve(annotation: Any, module: str | None, namespace: dict[str, Any], where: str) -> FieldSpec | None:
    """The FieldSpec an annotation spells (`Integer(...)`, `Annotated[int, Integer(...)]`).

    A string annotation (`from __future__ import annotations`) is parsed, not evaluated with
    `eval`; its names come from the class namespace and its module's globals, never from a
    caller's frame (see field_annotations.py). A name a function's locals define is kept as
    a name where a field refers to another element, and resolved at `domain.init()`.
    """
    module_globals = vars(sys.modules[module]) if module in sys.modules else {}
    try:
        return spec_in_annotation(annotation, module_globals, namespace)
    except FieldAnnotationError as exc:
        raise FieldAnnotationError(f"{where}: {exc}") from None


class ElementMeta(ModelMetaclass):
    """Rewrites FieldSpec annotations/assignments into pydantic fields before pydantic runs.

    `x: Integer(...)`, `x: Annotated[int, Integer(...)]` and `x: int = Integer(...)` (or
    `x = Integer(...)`) give the same pydantic field: the spec's annotation and FieldInfo.
    """

    _field_specs: dict[str, FieldSpec]

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any) -> type:
        annotations = dict(namespace.get("__annotations__", {}))
        specs: dict[str, FieldSpec] = {}
        for key, ann in annotations.items():
            spec = _resolve(ann, namespace.get("__module__"), namespace, f"{name}.{key}")
            if spec is None:
                continue
            if key in namespace:  # `x: Annotated[int, Integer()] = 3`: the value is the default
                value = namespace[key]
                if isinstance(value, FieldSpec | FieldInfo) or spec.has_default:
                    raise FieldAnnotationError(
                        f"{name}.{key}: the field is given twice (annotation and value); give it once"
                    )
                spec = spec.with_default(value)
            specs[key] = spec
        for key, value in namespace.items():
            if isinstance(value, FieldSpec):
                specs[key] = value
        for key, spec in specs.items():
            annotations[key] = spec.annotation()
            namespace[key] = spec.field_info()
        id_field = next((k for k, s in specs.items() if s.identifier), None)
        auto_id = namespace.get("_auto_id", any(getattr(b, "_auto_id", False) for b in bases))
        inherited_id = next(
            (i for b in bases if (i := getattr(b, "_id_field", None)) in getattr(b, "model_fields", {})),
            None,
        )
        if id_field is None and auto_id and not inherited_id and not namespace.get("_abstract"):
            if "id" in annotations:
                id_field = "id"
            else:
                spec = IdentifierSpec(identifier=True, default=_new_id)
                annotations = {"id": spec.annotation(), **annotations}
                namespace["id"] = spec.field_info()
                id_field = "id"
        namespace["__annotations__"] = annotations
        if id_field:
            namespace["_id_field"] = id_field
        namespace.setdefault("_abstract", False)
        cls = cast(ElementMeta, super().__new__(mcs, name, bases, namespace, **kwargs))
        cls._field_specs = {**getattr(cls, "_field_specs", {}), **specs}
        return cls


class BaseElement(BaseModel, metaclass=ElementMeta):
    """Common base: typed validation errors and `to_dict()`."""

    model_config = ConfigDict(validate_assignment=True, extra="forbid", arbitrary_types_allowed=True)
    _abstract: ClassVar[bool] = True
    _auto_id: ClassVar[bool] = False
    _field_specs: ClassVar[dict[str, FieldSpec]] = {}
    meta_: ClassVar[dict[str, Any]] = {}
    element_kind: ClassVar[str] = "element"

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except PydanticValidationError as exc:
            raise from_pydantic(exc, type(self).__name__) from None

    # Tells pydantic this __init__ behaves like its own, so nested models are validated
    # natively and their errors keep full locations (`total.currency`).
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except PydanticValidationError as exc:
            raise from_pydantic(exc, type(self).__name__) from None

    def to_dict(self) -> dict[str, Any]:
        """The element's data as JSON-compatible values."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseElement:
        return cls(**data)


class _Identified(BaseElement):
    _abstract: ClassVar[bool] = True
    _auto_id: ClassVar[bool] = True
    _id_field: ClassVar[str] = ""

    @property
    def identity(self) -> str:
        return getattr(self, self._id_field)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.identity == self.identity

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.identity))


class BaseValueObject(BaseElement):
    """Immutable, compared by value."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    element_kind: ClassVar[str] = "value_object"


class BaseEntity(_Identified):
    """An object with identity inside an aggregate."""

    _abstract: ClassVar[bool] = True  # the auto `id` belongs to subclasses without an identifier
    element_kind: ClassVar[str] = "entity"


class BaseAggregate(_Identified):
    """A consistency boundary; `raise_()` records events that commit with it."""

    _abstract: ClassVar[bool] = True  # the auto `id` belongs to subclasses without an identifier
    element_kind: ClassVar[str] = "aggregate"
    _version: int = PrivateAttr(default=-1)
    _events: list = PrivateAttr(default_factory=list)

    @property
    def version(self) -> int:
        """The stored version this object was loaded at (-1 before the first save)."""
        return self._version

    def raise_(self, event: BaseEvent) -> None:
        """Record an event; it is stored and dispatched only when this aggregate commits.

        Once the aggregate's domain is initialised, the event has its envelope at once:
        `event._metadata` (id, stream, type, kind, correlation, ...) is readable right after
        `raise_()`, and the same id, time and causation are what the commit stores.
        """
        self._events.append(event)
        domain = domain_of(type(self))
        if domain is None or not domain.initialized:
            return
        try:
            domain.event_message(event, self)
        except (IncorrectUsageError, ConfigurationError):
            return  # not a registered event of this domain: repository.add reports it
        event._raised = True


class BaseProjection(_Identified):
    """A read model maintained by projectors."""

    _abstract: ClassVar[bool] = True  # the auto `id` belongs to subclasses without an identifier
    element_kind: ClassVar[str] = "projection"


# A model the repositories keep in a table of its own: an aggregate (versioned) or a projection.
# (typed as their common base, which entities share: an entity is stored inside its aggregate).
StoredModel: TypeAlias = type[_Identified]


class _Message(BaseElement):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    _abstract: ClassVar[bool] = True
    _message: Any = PrivateAttr(default=None)
    _raised: bool = PrivateAttr(default=False)  # the envelope was built by raise_, not yet stored

    @property
    def message(self) -> Any:
        """The envelope this object travelled in, once it has one."""
        return self._message

    @property
    def _metadata(self) -> Metadata | None:
        """The envelope's metadata in the reference's layout (`headers`, `envelope`, `domain`,
        `event_store`, and flat `id`, `type`, `stream`, `kind`, ...); None until the object
        has an envelope (raised by a registered aggregate, published, processed or received)."""
        return None if self._message is None else Metadata.of(self._message, type(self))


class BaseEvent(_Message):
    """A fact that happened, named in the past tense. Immutable."""

    element_kind: ClassVar[str] = "event"


class BaseCommand(_Message):
    """An intention, named in the imperative. Immutable."""

    element_kind: ClassVar[str] = "command"


class BaseQuery(_Message):
    """A structured read request, dispatched with `domain.dispatch(query)`."""

    element_kind: ClassVar[str] = "query"


# Handlers are plain classes: they hold behaviour, not data.
class BaseHandler:
    element_kind: ClassVar[str] = "handler"
    meta_: ClassVar[dict[str, Any]] = {}

    @classmethod
    def handle_error(cls, exc: Exception, message: Any) -> None:
        """Called on every failure; override to compensate or alert. Must not raise."""


class BaseEventHandler(BaseHandler):
    element_kind: ClassVar[str] = "event_handler"


class BaseCommandHandler(BaseHandler):
    element_kind: ClassVar[str] = "command_handler"


class BaseProjector(BaseHandler):
    element_kind: ClassVar[str] = "projector"


class BaseSubscriber(BaseHandler):
    element_kind: ClassVar[str] = "subscriber"

    def __call__(self, payload: dict) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define __call__ or @handle methods")


class BaseQueryHandler(BaseHandler):
    element_kind: ClassVar[str] = "query_handler"


# A registered element class: the registry hands out only subclasses of the bases above, so
# every one has `meta_` (its options, set at registration) and `element_kind`.
ElementClass: TypeAlias = type[BaseElement] | type[BaseHandler]


_F = TypeVar("_F", bound=Callable[..., Any])


def handle(target: Any) -> Callable[[_F], _F]:
    """Bind a handler method to one message class (or a type string, or "$any")."""

    def decorator(fn: _F) -> _F:
        setattr(fn, "_tidings_handles", target)  # noqa: B010 - a typed callable declares no such attribute
        return fn

    return decorator


on = handle  # projectors say @on(Event)


def read(query_cls: Any) -> Callable[[_F], _F]:
    """Bind a query handler method to one query class."""

    def decorator(fn: _F) -> _F:
        setattr(fn, "_tidings_reads", query_cls)  # noqa: B010 - a typed callable declares no such attribute
        return fn

    return decorator
