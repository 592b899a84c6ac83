"""Processing priorities (the reference's `Priority` and `processing_priority()`).

A message carries its priority in `metadata["priority"]` (absent: NORMAL). It is, in order:
the `priority=` given to `domain.process`, else the innermost `processing_priority()` block,
else the priority of the message being handled (what a bulk message's handler raises is bulk
too), else NORMAL. With `[server.priority_lanes] enabled`, a message below `threshold` goes to
its handlers' backfill queues (`<queue>.backfill`), which their lanes consume after their own
queues: a backfill of thousands never sits in front of interactive work (tasks/dispatch.py).

    with processing_priority(Priority.BULK):
        for row in legacy_rows:
            domain.process(ImportBook(**row))
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from enum import IntEnum
from typing import Any

PRIORITY_KEY = "priority"  # in a message's metadata


class Priority(IntEnum):
    BULK = -100
    LOW = -50
    NORMAL = 0
    HIGH = 50
    CRITICAL = 100


_current: ContextVar[int | None] = ContextVar("tidings_priority", default=None)


@contextmanager
def processing_priority(priority: int) -> Iterator[None]:
    """Messages created inside the block (commands, and the events they and their handlers
    raise) carry `priority`."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"priority must be an int (e.g. Priority.BULK), got {priority!r}")
    token = _current.set(int(priority))
    try:
        yield
    finally:
        _current.reset(token)


def current_priority(parent: Any = None) -> int:
    """The priority a new message gets: the innermost block's, else `parent`'s (the message
    being handled), else NORMAL."""
    explicit = _current.get()
    if explicit is not None:
        return explicit
    return priority_of(parent) if parent is not None else int(Priority.NORMAL)


def priority_of(message: Any) -> int:
    """A message's priority (NORMAL when it carries none)."""
    value = (getattr(message, "metadata", None) or {}).get(PRIORITY_KEY)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else int(Priority.NORMAL)
