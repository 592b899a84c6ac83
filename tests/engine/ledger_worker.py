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

from domain import Domain, current_domain, handle
from domain.fields import Identifier, Integer, String
from tests.engine import ledger


def build_named_ledger(name: str) -> Domain:
    """`tests.engine.ledger.build_ledger` under another domain name, so that its queues
    (`<name>.apply`, `<name>.outbox`, `<name>.apply.dlq`) belong to one test only."""
    domain = Domain(name, root_path=Path(__file__).parent)
    domain.config.update(event_processing="async", command_processing="async",
                         message_processing="async")
    domain.config["server"]["stream_subscription"].update(max_retries=3, retry_delay_seconds=0)

    @domain.aggregate
    class Entry:
        label: String(required=True)

    @domain.aggregate
    class Tally:
        entry_id: Identifier(identifier=True)
        applied: Integer(default=0)

    @domain.event(part_of=Entry)
    class EntryMade:
        entry_id: Identifier(required=True)
        label: String(required=True)

    @domain.event_handler(part_of=Tally, stream_category="entry")
    class Apply:
        @handle(EntryMade)
        def apply(self, event):
            if ledger.FAILURES.get(event.entry_id, 0) > 0:
                ledger.FAILURES[event.entry_id] -= 1
                raise ConnectionError(f"flaky downstream for {event.label}")
            if event.label.startswith("slow") and os.environ.get("LEDGER_SLOW_FILE"):
                Path(os.environ["LEDGER_SLOW_FILE"]).write_text(event.entry_id)
                time.sleep(30)  # the crash test kills the worker during this
            repo = current_domain.repository_for(Tally)
            try:
                tally = repo.get(event.entry_id)
            except Exception:  # noqa: BLE001 - first time: start at zero
                tally = Tally(entry_id=event.entry_id)
            tally.applied += 1
            repo.add(tally)

        @classmethod
        def handle_error(cls, exc, message):
            ledger.ERRORS_SEEN.append((type(exc).__name__, message.id))

    return domain


def configure(domain: Domain, database_url: str, broker_url: str) -> Domain:
    """Point a ledger domain at the test database (PostgreSQL) and broker, and init it."""
    provider = "amqp" if broker_url.startswith("amqp") else "redis"
    domain.config["databases"]["default"] = {"provider": "postgresql",
                                             "database_uri": database_url}
    domain.config["event_store"] = {"provider": "postgresql"}
    domain.config["brokers"]["default"] = {"provider": provider, "url": broker_url}
    return domain.init()


def celery_overrides(broker_url: str, keyprefix: str | None) -> dict[str, Any]:
    """`create_celery_app` overrides: on Redis, the test timings and the test's key prefix."""
    if not broker_url.startswith("redis"):
        return {}
    from tests.engine.conftest import FAST

    return {"broker_transport_options": {**FAST, "global_keyprefix": keyprefix or ""}}


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

    from app.factory import create_celery_app

    task_postrun.connect(_after_apply, weak=False)

    broker_url = os.environ["LEDGER_BROKER_URL"]
    domain = configure(build_named_ledger(os.environ.get("LEDGER_DOMAIN", "ledger")),
                       os.environ["LEDGER_DATABASE_URL"], broker_url)
    return create_celery_app(domain, **celery_overrides(broker_url,
                                                        os.environ.get("LEDGER_KEYPREFIX")))


_app = None


def __getattr__(name: str) -> Any:
    global _app
    if name == "app":
        if _app is None:
            _app = _build_app()
        return _app
    raise AttributeError(name)
