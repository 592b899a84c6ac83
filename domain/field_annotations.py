"""Finding the FieldSpec in a class annotation, without `eval` and without caller frames.

An annotation spells a field in one of two ways: the reference spelling
`quantity: Integer(required=True)`, or `quantity: Annotated[int, Integer(required=True)]`.
Under `from __future__ import annotations` both arrive as strings. A string is parsed
(`ast`) and only one shape is evaluated: a call of a FieldSpec type whose arguments are
literals, names, attribute lookups on names, and nested FieldSpec calls. Names are looked
up as `typing.get_type_hints` looks them up for a class: the class namespace, the defining
module's globals, then the field types and the builtins; never the locals of a caller.

A name found nowhere is accepted in one place only, the parameter that names another
element (`HasMany(Item)`, `ValueObject(Money)`, `List(LineItem)`): it becomes the name
`"Item"`, a forward reference that `domain.init()` resolves with the registry's names. This
is what a class declared inside a function needs, when it refers to another local class.
Anything else that cannot be resolved is an error at class creation, naming the field.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Mapping
from typing import Annotated, Any, get_args, get_origin

from tidings.domain import fields as _fields
from tidings.domain.fields import FieldSpec


class FieldAnnotationError(TypeError):
    """A field annotation spells a FieldSpec that cannot be built."""


class _Unresolved:
    """A name that is not defined where the annotation is evaluated."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def spec_in_annotation(
    annotation: Any, module_globals: Mapping[str, Any], class_namespace: Mapping[str, Any]
) -> FieldSpec | None:
    """The FieldSpec an annotation spells, or None when it is an ordinary type."""
    if isinstance(annotation, FieldSpec):
        return annotation
    if get_origin(annotation) is Annotated:
        return _one_spec([m for m in get_args(annotation)[1:] if isinstance(m, FieldSpec)], annotation)
    if isinstance(annotation, str):
        return _Reader(module_globals, class_namespace).read(annotation)
    return None


def _one_spec(specs: list[FieldSpec], annotation: Any) -> FieldSpec | None:
    if len(specs) > 1:
        raise FieldAnnotationError(f"{annotation!r} holds {len(specs)} field types; give one")
    return specs[0] if specs else None


class _Reader:
    """Evaluates the FieldSpec calls of one string annotation, nothing else."""

    def __init__(self, module_globals: Mapping[str, Any], class_namespace: Mapping[str, Any]) -> None:
        # Lookup order of `typing.get_type_hints` for a class, then the field types (an
        # annotation may spell `Integer()` in a module that imported only `tidings.fields`).
        self.scopes = (class_namespace, module_globals, vars(_fields), vars(builtins))

    def read(self, source: str) -> FieldSpec | None:
        try:
            node = ast.parse(source.strip(), mode="eval").body
        except SyntaxError:
            return None  # not ours: pydantic reports it
        if isinstance(node, ast.Call) and self._spec_type(node.func) is not None:
            return self._call(node)
        if isinstance(node, ast.Subscript) and self._lookup(node.value) is Annotated:
            items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            # The first item is the type for a type checker; only the metadata is evaluated.
            calls = [n for n in items[1:] if isinstance(n, ast.Call) and self._spec_type(n.func)]
            return _one_spec([self._call(c) for c in calls], source)
        return None

    def _lookup(self, node: ast.expr) -> Any:
        """The object a name or dotted name refers to, or None."""
        if isinstance(node, ast.Name):
            for scope in self.scopes:
                if node.id in scope:
                    return scope[node.id]
            return None
        if isinstance(node, ast.Attribute):
            owner = self._lookup(node.value)
            return getattr(owner, node.attr, None) if owner is not None else None
        return None

    def _spec_type(self, node: ast.expr) -> type[FieldSpec] | None:
        found = self._lookup(node)
        return found if isinstance(found, type) and issubclass(found, FieldSpec) else None

    def _call(self, node: ast.Call) -> FieldSpec:
        spec_type = self._spec_type(node.func)
        if spec_type is None:
            raise FieldAnnotationError(f"{ast.unparse(node.func)} is not a field type")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise FieldAnnotationError(f"{ast.unparse(node)}: give the arguments one by one")
        args = [self._value(a) for a in node.args]
        kwargs = {k.arg: self._value(k.value) for k in node.keywords if k.arg is not None}
        # The parameter that names an element may name one not defined yet: by its name.
        target = spec_type.target_parameter
        if args and isinstance(args[0], _Unresolved) and target is not None:
            args[0] = args[0].name
        if target in kwargs and isinstance(kwargs[target], _Unresolved):
            kwargs[target] = kwargs[target].name
        for value in (*args, *kwargs.values()):
            _refuse_unresolved(value, node)
        return spec_type(*args, **kwargs)

    def _value(self, node: ast.expr) -> Any:
        """An argument: a literal, a known name, or a nested field type call."""
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Name):
            for scope in self.scopes:
                if node.id in scope:
                    return scope[node.id]
            return _Unresolved(node.id)
        if isinstance(node, ast.Attribute):
            owner = self._value(node.value)
            if isinstance(owner, _Unresolved) or not hasattr(owner, node.attr):
                return _Unresolved(ast.unparse(node))
            return getattr(owner, node.attr)
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            items = [self._value(e) for e in node.elts]
            return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise FieldAnnotationError(f"{ast.unparse(node)}: `**` is not supported in a field")
            return {
                self._value(k): self._value(v)
                for k, v in zip(node.keys, node.values, strict=True)
                if k is not None
            }
        if isinstance(node, ast.Subscript):  # a generic type such as `dict[str, int]`
            base, index = self._value(node.value), self._value(node.slice)
            _refuse_unresolved(base, node)
            _refuse_unresolved(index, node)
            return base[index]
        try:
            return ast.literal_eval(node)  # constants, and signed numbers such as -1
        except ValueError:
            raise FieldAnnotationError(
                f"{ast.unparse(node)!r} in a field annotation: only literals, names and field "
                "types are evaluated there; give this field with an assignment "
                "(`x: int = Integer(...)`) or Annotated"
            ) from None


def _refuse_unresolved(value: Any, node: ast.AST) -> None:
    if isinstance(value, _Unresolved):
        raise FieldAnnotationError(
            f"name {value.name!r} in {ast.unparse(node)!r} is not defined in the class's module; "
            "a string annotation is evaluated with the module's names (never a function's "
            "locals): define it at module level, or give the field with an assignment "
            "(`x: int = Integer(...)`), which Python evaluates where the class is"
        )
    if isinstance(value, list | tuple | set):
        for item in value:
            _refuse_unresolved(item, node)
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_unresolved(key, node)
            _refuse_unresolved(item, node)
