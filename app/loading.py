"""Finding a user's domain from a dotted path (`--domain tidings.examples.bookshelf`)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from tidings.domain import Domain


def load_domain(path: str) -> Domain:
    """Import `path` (or `path.domain`) and return the Domain instance it defines."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for candidate in (path, f"{path}.domain"):
        try:
            module = importlib.import_module(candidate)
        except ModuleNotFoundError as exc:
            if exc.name and candidate.startswith(exc.name):
                continue
            raise
        found = _find_domain(module)
        if found is not None:
            return found
    raise SystemExit(f"no Domain instance found in {path!r} or {path + '.domain'!r}")


def _find_domain(module: Any) -> Domain | None:
    if isinstance(getattr(module, "domain", None), Domain):
        return module.domain
    return next((v for v in vars(module).values() if isinstance(v, Domain)), None)
