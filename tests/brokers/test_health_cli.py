"""`tidings health` reports every broker's health_stats, and never a password."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.test_demo import TIDINGS
from tests.test_server_cli import ROOT, embedded_env

CREATE = "from tidings.examples.bookshelf.domain import domain; domain.init(); domain.create_tables()"


@pytest.mark.slow
def test_tidings_health_lists_each_broker_with_its_subscriber_queues(tmp_path):
    env = embedded_env(tmp_path)
    subprocess.run([sys.executable, "-c", CREATE], cwd=ROOT, env=env, check=True, timeout=60)
    result = subprocess.run(
        [TIDINGS, "health", "--domain", "tidings.examples.bookshelf"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    default = json.loads(result.stdout)["brokers"]["default"]
    assert default["provider"] == "sqlalchemy" and default["healthy"] is True
    assert default["consumer_groups"] == {"supplier::restock": ["bookshelf.supplier_restock_subscriber"]}
    assert default["message_counts"] == {"supplier::restock": 0} and default["dlq_depth"] == 0


@pytest.mark.slow
def test_tidings_health_is_degraded_and_masks_an_unreachable_brokers_password(tmp_path):
    env = {
        **embedded_env(tmp_path),
        "TIDINGS_BROKER_PROVIDER": "redis",
        "BROKER_URL": "redis://:s3cret@127.0.0.1:1/0",
    }
    subprocess.run([sys.executable, "-c", CREATE], cwd=ROOT, env=env, check=True, timeout=60)
    result = subprocess.run(
        [TIDINGS, "health", "--domain", "tidings.examples.bookshelf"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert json.loads(result.stdout)["brokers"]["default"]["healthy"] is False
    assert "s3cret" not in result.stdout + result.stderr
