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


TIDINGS = str(Path(sys.executable).with_name("tidings"))  # the console script of this venv


class Server:
    """`tidings server --domain tests.reliability.audit_worker` (the supervisor and its worker
    and beat children), in a process group of its own; `extra` are more `server` options."""

    def __init__(self, log: Path, env: dict[str, str], *extra: str) -> None:
        self.log = log
        command = [
            TIDINGS,
            "server",
            "--domain",
            "tests.reliability.audit_worker",
            "--no-lanes",  # one worker child on every queue: what these tests kill
            "--pool",
            "prefork",
            "--concurrency",
            "2",
            *extra,
        ]
        base = {
            k: v
            for k, v in os.environ.items()
            if k not in CELERY_CLI_ENV and not k.startswith(("CELERY_", "AUDIT_", "TIDINGS_"))
        }
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command,
                cwd=log.parent,  # beat's schedule file goes to <cwd>/.tidings
                env={**base, "PYTHONPATH": str(ROOT), **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.seen: set[int] = set()  # every child pid `child` found (for the cleanup)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def child(self, kind: str) -> int | None:
        """The pid of the server's `celery worker` or `celery beat` child now, if any."""
        from tests.reliability.processes import children_of, cmdline

        for pid in children_of(self.pid):
            if f"tidings.app.celery_app {kind} " in cmdline(pid) + " ":
                self.seen.add(pid)
                return pid
        return None

    def kill(self) -> None:
        """SIGKILL the server only (its children are its business); reaps it."""
        with suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def output(self, tail: int | None = 8000) -> str:
        """The server's log (its own lines and its children's), the last `tail` characters."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-tail:] if tail else text

    def lines(self, logger: str = "tidings.server") -> list[str]:
        """The server's own log lines (not its children's)."""
        return [line for line in self.output(tail=None).splitlines() if f" {logger}: " in line]
