"""Processes as /proc shows them (Linux): who is whose child, and who is still alive.

The no-orphan tests look there, not at their own `Popen` handles: a process the server
started is not the test's child, and after the server dies it belongs to init."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PROC = Path("/proc")


def require_proc() -> None:
    if not sys.platform.startswith("linux") or not PROC.is_dir():
        pytest.skip("reads /proc (Linux): the parent-death signal is Linux-only too")


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of `pid`, or None when there is no such process."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[2])


def alive(pid: int) -> bool:
    """`pid` exists and is not a zombie (a dead process nobody reaped yet)."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]


def children_of(parent: int) -> list[int]:
    """The living direct children of `parent`."""
    found = []
    for pid in pids():
        stat = _stat(pid)
        if stat and stat[1] == parent and stat[0] not in ("Z", "X"):
            found.append(pid)
    return found


def descendants_of(parent: int) -> list[int]:
    """Every living process below `parent`."""
    found, frontier = [], [parent]
    while frontier:
        kids = [pid for p in frontier for pid in children_of(p)]
        found += kids
        frontier = kids
    return found


def in_groups(groups: set[int]) -> list[int]:
    """The living processes whose process group is one of `groups`."""
    found = []
    for pid in pids():
        stat = _stat(pid)
        if stat and stat[2] in groups and stat[0] not in ("Z", "X"):
            found.append(pid)
    return found


def cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""
