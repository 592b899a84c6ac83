"""docker-compose.yml must validate (no Docker engine runs here) and, resolved, keep its
promises: a one-shot migration the app services wait for, secrets only in environments, and
health checks paced for a loaded two-core host."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.services import REDIS_URL

ROOT = Path(__file__).resolve().parents[1]
# Values no command line may show: found in a resolved command, they are a leak.
SECRETS = {"POSTGRES_PASSWORD": "pg-s3cret-value", "FLOWER_BASIC_AUTH": "admin:flower-s3cret-value"}
LONG_RUNNING = {"postgres", "redis", "api", "worker", "flower"}  # beat: one process, no probe


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


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    """The services as docker-compose resolves them (anchors merged, variables substituted)."""
    result = run(SECRETS, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


def seconds(duration: str) -> float:
    """A compose duration as resolved (`30s`, `1m`, `1m30s`)."""
    total, number = 0.0, ""
    for char in duration:
        if char.isdigit() or char == ".":
            number += char
        else:
            total += float(number) * {"s": 1, "m": 60, "h": 3600}[char]
            number = ""
    return total


def test_the_compose_file_validates_with_its_secrets_set():
    result = run(SECRETS, "config", "-q")
    assert result.returncode == 0, result.stderr
    services = run(SECRETS, "config", "--services").stdout.split()
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker", "beat", "flower"}


def test_the_compose_file_refuses_to_start_without_the_secrets():
    result = run({}, "config", "-q")
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr
    without_flower = run({"POSTGRES_PASSWORD": SECRETS["POSTGRES_PASSWORD"]}, "config", "-q")
    assert without_flower.returncode != 0
    assert "FLOWER_BASIC_AUTH" in without_flower.stderr  # Flower never runs without a password


def test_the_worker_beat_and_api_start_after_the_migration_succeeded(services):
    migrate = services["migrate"]
    assert migrate["command"][-1] == "tidings db upgrade && tidings db create"
    assert migrate["restart"] == "no"  # one shot: a failure stops the stack instead of looping
    assert migrate["depends_on"]["postgres"] == {"condition": "service_healthy"}
    for name in ("api", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, (
            name
        )


def test_no_secret_is_on_any_command_line(services):
    for name, service in services.items():
        argv = [*(service.get("entrypoint") or []), *(service.get("command") or [])]
        argv += service.get("healthcheck", {}).get("test", [])
        for secret in (SECRETS["POSTGRES_PASSWORD"], "flower-s3cret-value"):
            assert not [arg for arg in argv if secret in arg], name
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == SECRETS["FLOWER_BASIC_AUTH"]


def test_every_long_running_service_has_a_health_check_paced_for_a_loaded_host(services):
    for name in LONG_RUNNING:
        check = services[name]["healthcheck"]
        assert check["test"], name
        assert seconds(check["interval"]) >= 10, name
        assert seconds(check["timeout"]) >= 10, name
        assert seconds(check["start_period"]) >= 30, name
        assert check["retries"] >= 5, name


def test_the_migration_command_makes_a_database_match_the_models_and_can_run_again(
    services, own_postgres_url, tmp_path
):
    # the migrate service's own command and environment, pointed at this test's PostgreSQL
    migrate = services["migrate"]
    env = {
        **os.environ,
        **migrate["environment"],
        "DATABASE_URL": own_postgres_url,
        "BROKER_URL": REDIS_URL,
        "REDIS_URL": REDIS_URL,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    for _ in range(2):  # a restarted stack runs it again on a migrated database
        done = subprocess.run(
            migrate["command"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        # `db create` exits 0 only when nothing differs from the models
        assert "tables of 'bookshelf' match the models" in done.stdout
