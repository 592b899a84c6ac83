"""A child process of `tidings server`: its own process group, and on Linux a parent-death
SIGKILL, so nothing outlives the server (even a `kill -9` of it).

Orphans. Each child runs in a process group (a session) of its own, so that the server can
signal it and everything it forked (the prefork pool) at once, and so that a Ctrl+C in the
terminal reaches only the server, which forwards it once (the worker would take a second
SIGINT as a cold shutdown). On Linux each child also asks the kernel for SIGKILL when the
server dies (`prctl(PR_SET_PDEATHSIG)`, set between fork and exec), which covers the one exit
the server cannot clean up after: its own SIGKILL. The worker's pool processes are the
worker's children, and Celery's prefork pool sets the same parent-death signal in them, so
they follow the worker. Elsewhere (macOS, BSD) there is no such call: the server still kills
each child's process group on every exit it controls (a signal, giving up, an exception), but
after a SIGKILL of the server its children keep running; there, run it under a process
manager that stops the whole group (systemd `KillMode=control-group`, a container).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from contextlib import suppress

from tidings.app.children import ChildSpec

log = logging.getLogger("tidings.server")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _load_prctl() -> Callable[..., int] | None:
    """libc's `prctl`, loaded once in the parent: loading a library between fork and exec
    could deadlock on a lock another thread held at the fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


_PRCTL = _load_prctl()


def die_with(parent: int) -> Callable[[], None]:
    """The `preexec_fn` of a child: SIGKILL when `parent` dies (Linux). The kernel sends it
    when the parent *thread* that forked the child exits, so the supervisor forks from its
    main thread only. If the parent died before the call, the child exits at once."""

    def preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)  # orphaned between fork and prctl: never exec

    return preexec


class Process:
    """A real child: `subprocess.Popen` in a new session, dying with the server on Linux."""

    def __init__(self, spec: ChildSpec, base_env: Mapping[str, str] | None = None) -> None:
        env = {**(os.environ if base_env is None else base_env), **spec.env}
        self.popen = subprocess.Popen(
            list(spec.argv),
            env=env,
            start_new_session=True,  # its own process group: see the module docstring
            preexec_fn=die_with(os.getpid()),
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> int | None:
        if self.popen.returncode is not None:
            return self.popen.returncode
        if hasattr(os, "waitid"):
            # Look without reaping: while the exited leader is a zombie its pid (the group's
            # id) cannot be reused, so the group kill below cannot hit a stranger.
            try:
                if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                    return None
            except ChildProcessError:
                pass  # reaped elsewhere already: Popen.wait below tells the code
        elif self.popen.poll() is None:
            return None
        self._kill_group()  # what the child forked and left behind (a pool process)
        return self.popen.wait()

    def send(self, signum: int) -> None:
        if self.popen.returncode is None:
            with suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self._kill_group()
        self.popen.wait()

    def _kill_group(self) -> None:
        with suppress(ProcessLookupError, PermissionError):  # the group is empty already
            os.killpg(self.pid, signal.SIGKILL)
