"""Relay right after commits from a daemon thread of the committing process.

`[outbox] after_commit = "thread"`: instead of sending a relay task to the worker, a commit
wakes a thread of its own process that runs the relay (claim with SKIP LOCKED, publish,
mark), beside the workers' relay loops (app/relay_loop.py); commits that arrive while a
round runs are relayed together by the next round. The wake-up is cleared *before* a round
claims, so a commit is always followed by a round that sees its rows. Rows of a process that
dies before its round stay pending: a worker's relay loop sends them (at the latest after
its idle period, `outbox.interval`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger("tidings.relay")


class RelayThread:
    def __init__(self, relay: Callable[[], int], name: str) -> None:
        self.relay, self.name = relay, name
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._pid = 0

    def committed(self) -> None:
        """Wake the relay thread of this process (started on first use, again after a fork)."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._wake = threading.Event()
                    threading.Thread(
                        target=self._loop, args=(self._wake,), daemon=True, name=f"tidings-relay-{self.name}"
                    ).start()
                    self._pid = os.getpid()
        self._wake.set()

    def _loop(self, wake: threading.Event) -> None:
        while True:
            wake.wait()
            wake.clear()
            try:
                self.relay()
            except Exception:  # noqa: BLE001 - rows stay pending; a relay loop sends them
                log.warning("after-commit relay failed; a worker's relay loop retries", exc_info=True)
