"""`tidings server`'s supervisor: its Celery worker and beat as child processes it watches.

The server does not run the worker in its own process, nor beat inside the worker (`-B`): it
starts each as a child process from a `ChildSpec` (a name, the command line, the queues it
consumes), and

- restarts a child that exits without being asked to (a crash, the OOM killer, a `kill -9`,
  kombu dying on a dropped connection) after an exponential backoff (`RestartPolicy`);
- gives up when a child needed more than `max_restarts` restarts within `window` seconds: it
  stops the other children and exits with `EXIT_GAVE_UP` (3), never 0;
- forwards SIGTERM / SIGINT to every child as SIGTERM (the worker's warm shutdown: the tasks in
  hand finish, unacknowledged messages go back) and exits 0 once they are all gone; a second
  signal forwards SIGQUIT (Celery's cold shutdown); after `stop_timeout` what is left is
  killed and the exit code is `EXIT_FORCED` (1);
- leaves no orphan, even when the server itself is SIGKILLed (see app/processes.py).

Several workers with their own `-Q` lists (lanes) are just more specs: the supervisor treats
every child alike.

The core (`Supervisor.tick`) is a state machine over `ChildProcess` handles and a clock, so
the restart policy is tested with fake children; `supervise` runs it on real processes with
signal handling.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import FrameType
from typing import Any, Protocol

from tidings.app.children import ChildSpec
from tidings.app.processes import Process

log = logging.getLogger("tidings.server")

EXIT_OK = 0  # stopped on SIGTERM/SIGINT; every child exited by itself in time
EXIT_FORCED = 1  # stopped, but a child had to be killed after `stop_timeout`
EXIT_GAVE_UP = 3  # a child kept exiting: more than `max_restarts` restarts within `window`


# ---- when to restart ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RestartPolicy:
    """Restart after `initial_delay`, doubling with each restart still within `window`
    seconds, up to `max_delay`; give up when a child needs more than `max_restarts` restarts
    within `window`. A child that stays up longer than `window` starts again from
    `initial_delay`. `stop_timeout` bounds a graceful stop."""

    max_restarts: int = 5
    window: float = 60.0
    initial_delay: float = 1.0
    max_delay: float = 30.0
    factor: float = 2.0
    stop_timeout: float = 60.0

    def delay(self, restarts: Sequence[float], now: float) -> float | None:
        """Seconds to wait before restarting a child that just exited, given the times of its
        previous restarts; None to give up."""
        recent = sum(1 for t in restarts if now - t < self.window)
        if recent >= self.max_restarts:
            return None
        return min(self.initial_delay * self.factor**recent, max(self.max_delay, self.initial_delay))


# ---- the processes -----------------------------------------------------------------------------
class ChildProcess(Protocol):
    """A started child, as the supervisor sees it (a real process or a test's fake)."""

    @property
    def pid(self) -> int: ...

    def exited(self) -> int | None:
        """The exit code once the child exited (negative: killed by that signal), else None.
        Also kills whatever is left of the child's process group (its own children)."""
        ...

    def send(self, signum: int) -> None:
        """Signal the child's main process (not its group: the worker stops its own pool)."""
        ...

    def kill(self) -> None:
        """SIGKILL the child's whole process group."""
        ...


Launcher = Callable[[ChildSpec], ChildProcess]


class State(Enum):
    RUNNING = "running"
    STOPPING = "stopping"
    DONE = "done"


@dataclass
class Child:
    """A spec and what the supervisor knows of it: the running process, when it is due to
    start again, the times of its restarts."""

    spec: ChildSpec
    process: ChildProcess | None = None
    due: float | None = None
    restarts: list[float] = field(default_factory=list)
    exits: list[int] = field(default_factory=list)


class Supervisor:
    """Runs `specs` through `launch` and keeps them running (see the module docstring).

    Drive it with `start()`, then `tick()` whenever something may have happened (a child
    exited, a restart is due, a stop was requested) until `state` is DONE; `exit_code` is
    then the server's. `supervise` does that on real processes."""

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        launch: Launcher,
        policy: RestartPolicy = RestartPolicy(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"child names must be unique, got {names}")
        self.children = [Child(s) for s in specs]
        self.launch, self.policy, self.clock = launch, policy, clock
        self.state = State.RUNNING
        self.exit_code = EXIT_OK
        self.deadline: float | None = None  # of a stop in progress
        self._signals: list[int] = []  # stop requests not handled yet

    # ---- events -----------------------------------------------------------------------------
    def start(self) -> None:
        for child in self.children:
            self._launch(child)

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a graceful stop (safe from a signal handler: acted upon by `tick`)."""
        self._signals.append(signum)

    def tick(self) -> None:
        """Handle stop requests, reap exited children (scheduling restarts or giving up),
        start the restarts that are due, and enforce the stop deadline."""
        now = self.clock()
        while self._signals:
            self._signals.pop(0)
            if self.state is State.RUNNING:
                log.info("stopping: warm shutdown of %s", ", ".join(c.spec.name for c in self.running()))
                self._stop(now)
            elif self.state is State.STOPPING:
                log.warning("second stop request: cold shutdown (SIGQUIT)")
                self._signal_all(signal.SIGQUIT)
        for child in self.running():
            assert child.process is not None
            code = child.process.exited()
            if code is None:
                continue
            child.process = None
            child.exits.append(code)
            if self.state is not State.RUNNING:
                log.info("%s exited (%s)", child.spec.name, describe_exit(code))
                continue
            delay = self.policy.delay(child.restarts, now)
            if delay is None:
                log.error(
                    "%s exited (%s): %d restarts within %.0f s, giving up",
                    child.spec.name,
                    describe_exit(code),
                    self.policy.max_restarts,
                    self.policy.window,
                )
                self.exit_code = EXIT_GAVE_UP
                self._stop(now)
                continue
            child.restarts.append(now)
            child.due = now + delay
            log.error(
                "%s exited unexpectedly (%s); restarting in %.1f s",
                child.spec.name,
                describe_exit(code),
                delay,
            )
        if self.state is State.RUNNING:
            for child in self.children:
                if child.due is not None and child.due <= now:
                    self._launch(child)
        if self.state is State.STOPPING:
            if not self.running():
                self.state = State.DONE
            elif self.deadline is not None and now >= self.deadline:
                log.error("children still running %.0f s after the stop: killed", self.policy.stop_timeout)
                self.kill_all()
                self.state = State.DONE
                if self.exit_code == EXIT_OK:
                    self.exit_code = EXIT_FORCED

    # ---- queries ----------------------------------------------------------------------------
    def running(self) -> list[Child]:
        return [c for c in self.children if c.process is not None]

    def next_timeout(self, ceiling: float = 1.0) -> float:
        """How long the loop may wait for a signal before the next `tick` is due."""
        now = self.clock()
        moments = [c.due for c in self.children if c.due is not None and self.state is State.RUNNING]
        if self.deadline is not None:
            moments.append(self.deadline)
        return max(0.0, min([ceiling, *(m - now for m in moments)]))

    # ---- actions ----------------------------------------------------------------------------
    def _launch(self, child: Child) -> None:
        child.due = None
        child.process = self.launch(child.spec)
        log.info("started %s (pid %d): %s", child.spec.name, child.process.pid, child.spec.command_line())

    def _stop(self, now: float) -> None:
        self.state = State.STOPPING
        self.deadline = now + self.policy.stop_timeout
        for child in self.children:
            child.due = None  # a pending restart is cancelled
        self._signal_all(signal.SIGTERM)
        if not self.running():
            self.state = State.DONE

    def _signal_all(self, signum: int) -> None:
        for child in self.running():
            assert child.process is not None
            child.process.send(signum)

    def kill_all(self) -> None:
        """SIGKILL every running child's process group and reap it."""
        for child in self.running():
            assert child.process is not None
            child.process.kill()
            code = child.process.exited()
            child.exits.append(code if code is not None else -signal.SIGKILL)
            child.process = None


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# ---- real processes ----------------------------------------------------------------------------


def supervise(
    specs: Sequence[ChildSpec], policy: RestartPolicy = RestartPolicy(), launch: Launcher = Process
) -> int:
    """Run `specs` as supervised children until a stop signal or giving up; the exit code.

    Waits in `select` on the signal wake-up pipe: SIGCHLD (a child exited), SIGTERM and
    SIGINT wake it at once, and the timeout is the next restart or stop deadline."""
    supervisor = Supervisor(specs, launch, policy)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    previous_wakeup = signal.set_wakeup_fd(wake_write)

    def stop(signum: int, frame: FrameType | None) -> None:
        supervisor.request_stop(signum)

    previous: dict[int, Any] = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, stop),
        signal.SIGINT: signal.signal(signal.SIGINT, stop),
        # A handler (doing nothing) makes SIGCHLD write to the wake-up pipe.
        signal.SIGCHLD: signal.signal(signal.SIGCHLD, lambda signum, frame: None),
    }
    try:
        supervisor.start()
        while supervisor.state is not State.DONE:
            select.select([wake_read], [], [], supervisor.next_timeout())
            try:
                while os.read(wake_read, 512):
                    pass
            except BlockingIOError:
                pass
            supervisor.tick()
        log.info("server stopped (exit code %d)", supervisor.exit_code)
        return supervisor.exit_code
    finally:
        supervisor.kill_all()  # an exception in here must not leave a child behind
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_wakeup)
        os.close(wake_read)
        os.close(wake_write)
