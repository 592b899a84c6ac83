"""The ledger domain as a Celery app for a worker *subprocess* (crash tests kill it with SIGKILL).

    python -m celery -A tests.engine.ledger_worker worker -Q <name>.apply,<name>.outbox ...

Configured from the environment (set by the test that starts the worker):
- LEDGER_DOMAIN: the domain name, which names its queues (unique per test, default "ledger");
- LEDGER_DATABASE_URL: the PostgreSQL database whose tables the test created;
- LEDGER_BROKER_URL: a Redis or RabbitMQ URL;
- LEDGER_KEYPREFIX: the test's own Redis `global_keyprefix` (Redis only);
- LEDGER_SLOW_FILE: when set, the handler sleeps 30 s on entries labelled "slow..." before it
  commits, after writing the entry id to this file (killed *before* the commit);
- LEDGER_STALL_FILE: when set, the task of an entry labelled "stall..." sleeps 30 s after the
  handler committed but before the message is acknowledged (killed *between* commit and ack);
- LEDGER_DEFAULT_TIMINGS: when set, Tidings' default visibility timeout and restore sweep
  (not the tests' fast ones);
- LEDGER_RESULTS_FILE: when set, each Apply task appends `{"entry_id", "label", "result"}` as a
  JSON line ("handled", or "duplicate" when the inbox skipped a redelivered message).

`app` is built on first access (PEP 562), so importing this module for `build_named_ledger`
does not need the environment.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tests.engine import ledger
from tidings import Domain


def build_named_ledger(name: str) -> Domain:
    """`tests.engine.ledger.build_ledger` under another domain name, so that its queues
    (`<name>.apply`, `<name>.outbox`, `<name>.apply.dlq`) belong to one test only."""
    return ledger.build_ledger(name=name)


def configure(domain: Domain, database_url: str, broker_url: str) -> Domain:
    """Point a ledger domain at the test database (PostgreSQL) and broker, and init it."""
    provider = "amqp" if broker_url.startswith("amqp") else "redis"
    domain.config["databases"]["default"] = {"provider": "postgresql", "database_uri": database_url}
    domain.config["event_store"] = {"provider": "postgresql"}
    domain.config["brokers"]["default"] = {"provider": provider, "url": broker_url}
    return domain.init()


def celery_overrides(broker_url: str, keyprefix: str | None) -> dict[str, Any]:
    """`create_celery_app` overrides: on Redis, the test timings and the test's key prefix."""
    if not broker_url.startswith("redis"):
        return {}
    if os.environ.get("LEDGER_DEFAULT_TIMINGS"):  # Tidings' defaults: the recovery-bound test
        return {"broker_transport_options": {"global_keyprefix": keyprefix or ""}}
    from tests.engine.conftest import FAST

    # FAST's 4 s visibility timeout is below the recovery bound's check, on purpose
    return {
        "broker_transport_options": {**FAST, "global_keyprefix": keyprefix or ""},
        "allow_unsafe": ["visibility_timeout"],
    }


def _after_apply(sender: Any = None, args: Any = None, retval: Any = None, **_: Any) -> None:
    """`task_postrun` runs in the pool process after the task returned (its unit of work has
    committed) and before the worker acknowledges the message (acks_late)."""
    if not getattr(sender, "name", "").endswith(".Apply"):
        return
    envelope = args[0] if args and isinstance(args[0], dict) else {}
    data = envelope.get("data") or {}
    entry_id, label = data.get("entry_id"), str(data.get("label", ""))
    if os.environ.get("LEDGER_RESULTS_FILE"):
        with open(os.environ["LEDGER_RESULTS_FILE"], "a") as out:
            out.write(json.dumps({"entry_id": entry_id, "label": label, "result": retval}) + "\n")
    if label.startswith("stall") and retval == "handled" and os.environ.get("LEDGER_STALL_FILE"):
        Path(os.environ["LEDGER_STALL_FILE"]).write_text(entry_id)
        time.sleep(30)  # the crash test kills the worker during this: committed, not acked


def _build_app():
    from celery.signals import task_postrun

    from tidings.app.bootstrap import create_celery_app

    task_postrun.connect(_after_apply, weak=False)

    broker_url = os.environ["LEDGER_BROKER_URL"]
    domain = configure(
        build_named_ledger(os.environ.get("LEDGER_DOMAIN", "ledger")),
        os.environ["LEDGER_DATABASE_URL"],
        broker_url,
    )
    return create_celery_app(domain, **celery_overrides(broker_url, os.environ.get("LEDGER_KEYPREFIX")))


_app = None


def __getattr__(name: str) -> Any:
    global _app
    if name == "app":
        if _app is None:
            _app = _build_app()
        return _app
    raise AttributeError(name)
