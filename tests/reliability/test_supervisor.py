"""The supervisor of `tidings server` (app/supervisor.py).

First its restart policy and stop sequence on fake children and a fake clock (fast, exact),
then the process mechanics on real, tiny processes: a crashing child makes `supervise` give up
with exit code 3, SIGTERM reaches every child and the server exits 0, and a child outlives
neither a SIGKILLed server nor its own process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.reliability.processes import alive, children_of, require_proc
from tests.waiting import wait_until
from tidings.app import supervisor as sv
from tidings.app.children import ChildSpec, worker_spec
from tidings.app.supervisor import RestartPolicy, State, Supervisor

ROOT = Path(__file__).resolve().parents[2]


# ---- fakes ------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeProcess:
    pid: int
    code: int | None = None
    signals: list[int] = field(default_factory=list)
    killed: bool = False

    def exited(self) -> int | None:
        return self.code

    def send(self, signum: int) -> None:
        self.signals.append(signum)

    def kill(self) -> None:
        self.killed = True
        self.code = -signal.SIGKILL


class Launcher:
    """Records every launch; `current(name)` is the latest process of a child."""

    def __init__(self) -> None:
        self.launched: list[tuple[str, FakeProcess]] = []

    def __call__(self, spec: ChildSpec) -> FakeProcess:
        process = FakeProcess(pid=100 + len(self.launched))
        self.launched.append((spec.name, process))
        return process

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.launched if n == name)

    def current(self, name: str) -> FakeProcess:
        return [p for n, p in self.launched if n == name][-1]


WORKER = worker_spec(["worker", "-Q", "d.outbox,d.apply", "--pool", "prefork"])
BEAT = ChildSpec("beat", ("celery", "beat"))


def supervised(policy: RestartPolicy = RestartPolicy()) -> tuple[Supervisor, Launcher, Clock]:
    launch, clock = Launcher(), Clock()
    supervisor = Supervisor([WORKER, BEAT], launch, policy, clock)
    supervisor.start()
    return supervisor, launch, clock


def crash(launch: Launcher, name: str, code: int = -signal.SIGKILL) -> None:
    launch.current(name).code = code


# ---- specs ------------------------------------------------------------------------------------
def test_a_worker_spec_is_a_celery_command_with_its_queue_list():
    assert WORKER.name == "worker"
    assert WORKER.queues == ("d.outbox", "d.apply")
    assert WORKER.argv[:5] == (sys.executable, "-m", "celery", "-A", "tidings.app.celery_app")
    assert WORKER.argv[5:] == ("worker", "-Q", "d.outbox,d.apply", "--pool", "prefork")
    lane = worker_spec(["worker", "-Q", "d.slow", "-n", "slow@%h"], name="lane-slow")
    assert (lane.name, lane.queues) == ("lane-slow", ("d.slow",))


def test_child_names_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        Supervisor([WORKER, WORKER], Launcher())


# ---- the restart policy -----------------------------------------------------------------------
def test_the_delay_doubles_per_restart_in_the_window_up_to_the_cap_then_gives_up():
    policy = RestartPolicy(max_restarts=6, window=100, initial_delay=1, max_delay=5)
    now = 1000.0
    restarts: list[float] = []
    delays = []
    for _ in range(7):
        delays.append(policy.delay(restarts, now))
        restarts.append(now)
        now += 1
    assert delays == [1, 2, 4, 5, 5, 5, None]
    # Restarts older than the window no longer count: a child up for a long time starts over.
    assert policy.delay(restarts, now + 100) == 1


def test_a_child_that_exits_is_restarted_after_the_delay_not_before():
    supervisor, launch, clock = supervised(RestartPolicy(initial_delay=1.0))
    assert (launch.count("worker"), launch.count("beat")) == (1, 1)
    crash(launch, "worker")
    supervisor.tick()
    assert launch.count("worker") == 1
    assert supervisor.next_timeout() == pytest.approx(1.0)
    clock.advance(0.9)
    supervisor.tick()
    assert launch.count("worker") == 1, "restarted before its delay"
    clock.advance(0.1)
    supervisor.tick()
    assert launch.count("worker") == 2
    assert launch.count("beat") == 1, "a sibling was restarted too"
    assert supervisor.state is State.RUNNING
    assert supervisor.children[0].exits == [-signal.SIGKILL]


def test_an_exit_code_0_is_unexpected_too_only_a_stop_request_stops_a_child():
    supervisor, launch, clock = supervised()
    crash(launch, "beat", code=0)
    supervisor.tick()
    clock.advance(1)
    supervisor.tick()
    assert launch.count("beat") == 2


def test_consecutive_crashes_back_off_exponentially():
    supervisor, launch, clock = supervised(RestartPolicy(max_restarts=10, initial_delay=0.5, max_delay=3))
    gaps = []
    for _ in range(5):
        crash(launch, "worker")
        supervisor.tick()
        gaps.append(supervisor.next_timeout(ceiling=100))
        clock.advance(gaps[-1])
        supervisor.tick()
    assert gaps == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert launch.count("worker") == 6


def test_giving_up_stops_the_others_and_exits_3():
    supervisor, launch, clock = supervised(RestartPolicy(max_restarts=2, window=60, initial_delay=1))
    for _ in range(2):
        crash(launch, "worker")
        supervisor.tick()
        clock.advance(supervisor.next_timeout(ceiling=100))
        supervisor.tick()
    assert launch.count("worker") == 3
    crash(launch, "worker", code=1)  # the third exit within the window
    supervisor.tick()
    assert launch.count("worker") == 3, "restarted after giving up"
    assert supervisor.exit_code == sv.EXIT_GAVE_UP != 0
    assert supervisor.state is State.STOPPING
    assert launch.current("beat").signals == [signal.SIGTERM]  # beat gets a graceful stop
    launch.current("beat").code = 0
    supervisor.tick()
    assert supervisor.state is State.DONE
    assert supervisor.exit_code == sv.EXIT_GAVE_UP


def test_crashes_spread_wider_than_the_window_never_give_up():
    supervisor, launch, clock = supervised(RestartPolicy(max_restarts=2, window=10, initial_delay=1))
    for _ in range(6):
        crash(launch, "worker")
        supervisor.tick()
        clock.advance(supervisor.next_timeout(ceiling=100))
        supervisor.tick()
        clock.advance(15)  # up for longer than the window before the next crash
    assert supervisor.state is State.RUNNING
    assert launch.count("worker") == 7


# ---- stopping ---------------------------------------------------------------------------------
def test_a_stop_forwards_sigterm_restarts_nothing_and_exits_0():
    supervisor, launch, clock = supervised()
    crash(launch, "worker")
    supervisor.tick()  # a restart is now pending
    supervisor.request_stop(signal.SIGINT)
    supervisor.tick()
    assert launch.current("beat").signals == [signal.SIGTERM]  # SIGINT is forwarded as SIGTERM
    clock.advance(5)
    supervisor.tick()
    assert launch.count("worker") == 1, "a pending restart survived the stop"
    launch.current("beat").code = 0
    supervisor.tick()
    assert (supervisor.state, supervisor.exit_code) == (State.DONE, sv.EXIT_OK)


def test_a_second_stop_request_is_a_cold_shutdown_and_the_deadline_kills():
    supervisor, launch, clock = supervised(RestartPolicy(stop_timeout=30))
    supervisor.request_stop()
    supervisor.tick()
    supervisor.request_stop()
    supervisor.tick()
    worker = launch.current("worker")
    assert worker.signals == [signal.SIGTERM, signal.SIGQUIT]
    worker.code = 0  # the worker stopped; beat hangs
    clock.advance(29)
    supervisor.tick()
    assert supervisor.state is State.STOPPING and not launch.current("beat").killed
    clock.advance(1)
    supervisor.tick()
    assert launch.current("beat").killed
    assert (supervisor.state, supervisor.exit_code) == (State.DONE, sv.EXIT_FORCED)


# ---- real processes ---------------------------------------------------------------------------
def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", textwrap.dedent(code))


SUPERVISE = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from tidings.app.children import ChildSpec, worker_spec
from tidings.app.supervisor import RestartPolicy, supervise
specs = [ChildSpec(name, (sys.executable, "-c", code)) for name, code in {children!r}]
sys.exit(supervise(specs, RestartPolicy(max_restarts={max_restarts}, initial_delay=0.05, stop_timeout=10)))
"""

# A child that records the signal it is stopped with, then exits 0.
OBEDIENT = """
import pathlib, signal, sys, time
def stop(signum, frame):
    pathlib.Path("{path}").write_text(signal.Signals(signum).name)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
pathlib.Path("{path}.ready").touch()
time.sleep(120)
"""


def server_process(children: list[tuple[str, str]], max_restarts: int = 5) -> subprocess.Popen[str]:
    code = SUPERVISE.format(children=children, max_restarts=max_restarts)
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def named_children(server: subprocess.Popen[str], count: int) -> list[int]:
    return wait_until(
        lambda: (kids := children_of(server.pid)) and len(kids) == count and sorted(kids),
        timeout=20,
        message=f"{count} children of the supervisor",
    )


@pytest.mark.slow
def test_a_child_that_keeps_crashing_makes_supervise_give_up_with_exit_code_3():
    started = time.monotonic()
    with server_process([("crasher", "raise SystemExit(1)")], max_restarts=3) as server:
        output, _ = server.communicate(timeout=60)
    assert server.returncode == sv.EXIT_GAVE_UP, output
    assert output.count("started crasher") == 4, output  # the first start and 3 restarts
    assert "giving up" in output
    assert time.monotonic() - started >= 0.05 + 0.1 + 0.2  # the backoff was waited


@pytest.mark.slow
def test_sigterm_reaches_every_child_and_the_supervisor_exits_0(tmp_path):
    require_proc()
    marks = [tmp_path / "a", tmp_path / "b"]
    children = [(p.name, OBEDIENT.format(path=p)) for p in marks]
    with server_process(children) as server:
        named_children(server, 2)
        wait_until(lambda: all(Path(f"{p}.ready").exists() for p in marks), message="handlers installed")
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == sv.EXIT_OK, output
    assert [p.read_text() for p in marks] == ["SIGTERM", "SIGTERM"]


@pytest.mark.slow
def test_no_child_outlives_a_sigkilled_supervisor():
    require_proc()
    sleeper = "import time; time.sleep(120)"
    with server_process([("one", sleeper), ("two", sleeper)]) as server:
        pids = named_children(server, 2)
        server.kill()  # SIGKILL: the supervisor runs no cleanup at all
        server.wait(timeout=10)
        # PR_SET_PDEATHSIG: the kernel kills them (without it they sleep on, children of init).
        wait_until(lambda: not any(alive(p) for p in pids), timeout=10, message="the children to die")


@pytest.mark.slow
def test_what_a_child_leaves_in_its_process_group_is_killed_when_it_exits(tmp_path):
    require_proc()
    mark = tmp_path / "grandchild"
    # The child forks a grandchild (in its process group), which would sleep on, and exits:
    # a worker main process whose pool outlived it.
    leaver = (
        "import os, pathlib, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n    time.sleep(120)\n    sys.exit(0)\n"
        f"pathlib.Path({str(mark)!r}).write_text(str(pid))\n"
        "sys.exit(1)"
    )
    with server_process([("leaver", leaver)], max_restarts=0) as server:
        output, _ = server.communicate(timeout=30)
    assert server.returncode == sv.EXIT_GAVE_UP, output
    grandchild = int(mark.read_text())
    wait_until(lambda: not alive(grandchild), timeout=10, message="the grandchild to be killed")
