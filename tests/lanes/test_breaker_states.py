"""The breaker's state machine on the one-process store (tasks/breaker.py), with a fake clock:
the Redis store runs the same transitions as Lua scripts (tests/lanes/test_breaker.py)."""

from __future__ import annotations

from tidings.tasks.breaker import CLOSED, HALF_OPEN, OPEN, PROBE_SECONDS, MemoryBreakerStore


def store() -> MemoryBreakerStore:
    return MemoryBreakerStore(lambda handler: 10.0)


def test_opens_after_threshold_failures_in_a_row_and_a_success_resets_the_count():
    s = store()
    assert s.failed("H", 3, now=0) == (CLOSED, CLOSED)
    s.succeeded("H")
    assert s.failed("H", 3, now=1) == (CLOSED, CLOSED)
    assert s.failed("H", 3, now=2) == (CLOSED, CLOSED)
    assert s.failed("H", 3, now=3) == (CLOSED, OPEN)
    assert s.state("H", now=4) == (OPEN, 3)
    assert s.admit("H", 10.0, now=4) == OPEN  # holds messages during the cool-down


def test_after_the_cool_down_exactly_one_probe_runs_and_its_failure_reopens():
    s = store()
    for t in range(3):
        s.failed("H", 3, now=t)
    assert s.state("H", now=12.5)[0] == HALF_OPEN  # what the worker's bootstep sees
    assert s.admit("H", 10.0, now=13) == HALF_OPEN  # the probe
    assert s.admit("H", 10.0, now=13.1) == OPEN  # everyone else waits for it
    assert s.failed("H", 3, now=14) == (HALF_OPEN, OPEN)
    assert s.admit("H", 10.0, now=20) == OPEN  # a fresh cool-down from the failed probe


def test_a_successful_probe_closes_and_a_lost_probe_is_claimed_again():
    s = store()
    for t in range(3):
        s.failed("H", 3, now=t)
    assert s.admit("H", 10.0, now=13) == HALF_OPEN
    # the probe's worker died: after PROBE_SECONDS another message probes
    assert s.admit("H", 10.0, now=13 + PROBE_SECONDS + 1) == HALF_OPEN
    assert s.succeeded("H") == HALF_OPEN
    assert s.state("H", now=50) == (CLOSED, 0)
    assert s.admit("H", 10.0, now=50) == CLOSED
