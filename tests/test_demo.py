"""`tidings demo` itself: real processes, over HTTP, exits 0 only on the exact end state."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.services import REDIS_URL, require_redis

TIDINGS = shutil.which("tidings") or str(Path(__file__).resolve().parents[1] / ".venv/bin/tidings")


def run_demo(cwd: Path, *flags: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")}
    return subprocess.run(
        [TIDINGS, "demo", *flags], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=240
    )


@pytest.mark.slow
def test_the_demo_runs_on_the_embedded_default_and_exits_0(tmp_path):
    result = run_demo(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "end state is exactly as expected" in result.stdout
    assert "UnknownMessageTypeError" in result.stdout  # the poison message's DLQ entry
    assert "database: sqlite, broker: sqlalchemy" in result.stdout


@pytest.mark.slow
def test_the_demo_runs_on_postgresql_and_redis(tmp_path, postgres_url):
    require_redis()
    redis_url = REDIS_URL.rsplit("/", 1)[0] + "/14"  # a database of its own on the shared Redis
    result = run_demo(tmp_path, "--redis", "--postgres", DATABASE_URL=postgres_url, REDIS_URL=redis_url)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "database: postgresql, broker: redis" in result.stdout
    assert "end state is exactly as expected" in result.stdout
