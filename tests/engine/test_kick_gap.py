"""The kicker merges wake-ups closer together than its gap: a flat-out producer sends a few
hundred wake-ups a second instead of one per commit, and a quiet one none late."""

from __future__ import annotations

import threading
import time

from tidings.app.kick import Kicker


def test_commits_within_the_gap_share_one_wake_up_and_every_category_is_sent():
    sent: list[tuple[float, set[str]]] = []
    kicker = Kicker(lambda categories: sent.append((time.monotonic(), categories)), "gap", gap=0.2)
    for i in range(50):
        kicker.committed({f"c{i % 3}"})
    assert kicker.wait_idle(5)
    kicker.committed({"late"})  # within 0.2 s of the last wake-up: it waits for the gap
    assert kicker.wait_idle(5)
    assert 2 <= len(sent) <= 3  # the first commit's, then the rest merged (at most one more)
    assert set().union(*(categories for _, categories in sent)) == {"c0", "c1", "c2", "late"}
    gaps = [b - a for (a, _), (b, _) in zip(sent, sent[1:], strict=False)]
    assert all(g >= 0.19 for g in gaps)


def test_a_commit_after_a_quiet_gap_is_sent_at_once():
    sent = threading.Event()
    kicker = Kicker(lambda categories: sent.set(), "quiet", gap=1.0)
    kicker.committed({"first"})
    assert kicker.wait_idle(5)
    time.sleep(1.1)  # longer than the gap: the next wake-up has nothing to wait for
    sent.clear()
    started = time.monotonic()
    kicker.committed({"second"})
    assert sent.wait(5)
    assert time.monotonic() - started < 0.5  # not held back for the gap (1 s)
