"""docker-compose.yml must at least validate (no Docker engine runs here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {"POSTGRES_PASSWORD": "x", "FLOWER_USER": "u", "FLOWER_PASSWORD": "p"}


def compose() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    reason = "docker-compose is not installed (apt-get install -y docker-compose)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; .ci/run installs it")
    pytest.skip(reason)


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run(
        [*compose(), *args], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def test_the_compose_file_validates_with_its_secrets_set():
    result = run(SECRETS, "config", "-q")
    assert result.returncode == 0, result.stderr
    services = run(SECRETS, "config", "--services").stdout.split()
    assert set(services) == {"postgres", "redis", "api", "worker", "beat", "flower"}


def test_the_compose_file_refuses_to_start_without_the_secrets():
    result = run({}, "config", "-q")
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr
