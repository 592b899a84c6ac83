"""The image copies everything the distribution is built from and runs as an unprivileged
user (no Docker engine here to build it: the Dockerfile is read)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def copied() -> set[str]:
    names: set[str] = set()
    for instruction, arguments in instructions():
        if instruction == "COPY":
            names |= set(arguments.split()[:-1])
    return names


def test_the_dockerfile_copies_every_subpackage_and_root_module_of_tidings():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]
    folders = {p.split(".")[1] for p in packages if p.count(".") >= 1}
    root_modules = {p.name for p in ROOT.glob("*.py")}
    assert folders | root_modules | {"pyproject.toml"} <= copied()


def test_the_image_runs_as_a_non_root_user_it_creates():
    steps = instructions()
    users = [arguments.split(":")[0] for instruction, arguments in steps if instruction == "USER"]
    assert users, "no USER: every container would run as root"
    final = users[-1]
    assert final not in ("root", "0")
    assert final.isdigit()  # a numeric uid: Kubernetes' runAsNonRoot can verify it
    created = " ".join(arguments for instruction, arguments in steps if instruction == "RUN")
    assert f"--uid {final}" in created
