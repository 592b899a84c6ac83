"""Finding a user's domain: `--domain` (before or after the subcommand), `TIDINGS_DOMAIN`, or
discovery in the current directory, as the reference's `derive_domain` does.

A domain path is one of:
- a dotted module, `tidings.examples.bookshelf` (its `domain` submodule is tried too);
- a file or folder, `src/hello`, `hello.py`, `.` (its package root goes on `sys.path`);
- either with `:name` for one instance, `hello:app2`, or `:create()` for a factory.

Without a path, `domain.py` then `subdomain.py` in the current directory are tried. In a
module the domain is the attribute `domain` or `subdomain`, else its only Domain instance.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
from pathlib import Path
from typing import Any

from tidings.domain import Domain
from tidings.domain.errors import ConfigurationError


class DomainNotFoundError(ConfigurationError):
    """The domain path names no importable module, or a module without a Domain instance."""


DISCOVERED = ("domain.py", "subdomain.py")


def load_domain(path: str | None = None) -> Domain:
    """The Domain instance `path` names (see the module docstring); None or `.` discovers it."""
    if path in (None, "", "."):
        found = next((f for f in DISCOVERED if Path(f).is_file()), None)
        if found is None:
            raise DomainNotFoundError(
                "no domain given: pass --domain (before or after the subcommand) or set "
                f"TIDINGS_DOMAIN, or run where {' or '.join(DISCOVERED)} defines it"
            )
        path = found
    module_path, _, name = path.partition(":")
    module_name = _import_name(module_path)
    imported = False
    for candidate in (module_name, f"{module_name}.domain"):
        try:
            module = importlib.import_module(candidate)
        except ModuleNotFoundError as exc:
            if exc.name and candidate.startswith(exc.name):
                continue
            raise
        imported = True
        domain = _by_name(module, name) if name else _find_domain(module)
        if domain is not None:
            return domain
    if not imported:
        raise DomainNotFoundError(
            f"domain {module_path!r} (--domain or TIDINGS_DOMAIN): no module or file of that name "
            f"from {os.getcwd()}; give a dotted module on the path (e.g. myapp.domain), a file or "
            "a folder (e.g. src/myapp)"
        )
    raise DomainNotFoundError(
        f"no Domain instance found in {module_name!r} or {module_name + '.domain'!r}: "
        f"define one there, or name it with --domain {module_path}:<name>"
    )


def _import_name(path: str) -> str:
    """A dotted module name as given, or the module a file/folder path is (its package root,
    the first folder up without an `__init__.py`, goes first on `sys.path`)."""
    looks_like_file = path.endswith(".py") or "/" in path or os.sep in path or Path(path).is_dir()
    if not looks_like_file:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        return path
    target = Path(path).resolve()
    if target.suffix == ".py":
        target = target.with_suffix("")
    if target.name == "__init__":
        target = target.parent
    parts = [target.name]
    while (target.parent / "__init__.py").exists():
        target = target.parent
        parts.append(target.name)
    root = str(target.parent)
    if sys.path[:1] != [root]:
        sys.path.insert(0, root)
    return ".".join(reversed(parts))


def _by_name(module: Any, name: str) -> Domain:
    """`module:name` (an attribute) or `module:create()` (a factory called without arguments)."""
    unreadable = f"cannot read {name!r}: give an attribute name or a call without arguments"
    try:
        expr = ast.parse(name.strip(), mode="eval").body
    except SyntaxError:
        raise DomainNotFoundError(unreadable) from None
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and not expr.args and not expr.keywords:
        factory = getattr(module, expr.func.id, None)
        found = factory() if callable(factory) else None
    elif isinstance(expr, ast.Name):
        found = getattr(module, expr.id, None)
    else:
        raise DomainNotFoundError(unreadable)
    if not isinstance(found, Domain):
        raise DomainNotFoundError(f"{module.__name__}:{name} is not a Domain instance")
    return found


def _find_domain(module: Any) -> Domain | None:
    for attr in ("domain", "subdomain"):
        if isinstance(getattr(module, attr, None), Domain):
            return getattr(module, attr)
    found = [v for v in vars(module).values() if isinstance(v, Domain)]
    if len(found) > 1:
        raise DomainNotFoundError(
            f"{module.__name__} defines {len(found)} domains: name one, `--domain {module.__name__}:<name>`"
        )
    return found[0] if found else None
