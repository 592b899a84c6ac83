"""The event_store subscription type with a real worker (Redis + PostgreSQL) and the CLI."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from tests.engine.accounts import CALLS, FAILURES, build_accounts, deposit, open_account, rows
from tests.engine.conftest import running_worker
from tests.waiting import wait_until
from tidings.app.cli import main
from tidings.tasks.naming import task_name
from tidings.tasks.positions import FAILED, position_store


@pytest.fixture(autouse=True)
def _fresh_counters():
    CALLS.clear()
    FAILURES.clear()
    yield
    FAILURES.clear()


def history(domain) -> dict[str, list[int]]:
    return {r["account_id"]: r["history"] for r in rows(domain, "Statement")}


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_a_real_worker_applies_each_event_once_in_stream_order_and_records_failures(
    use_provider, redis_app, caplog
):
    caplog.set_level("ERROR")
    domain = use_provider(build_accounts(messages_per_tick=5, position_update_interval=2))
    celery = redis_app(domain)
    ids = [open_account(domain) for _ in range(3)]
    FAILURES[13] = 100  # the Auditor can never handle a deposit of 13
    with running_worker(celery, concurrency=4):
        for n in range(1, 11):
            for account in ids:
                deposit(domain, account, 13 if (n, account) == (4, ids[0]) else n)
        expected = {account: list(range(1, 11)) for account in ids}
        wait_until(lambda: history(domain) == expected, message="every statement complete")
        wait_until(lambda: len(rows(domain, "Audit")) == 29, message="every audit but one")
        auditor = domain.registry["projector"]["Auditor"]
        wait_until(
            lambda: position_store(domain).failures(task_name(domain, auditor), FAILED),
            message="the failed position",
        )

    assert {k: v for k, v in CALLS.items() if k[0] == "StatementProjector" and v != 1} == {}
    [failed] = position_store(domain).failures(task_name(domain, auditor), FAILED)
    assert (failed["attempts"], failed["error_type"]) == (3, "ConnectionError")


@pytest.fixture
def cli_domain(tmp_path):
    """The CLI's domain module, on a SQLite file of this test."""
    from tests.engine.accounts_app import domain

    domain.config["databases"]["default"] = {
        "provider": "sqlite",
        "database_uri": f"sqlite:///{tmp_path}/cli.db",
    }
    domain.config["event_store"] = {"provider": "sqlite"}
    domain.init()
    domain.create_tables()
    yield domain
    domain.drop_tables()
    domain.dispose()


def test_the_cli_lists_and_replays_failed_positions_and_rebuilds_a_projection(cli_domain):
    from tidings.tasks.poller import poll

    domain = cli_domain
    account = open_account(domain)
    FAILURES[20] = 100
    for amount in (10, 20, 30):
        deposit(domain, account, amount)
    auditor, projector = (domain.registry["projector"][n] for n in ("Auditor", "StatementProjector"))
    while not poll(domain, auditor).failed:
        pass
    poll(domain, projector)
    runner = CliRunner()
    args = ["--domain", "tests.engine.accounts_app"]

    # a position given up on is a dead letter in the one table, listed once, by its entry id
    letters = domain.storage.dead_letters.entries()
    assert [(e["handler"], e["attempts"], e["error_type"]) for e in letters] == [
        ("tidings.accounts.Auditor", 3, "ConnectionError")
    ]
    listed = runner.invoke(main, ["dlq", "list", *args, "--handler", "Auditor"])
    assert listed.exit_code == 0, listed.output
    assert letters[0]["entry_id"] in listed.output and "attempts=3" in listed.output
    assert listed.output.count("ConnectionError") == 1, listed.output

    FAILURES.clear()
    replayed = runner.invoke(main, ["dlq", "replay", *args, "--handler", "Auditor"])
    assert "re-ran 1 failed position(s); 0 still failing" in replayed.output
    assert "cannot be replayed" not in replayed.output  # no task re-queue was tried for it
    assert domain.storage.dead_letters.entries() == []  # replayed: its dead letter went too
    assert sorted(r["amount"] for r in rows(domain, "Audit")) == [10, 20, 30]

    before = rows(domain, "Statement")
    rebuilt = runner.invoke(main, ["projection", "rebuild", "StatementProjector", *args])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "rebuilt Statement: 3 event(s) applied, 0 failed position(s)" in rebuilt.output
    assert rows(domain, "Statement") == before

    shown = runner.invoke(main, ["subscriptions", *args])
    assert re.search(r"subscription_type\s+event_store", shown.output), shown.output


def test_test_mode_runs_the_pollers_until_every_event_is_applied_or_failed(tmp_path):
    from tidings.app.bootstrap import create_celery_app
    from tidings.app.server import run_until_quiescent, subscription_lines

    domain = build_accounts()
    domain.config["databases"]["default"] = {
        "provider": "sqlite",
        "database_uri": f"sqlite:///{tmp_path}/mode.db",
    }
    domain.config["event_store"] = {"provider": "sqlite"}
    domain.init()
    domain.create_tables()
    domain.attach_engine(None)  # committed before any engine: no kick was sent
    account = open_account(domain)
    FAILURES[2] = 100
    for amount in (1, 2, 3):
        deposit(domain, account, amount)
    celery = create_celery_app(domain)

    summary = run_until_quiescent(celery, domain, timeout=60, report=lambda _: None)

    assert summary["quiescent"]
    assert history(domain) == {account: [1, 2, 3]}
    assert sorted(r["amount"] for r in rows(domain, "Audit")) == [1, 3]
    assert (
        "StatementProjector -> accounts::account (accounts.statement_projector, event_store)"
        in subscription_lines(domain)
    )
    domain.drop_tables()
    domain.dispose()
