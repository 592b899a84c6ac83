"""The audited domain as a Celery app for a worker *subprocess* (fault tests kill it).

    python -m celery -A tests.reliability.audit_worker worker -Q <name>.apply,<name>.count,...

Configured from the environment, set by tests/reliability/workers.py:
- AUDIT_DOMAIN: the domain name (its queues are `<name>.apply`, `<name>.count`, `<name>.outbox`);
- AUDIT_DATABASE_URL: the PostgreSQL database whose tables the test created;
- AUDIT_BROKER_URL: the Redis URL; AUDIT_KEYPREFIX: the test's `global_keyprefix` on it;
- AUDIT_VISIBILITY_TIMEOUT: the Redis visibility timeout in seconds (short in crash tests);
- AUDIT_PAUSE_FILE / AUDIT_PAUSE_LABEL / AUDIT_PAUSE_AT: the `Apply` run of the entry with that
  label writes its pid to the file and sleeps, `before` its commit (in the handler) or `after`
  it (in `task_postrun`, committed but not acknowledged), so that the test kills it there.

`app` is built on first access (PEP 562), and so is `domain`, the same domain for
`tidings server --domain tests.reliability.audit_worker` (tests/reliability/workers.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tidings import Domain


def configure(domain: Domain, database_url: str, broker_url: str | None = None) -> Domain:
    """Point the audited domain at the test's PostgreSQL (and Redis) and initialise it."""
    domain.config["databases"]["default"] = {"provider": "postgresql", "database_uri": database_url}
    domain.config["event_store"] = {"provider": "postgresql"}
    if broker_url:
        domain.config["brokers"]["default"] = {"provider": "redis", "url": broker_url}
    return domain.init()


def celery_overrides(broker_url: str, keyprefix: str = "", visibility_timeout: float = 300) -> dict[str, Any]:
    """`create_celery_app` overrides for the suite: its broker, prefix and a fast restore sweep."""
    return {
        "broker_url": broker_url,
        "broker_transport_options": {
            "global_keyprefix": keyprefix,
            "visibility_timeout": visibility_timeout,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        },
        # a short visibility timeout (4 s in the SIGKILL scenarios) is below the recovery
        # bound's check (handler timeout + longest countdown): allowed here, on purpose
        "allow_unsafe": ["visibility_timeout"],
    }


def _pause_after_commit(sender: Any = None, args: Any = None, retval: Any = None, **_: Any) -> None:
    """`task_postrun` runs in the pool process after the task returned (its unit of work
    committed) and before the message is acknowledged (acks_late)."""
    path, wanted = os.environ.get("AUDIT_PAUSE_FILE"), os.environ.get("AUDIT_PAUSE_LABEL")
    if not path or not getattr(sender, "name", "").endswith(".Apply") or retval != "handled":
        return
    envelope = args[0] if args and isinstance(args[0], dict) else {}
    if (envelope.get("data") or {}).get("label") == wanted and not Path(path).exists():
        Path(path).write_text(str(os.getpid()))
        time.sleep(60)  # killed in here: committed, not acknowledged


def _build_app() -> Any:
    from celery.signals import task_postrun

    from tests.reliability.audit import build_audit
    from tidings.app.bootstrap import create_celery_app

    if os.environ.get("AUDIT_PAUSE_AT") == "after":
        task_postrun.connect(_pause_after_commit, weak=False)
    domain = configure(
        build_audit(os.environ["AUDIT_DOMAIN"]),
        os.environ["AUDIT_DATABASE_URL"],
        os.environ["AUDIT_BROKER_URL"],
    )
    return create_celery_app(
        domain,
        **celery_overrides(
            os.environ["AUDIT_BROKER_URL"],
            os.environ.get("AUDIT_KEYPREFIX", ""),
            float(os.environ.get("AUDIT_VISIBILITY_TIMEOUT", "300")),
        ),
    )


def _build_domain() -> Domain:
    """The audited domain as `tidings server --domain tests.reliability.audit_worker` loads it:
    the server passes no overrides to the app, so the suite's transport options (the short
    visibility timeout, the fast restore sweep) go in its `[celery]` table instead."""
    from tests.reliability.audit import build_audit

    domain = build_audit(os.environ["AUDIT_DOMAIN"])
    overrides = celery_overrides(
        os.environ["AUDIT_BROKER_URL"],
        os.environ.get("AUDIT_KEYPREFIX", ""),
        float(os.environ.get("AUDIT_VISIBILITY_TIMEOUT", "300")),
    )
    domain.config["celery"] = {
        "broker_transport_options": overrides["broker_transport_options"],
        "allow_unsafe": overrides["allow_unsafe"],
    }
    return configure(domain, os.environ["AUDIT_DATABASE_URL"], os.environ["AUDIT_BROKER_URL"])


_app = None
_domain = None


def __getattr__(name: str) -> Any:
    global _app, _domain
    if name == "app":
        if _app is None:
            _app = _build_app()
        return _app
    if name == "domain":
        if _domain is None:
            _domain = _build_domain()
        return _domain
    raise AttributeError(name)
