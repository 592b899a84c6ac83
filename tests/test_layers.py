"""The layers stay visible: a small import check keeps them true."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("domain", "outbox", "tasks", "app", "examples")
FORBIDDEN = {
    "domain": {"celery", "kombu", "redis", "tidings.tasks", "tidings.app", "tidings.examples"},
    "outbox": {"celery", "kombu", "tidings.domain", "tidings.tasks", "tidings.app", "tidings.examples"},
    "tasks": {"tidings.app", "tidings.examples"},
}


def imported(path: Path) -> set[str]:
    """What a module imports, as `celery` for third parties and `tidings.<layer>` for ours."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            names.add(".".join(parts[:2]) if parts[0] == "tidings" else parts[0])
    return names


def library_files() -> list[Path]:
    return [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_never_imports_the_layers_above_it(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_library_imports_itself_only_as_tidings():
    # the folders are installed as tidings.<folder>: a bare `import domain` would load a second
    # copy from the working directory, or a user's own module of that name
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported(path) & {*PACKAGES, "celeryconfig"})
        for path in [*library_files(), ROOT / "__init__.py", ROOT / "fields.py"]
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_sees_a_forbidden_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from tidings.app.bootstrap import bootstrap\nimport kombu.transport\nimport domain\n")
    assert imported(module) == {"tidings.app", "kombu", "domain"}
