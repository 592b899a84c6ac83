"""The three field spellings give the same pydantic field, with or without
`from __future__ import annotations`, and the typed spellings pass mypy.

Each case is a small module written into tmp_path and imported for real: how a string
annotation is read depends on the module the class is defined in, never on the caller.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import annotated_types
import pytest
from pydantic_core import PydanticUndefined

from tidings import BaseAggregate, ConfigurationError, ValidationError
from tidings.domain.field_annotations import FieldAnnotationError
from tidings.fields import Integer, IntegerSpec, String, StringSpec

REPO = Path(__file__).resolve().parents[2]
FUTURE = {"future": "from __future__ import annotations\n", "runtime": ""}

ImportSource = Callable[[str], ModuleType]


@pytest.fixture
def import_source(tmp_path: Path) -> Iterator[ImportSource]:
    """Write a module into tmp_path and import it (under a fresh name)."""
    names: list[str] = []

    def load(source: str) -> ModuleType:
        name = f"spellings_{uuid.uuid4().hex[:8]}"
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        names.append(name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in names:
        sys.modules.pop(name, None)


SPELLINGS = """\
{future}
from typing import Annotated, Optional

from tidings import Domain
from tidings.fields import Integer, String

domain = Domain("spellings", root_path={root!r})
STATUSES = ["PENDING", "SHIPPED"]


@domain.aggregate
class ByReference:
    quantity: Integer(required=True, min_value=1, max_value=99)
    status: String(choices=STATUSES, default="PENDING", max_length=10)
    note: String(min_length=2)


@domain.aggregate
class ByAnnotated:
    quantity: Annotated[int, Integer(required=True, min_value=1, max_value=99)]
    status: Annotated[str, String(choices=STATUSES, default="PENDING", max_length=10)]
    note: Annotated[Optional[str], String(min_length=2)]


@domain.aggregate
class ByAssignment:
    quantity: int = Integer(required=True, min_value=1, max_value=99)
    status: str = String(choices=STATUSES, default="PENDING", max_length=10)
    note: Optional[str] = String(min_length=2)


domain.init()
"""


def _field(model: type[BaseAggregate], name: str) -> tuple[Any, ...]:
    """Required, default and constraints (the `choices` check is a validator: tried below)."""
    info = model.model_fields[name]
    constraints = [m for m in info.metadata if isinstance(m, annotated_types.BaseMetadata)]
    return (info.is_required(), info.get_default(call_default_factory=True), constraints)


@pytest.mark.parametrize("mode", sorted(FUTURE))
def test_the_three_spellings_give_the_same_pydantic_field(
    mode: str, import_source: ImportSource, tmp_path: Path
) -> None:
    module = import_source(SPELLINGS.format(future=FUTURE[mode], root=str(tmp_path)))
    models = [module.ByReference, module.ByAnnotated, module.ByAssignment]

    for model in models:
        fields = model.model_fields
        assert fields["quantity"].annotation is int
        assert _field(model, "quantity") == (
            True,
            PydanticUndefined,
            [annotated_types.Ge(1), annotated_types.Le(99)],
        )
        assert _field(model, "status") == (False, "PENDING", [annotated_types.MaxLen(10)])
        assert fields["note"].annotation == Optional[str]  # noqa: UP045 - compared with a runtime object
        assert _field(model, "note") == (
            False,
            None,
            [annotated_types.MinLen(2), annotated_types.MaxLen(255)],
        )
        assert isinstance(model._field_specs["quantity"], IntegerSpec)
        assert isinstance(model._field_specs["status"], StringSpec)

        order = model(quantity=3)
        assert (order.quantity, order.status, order.note) == (3, "PENDING", None)
        for bad, field in [
            ({"quantity": 0}, "quantity"),
            ({"quantity": 100}, "quantity"),
            ({"quantity": "lots"}, "quantity"),
            ({}, "quantity"),
            ({"quantity": 1, "status": "LOST"}, "status"),
            ({"quantity": 1, "note": "x"}, "note"),
        ]:
            with pytest.raises(ValidationError) as caught:
                model(**bad)
            assert list(caught.value.errors) == [field], bad

    schemas = [m.model_json_schema() for m in models]
    assert all(s["properties"] == schemas[0]["properties"] for s in schemas)
    assert all(s["required"] == ["quantity"] for s in schemas)


LOCAL_CLASSES = """\
from __future__ import annotations

from typing import Annotated

from tidings import Domain
from tidings.fields import HasMany, HasOne, List, String, ValueObject


def build(root):
    domain = Domain("locals", root_path=root)

    @domain.aggregate
    class Basket:  # declared before the classes it names
        items: HasMany(Item)
        first: HasOne(Item)
        total: Annotated[Price, ValueObject(Price)]
        history: List(ValueObject(Price))
        named: HasMany("Item")

    @domain.entity(part_of=Basket)
    class Item:
        sku: String(required=True, max_length=5)

    @domain.value_object
    class Price:
        amount: String(required=True)

    domain.init()
    return domain
"""


def test_classes_declared_in_a_function_refer_to_each_other_by_name(
    import_source: ImportSource, tmp_path: Path
) -> None:
    """Under `from __future__`, `HasMany(Item)` with a local `Item` is kept as the name
    `"Item"` and resolved at `domain.init()` with the registry's names."""
    domain = import_source(LOCAL_CLASSES).build(tmp_path)
    basket_cls = domain.registry["aggregate"]["Basket"]
    item_cls = domain.registry["entity"]["Item"]
    price_cls = domain.registry["value_object"]["Price"]

    basket = basket_cls(
        items=[{"sku": "a"}],
        first=item_cls(sku="b"),
        total={"amount": "3"},
        history=[price_cls(amount="1")],
        named=[{"sku": "c"}],
    )
    assert type(basket.items[0]) is item_cls and basket.items[0].sku == "a"
    assert type(basket.total) is price_cls
    assert type(basket.history[0]) is price_cls
    assert type(basket.named[0]) is item_cls
    with pytest.raises(ValidationError) as caught:
        basket_cls(items=[{"sku": "toolong"}])
    assert "items.0.sku" in caught.value.errors


def test_a_name_that_is_no_element_is_reported_by_init(import_source: ImportSource, tmp_path: Path) -> None:
    source = """\
    from __future__ import annotations

    from tidings import Domain
    from tidings.fields import HasMany, String


    def build(root):
        domain = Domain("typo", root_path=root)

        @domain.aggregate
        class Basket:
            items: HasMany(Itme)

        @domain.entity(part_of=Basket)
        class Item:
            sku: String()

        domain.init()
    """
    with pytest.raises(ConfigurationError, match=r"aggregate Basket: name 'Itme' is not defined"):
        import_source(source).build(tmp_path)


def test_without_future_annotations_local_classes_must_exist_first(
    import_source: ImportSource, tmp_path: Path
) -> None:
    """Without `from __future__`, Python evaluates the annotations itself, so the classes are
    declared in order (or named with a string); they then work the same."""
    source = """\
    from tidings import Domain
    from tidings.fields import HasMany, String, ValueObject


    def build(root):
        domain = Domain("ordered", root_path=root)

        @domain.value_object
        class Price:
            amount: String(required=True)

        @domain.aggregate
        class Basket:
            total: ValueObject(Price)
            items: HasMany("Item")

        @domain.entity(part_of=Basket)
        class Item:
            sku: String(required=True)

        domain.init()
        return domain
    """
    domain = import_source(source).build(tmp_path)
    basket = domain.registry["aggregate"]["Basket"](total={"amount": "1"}, items=[{"sku": "a"}])
    assert basket.total.amount == "1" and basket.items[0].sku == "a"


def test_a_string_annotation_reads_the_module_not_the_caller(
    import_source: ImportSource, tmp_path: Path
) -> None:
    """Names in a string annotation come from the class's module (as `get_type_hints`
    does); a caller's locals are never read. A name only a function defines is an error,
    unless it names an element; the assignment spelling is evaluated by Python in place."""
    source = """\
    from __future__ import annotations

    from typing import Annotated

    from tidings import Domain
    from tidings.fields import String

    CHOICES = ["module"]


    def shadowed(root):
        CHOICES = ["local"]  # a string annotation does not see this
        domain = Domain("shadow", root_path=root)

        @domain.aggregate
        class Thing:
            kind: String(choices=CHOICES)
            typed: str = String(choices=CHOICES)  # an expression: Python sees the local

        return Thing


    def local_only(root):
        ONLY_HERE = ["x"]
        domain = Domain("local", root_path=root)

        @domain.aggregate
        class Thing:
            kind: Annotated[str, String(choices=ONLY_HERE)]

        return Thing
    """
    module = import_source(source)
    thing = module.shadowed(tmp_path)
    thing(kind="module", typed="local")
    with pytest.raises(ValidationError):
        thing(kind="local")
    with pytest.raises(ValidationError):
        thing(typed="module")
    with pytest.raises(FieldAnnotationError, match=r"Thing\.kind: name 'ONLY_HERE'.*not defined"):
        module.local_only(tmp_path)


@pytest.mark.parametrize("mode", sorted(FUTURE))
def test_an_annotated_field_takes_its_default_from_the_assignment(
    mode: str, import_source: ImportSource
) -> None:
    source = f"""\
    {FUTURE[mode]}
    from typing import Annotated

    from tidings import BaseAggregate
    from tidings.fields import Integer


    class Stock(BaseAggregate):
        count: Annotated[int, Integer(min_value=0)] = 3
    """
    stock_cls = import_source(source).Stock
    assert stock_cls().count == 3
    assert stock_cls.model_fields["count"].metadata == [annotated_types.Ge(0)]
    with pytest.raises(ValidationError):
        stock_cls(count=-1)


def test_a_field_given_twice_is_refused(import_source: ImportSource) -> None:
    source = """\
    from typing import Annotated

    from tidings import BaseAggregate
    from tidings.fields import Integer


    class Stock(BaseAggregate):
        count: Annotated[int, Integer(default=1)] = 3
    """
    with pytest.raises(FieldAnnotationError, match=r"Stock\.count: the field is given twice"):
        import_source(source)


def test_the_public_field_names_are_the_field_classes() -> None:
    """`Integer` is typed as a constructor returning Any, but at runtime it is the class."""
    assert Integer is IntegerSpec and String is StringSpec
    assert isinstance(Integer(required=True), IntegerSpec)


TYPED = """\
from typing import Annotated

from tidings import BaseAggregate, BaseEntity, Domain
from tidings.fields import HasMany, Integer, IntegerSpec, String

domain = Domain("typed", root_path={root!r})


@domain.entity(part_of="Order")
class Line(BaseEntity):
    sku: Annotated[str, String(required=True)]


@domain.aggregate
class Order(BaseAggregate):
    quantity: Annotated[int, Integer(required=True, min_value=1)]
    status: str = String(choices=["PENDING", "SHIPPED"], default="PENDING")
    lines: Annotated[list[Line], HasMany(Line)]


def doubled(order: Order) -> int:
    return order.quantity * 2


class Positive(IntegerSpec):
    def __init__(self) -> None:
        super().__init__(min_value=1)


domain.init()
ORDER = Order(quantity=2, lines=[Line(sku="a")])
"""

UNTYPED = """\
from tidings import BaseAggregate
from tidings.fields import Integer, String


class Order(BaseAggregate):
    quantity: int = Integer(required=True)
    status: String()


def wrong(order: Order) -> None:
    order.quantity = "many"
    Integer(requird=True)
"""


def _mypy_available() -> bool:
    return importlib.util.find_spec("mypy") is not None


def test_the_typed_spellings_pass_mypy_and_the_reference_spelling_does_not(
    import_source: ImportSource, tmp_path: Path
) -> None:
    if not _mypy_available():
        if os.environ.get("CI") == "true":
            pytest.fail("mypy must be installed in CI (pip install -e '.[dev]')")
        pytest.skip("mypy is not installed (it is in the dev extra)")
    # The package is `tidings` only through the package-dir mapping, which mypy cannot
    # follow in an editable install: point it at the repository under that name.
    stubs = tmp_path / "path"
    stubs.mkdir()
    (stubs / "tidings").symlink_to(REPO, target_is_directory=True)
    typed = tmp_path / "checked_module.py"
    typed.write_text(TYPED.format(root=str(tmp_path)))
    untyped = tmp_path / "rejected_module.py"
    untyped.write_text(UNTYPED)

    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental"]
        + ["--cache-dir", os.devnull, "--no-error-summary", str(typed), str(untyped)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(stubs)},
        timeout=240,
    )
    errors = sorted(
        line.split(": error: ")[0].rsplit(":", 1)[-1] + " " + line.rsplit("[", 1)[-1].rstrip("]")
        for line in result.stdout.splitlines()
        if ": error: " in line
    )
    assert "checked_module" not in result.stdout, result.stdout
    # The reference spelling in an annotation, a str into an int field, a misspelt option.
    assert errors == ["11 assignment", "12 call-arg", "7 valid-type"], result.stdout + result.stderr

    typed_runtime = import_source(TYPED.format(root=str(tmp_path)))  # and it runs
    assert typed_runtime.doubled(typed_runtime.ORDER) == 4
    assert typed_runtime.ORDER.lines[0].sku == "a"
    with pytest.raises(ValidationError):
        typed_runtime.Order(quantity=0)
