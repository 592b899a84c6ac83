"""Lanes (issue 12 item 1): each handler's queue has worker capacity of its own, so a handler
whose lane is saturated by slow messages does not hold up another handler's messages.

Real processes: `tidings server` with its lane children on Redis and PostgreSQL."""

from __future__ import annotations

import pytest

from tests.lanes.conftest import lanes_run, served

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SLOW = 8  # more than the slow lane's 2 threads: some wait in its queue


def test_a_fast_handlers_messages_are_handled_while_a_slow_handlers_lane_is_saturated(tmp_path):
    """The slow handler's runs are held (gate file) until the fast messages are applied: with
    one worker on every queue (`--no-lanes`, prefork 2) both processes would sit in slow
    runs and this would time out."""
    gate = tmp_path / "gate"
    gate.touch()
    with lanes_run(tmp_path, "redis", LANES_GATE_FILE=str(gate)) as run, served(run) as server:
        run.post("SlowPosted", SLOW)
        run.wait(lambda: server.output().count("SlowReport[") >= 2, "the slow lane's threads to be busy")
        fast = run.post("FastPosted", 5)
        run.wait(lambda: {e.message_id for e in run.effects("FastNotice")} >= set(fast), "fast messages")
        assert run.effects("SlowReport") == [], "a slow run finished: its lane was not saturated"
        gate.unlink()
        run.wait(lambda: len(run.effects("SlowReport")) == SLOW, "the slow backlog")
        applied = [e.message_id for e in run.effects("FastNotice") if e.kind == "interactive"]
        assert sorted(applied) == sorted(fast), "a fast message was lost or applied twice"
        assert "Lanes:" in server.output() and "slow_report: lanes_" in server.output()


def test_lanes_from_domain_toml_group_handlers_and_unknown_names_are_refused(tmp_path):
    from tests.lanes.lanes_app import build_domain
    from tidings.app.lanes import plan_lanes
    from tidings.domain.errors import ConfigurationError

    env = {"LANES_DATABASE_URL": "postgresql://u@h/db", "LANES_BROKER_URL": "redis://h/0"}
    domain = build_domain(env)
    domain.config["server"]["lanes"] = {"quick": {"handlers": ["FastNotice", "Charge"], "concurrency": 4}}
    domain.init()
    lanes = {lane.name: lane for lane in plan_lanes(domain)}
    assert lanes["quick"].queues == ("lanes.fast_notice", "lanes.charge")
    assert (lanes["quick"].concurrency, lanes["quick"].pool) == (4, "threads")
    assert lanes["slow_report"].queues == ("lanes.slow_report",)
    assert lanes["outbox"].queues == ("lanes.outbox",)

    domain = build_domain(env)
    domain.config["server"]["lanes"] = {"quick": {"handlers": ["FastNotise"], "pool": "prefork"}}
    domain.init()
    with pytest.raises(ConfigurationError, match="unknown handler 'FastNotise'; did you mean 'FastNotice'"):
        plan_lanes(domain)


def test_each_lane_runs_workers_children_and_a_killed_one_is_restarted(tmp_path):
    """`--workers 2`: two children per handler lane (one for the relay's); SIGKILL one of the
    fast lane's and the supervisor starts it again while its twin goes on consuming.

    The child is killed idle, blocked in kombu's BRPOP, and the messages follow at once: on a
    loaded host Redis can hand one to the dying connection before it sees the close, a delivery
    only the audit brings back (README, "The worker or beat process dies"; this test timed out
    about once in four full suites while the grace was 120 s). So the grace is short here and
    the test asserts what the user is promised: every message applied exactly once."""
    import os
    import re
    import signal
    from collections import Counter

    with (
        lanes_run(tmp_path, "redis", LANES_AUDIT_GRACE="3") as run,
        served(run, "--workers", "2", "--no-beat") as server,
    ):
        started = dict(re.findall(r"started (lane-[\w-]+) \(pid (\d+)\)", server.output()))
        assert {"lane-outbox", "lane-fast_notice-1", "lane-fast_notice-2", "lane-charge-2"} <= set(started)
        os.kill(int(started["lane-fast_notice-1"]), signal.SIGKILL)
        fast = run.post("FastPosted", 5)

        def all_applied() -> bool:
            return {e.message_id for e in run.effects("FastNotice")} >= set(fast)

        run.wait(all_applied, "fast messages (a lost delivery: re-sent by the audit)", timeout=60)
        applied = Counter(e.message_id for e in run.effects("FastNotice"))
        assert [applied[m] for m in fast] == [1] * 5  # none doubled (the audit's re-send is a no-op)
        run.wait(
            lambda: server.output().count("started lane-fast_notice-1 ") == 2, "the killed child restarted"
        )
        assert "lane-fast_notice-1 exited unexpectedly (killed by SIGKILL)" in server.output()


def test_subscriptions_show_each_handlers_lane_and_breaker_and_lanes_print_celery_commands(monkeypatch):
    import uuid

    from click.testing import CliRunner

    from tests.services import REDIS_URL, require_redis
    from tidings.app.cli import main

    require_redis()  # the breakers' states are read from the broker's Redis (nothing is there)

    monkeypatch.setenv("LANES_DATABASE_URL", "postgresql://u@127.0.0.1:1/none")  # never connected
    monkeypatch.setenv("LANES_BROKER_URL", REDIS_URL)
    monkeypatch.setenv("LANES_DOMAIN", f"lanes_cli_{uuid.uuid4().hex[:6]}")
    import importlib

    import tests.lanes.lanes_app as app

    importlib.reload(app)  # builds `domain` from the environment above
    monkeypatch.setattr("tidings.app.cli_common.load_domain", lambda path: app.domain)
    runner = CliRunner()
    shown = runner.invoke(main, ["subscriptions", "--domain", "tests.lanes.lanes_app"])
    assert shown.exit_code == 0, shown.output
    name = app.domain.name
    assert f"lane                          charge     <- {name}.charge (threads x2)" in shown.output
    assert "circuit_breaker               closed" in shown.output  # Charge has a threshold
    assert "circuit_breaker               off" in shown.output  # the others have none
    commands = runner.invoke(main, ["lanes", "--celery-commands", "--domain", "tests.lanes.lanes_app"])
    assert commands.exit_code == 0, commands.output
    assert (
        f"celery -A tidings.app.celery_app worker -Q {name}.slow_report --pool threads -c 2 -l INFO "
        f"-n {name}.slow_report.1@%h" in commands.output
    )
    assert "celery multi start outbox slow_report fast_notice charge" in commands.output
