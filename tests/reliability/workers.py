"""`celery worker` subprocesses of the audited domain (tests/reliability/audit_worker.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The `celery` command reads these (BROKER_URL becomes CELERY_BROKER_URL, which would override
# the app's broker): the test environment's must not reach the worker.
CELERY_CLI_ENV = {"APP", "BROKER_URL", "RESULT_BACKEND", "LOADER", "CONFIG_MODULE"}


class Worker:
    """`celery worker` (prefork, `concurrency` processes) in its own process group, so that a
    SIGKILL of the group reaches the main process and its pool children at once."""

    def __init__(
        self, log: Path, domain_name: str, env: dict[str, str], concurrency: int = 2, beat: bool = False
    ) -> None:
        self.log = log
        queues = ",".join(f"{domain_name}.{q}" for q in ("apply", "count", "outbox"))
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.reliability.audit_worker",
            "worker",
            "-Q",
            queues,
            "--pool",
            "prefork",
            "-c",
            str(concurrency),
            "-l",
            "WARNING",
            "-n",
            f"{domain_name}-{log.stem}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        if beat:  # the real beat schedule (relay, delivery audit), embedded as `tidings server` does
            command += ["-B", "-s", str(log.with_suffix(".beat-schedule"))]
        base = {
            k: v
            for k, v in os.environ.items()
            if k not in CELERY_CLI_ENV and not k.startswith(("CELERY_", "AUDIT_"))
        }
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**base, "PYTHONPATH": str(ROOT), **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM to the main process (Celery's warm shutdown); waits for it to exit."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> int | None:
        """SIGKILL the whole process group; returns the main process's exit code."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            return self.process.wait(timeout=10)
        return None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""
