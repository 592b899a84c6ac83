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


AGED = """
import sys
import sqlalchemy as sa
from datetime import UTC, datetime, timedelta
from tidings.examples.bookshelf.domain import domain, AddBook
domain.init(); domain.create_tables()
if sys.argv[1] == "commit":
    with domain.domain_context():
        domain.process(AddBook(title="Dune", author="Frank Herbert", isbn="978-0441172719", price=9.99))
t, hour_ago = domain.outbox_database.outbox_table, datetime.now(UTC) - timedelta(hours=1)
values = {"created_at": hour_ago}
if sys.argv[1] == "published":  # relayed an hour ago, and no handler ever confirmed it
    values.update(status="published", published_at=hour_ago)
with domain.outbox_database.engine.begin() as conn:
    conn.execute(sa.update(t).values(**values))
"""


def tidings_health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TIDINGS, "health", "--domain", "tidings.examples.bookshelf"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_tidings_health_is_degraded_by_outbox_lag_then_by_audit_lag_with_a_reason_each(tmp_path):
    env = {**embedded_env(tmp_path), "TIDINGS_COMMAND_PROCESSING": "async"}
    subprocess.run([sys.executable, "-c", AGED, "commit"], cwd=ROOT, env=env, check=True, timeout=60)
    result = tidings_health(env)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "degraded" and report["outbox"]["pending"] >= 1
    assert [r for r in report["reasons"] if r.startswith("outbox lag")], report["reasons"]
    assert "degraded: outbox lag: the oldest pending row is" in result.stderr
    assert report["workers"]["checked"] is False  # the embedded transport cannot be asked

    subprocess.run([sys.executable, "-c", AGED, "published"], cwd=ROOT, env=env, check=True, timeout=60)
    result = tidings_health(env)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["outbox"]["pending"] == 0 and report["audit"]["lag"] > 3000
    assert report["reasons"] == [r for r in report["reasons"] if r.startswith("audit lag")] != []
    assert "degraded: audit lag: a published message is unconfirmed" in result.stderr


@pytest.mark.slow
@pytest.mark.redis
def test_tidings_health_is_degraded_while_no_worker_consumes_the_queues_and_ok_once_one_does(tmp_path):
    from tests.services import REDIS_URL, require_redis
    from tests.waiting import wait_until

    require_redis()
    env = {**embedded_env(tmp_path), "TIDINGS_BROKER_PROVIDER": "redis", "BROKER_URL": REDIS_URL}
    subprocess.run([sys.executable, "-c", CREATE], cwd=ROOT, env=env, check=True, timeout=60)
    result = tidings_health(env)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["workers"]["checked"] is True
    assert "no worker consumes queue bookshelf.outbox" in report["reasons"]
    assert "degraded: no worker consumes queue bookshelf." in result.stderr

    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [TIDINGS, "server", "--domain", "tidings.examples.bookshelf", "--pool", "solo", "--no-beat"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        healthy = wait_until(
            lambda: tidings_health(env).returncode == 0, timeout=90, interval=1, message="ok"
        )
        assert healthy
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
