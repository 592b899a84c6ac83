"""The image copies everything the distribution is built from (no Docker engine here to build it)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copied() -> set[str]:
    names: set[str] = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            names |= set(line.split()[1:-1])
    return names


def test_the_dockerfile_copies_every_subpackage_and_root_module_of_tidings():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]
    folders = {p.split(".")[1] for p in packages if p.count(".") >= 1}
    root_modules = {p.name for p in ROOT.glob("*.py")}
    assert folders | root_modules | {"pyproject.toml"} <= copied()
