"""What `tidings server` runs: its children as data (a name, a command line, its queues), so
lanes can start several workers with queue lists of their own."""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("tidings.server")


CELERY_APP = "tidings.app.celery_app"  # the module whose `app` is TIDINGS_DOMAIN's Celery app


@dataclass(frozen=True)
class ChildSpec:
    """One supervised process: `name` in logs ("worker", "beat", later one per lane), the
    full command line, the queues it consumes (empty for beat), and environment variables
    added to the server's own."""

    name: str
    argv: tuple[str, ...]
    queues: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def command_line(self) -> str:
        return shlex.join(self.argv)


def celery_command(*args: str) -> tuple[str, ...]:
    """`celery -A tidings.app.celery_app <args>`, run by this Python (the same environment)."""
    return (sys.executable, "-m", "celery", "-A", CELERY_APP, *args)


def worker_spec(
    worker_args: Sequence[str], name: str = "worker", env: Mapping[str, str] | None = None
) -> ChildSpec:
    """A worker child from `celery worker` arguments (`["worker", "-Q", "a,b", ...]`, as
    `tidings.app.server.worker_argv` builds them); its queues are read from the `-Q` list."""
    args = tuple(worker_args)
    queues: tuple[str, ...] = ()
    if "-Q" in args and args.index("-Q") + 1 < len(args):
        queues = tuple(q for q in args[args.index("-Q") + 1].split(",") if q)
    return ChildSpec(name, celery_command(*args), queues, dict(env or {}))


def beat_spec(domain_name: str, *, debug: bool, env: Mapping[str, str] | None = None) -> ChildSpec:
    """Beat, as `celery beat`, with its schedule file where the embedded beat kept it."""
    schedule = Path(".tidings") / f"celerybeat-schedule-{domain_name}"
    schedule.parent.mkdir(exist_ok=True)
    argv = celery_command("beat", "-s", str(schedule), "-l", "DEBUG" if debug else "INFO")
    return ChildSpec("beat", argv, (), dict(env or {}))


def domain_env(domain_path: str | None) -> dict[str, str]:
    """What a child needs to load the server's domain: `tidings.app.celery_app` reads
    TIDINGS_DOMAIN (without one it discovers `domain.py` in the same working directory)."""
    return {"TIDINGS_DOMAIN": domain_path} if domain_path else {}
