"""`batch_delivery` (the `batch` profile): the relay packs up to messages_per_tick messages for
one handler into one task; each still runs in its own unit of work with its own inbox row, and
a failing one is split out and retried alone."""

from __future__ import annotations

import pytest

from tests.engine import ledger
from tests.engine.conftest import running_worker
from tests.engine.ledger import applied, build_ledger, make_entry, make_failing_entry
from tests.waiting import wait_until
from tidings.app.testing import eager_app
from tidings.tasks import dlq
from tidings.tasks.relay import relay_now


def packed_ledger(use_provider, tmp_path, **overrides):
    ledger.FAILURES.clear()
    ledger.ERRORS_SEEN.clear()
    domain = build_ledger(tmp_path)
    domain.config["server"]["subscriptions"] = {
        "Apply": {"profile": "batch", "messages_per_tick": 3, "retry_delay_seconds": 0, **overrides}
    }
    return use_provider(domain)


def test_the_batch_profile_turns_batch_delivery_on(tmp_path):
    domain = build_ledger(tmp_path)
    domain.config["server"]["subscriptions"] = {"Apply": {"profile": "batch"}}
    domain.init()
    settings = domain.subscription_settings(domain.registry["event_handler"]["Apply"])
    assert settings.batch_delivery is True and settings.messages_per_tick == 500


def test_seven_messages_travel_in_three_packs_and_each_is_applied_once(use_provider, tmp_path):
    domain = packed_ledger(use_provider, tmp_path)
    ids = [make_entry(domain, f"e{n}") for n in range(7)]  # no engine yet: rows wait
    celery = eager_app(domain)
    stats = celery.tidings_runtime.stats
    packs_before = stats["packs"]
    assert relay_now(celery, domain) == 7
    assert stats["packs"] - packs_before == 3  # 3 + 3 + 1
    assert [applied(domain, i) for i in ids] == [1] * 7


def test_a_failing_message_is_split_out_and_retried_alone(use_provider, tmp_path):
    domain = packed_ledger(use_provider, tmp_path)
    ids = [make_entry(domain, "a"), make_failing_entry(domain, "flaky", failures=1), make_entry(domain, "b")]
    celery = eager_app(domain)
    relay_now(celery, domain)
    assert [applied(domain, i) for i in ids] == [1, 1, 1]
    assert len(ledger.ERRORS_SEEN) == 1  # only the flaky one failed, once; no sibling re-ran


@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_on_a_worker_packs_apply_everything_once_and_a_poison_member_reaches_the_dlq(
    use_provider, tmp_path, redis_app
):
    domain = packed_ledger(use_provider, tmp_path, max_retries=2, messages_per_tick=10)
    good = [make_entry(domain, f"g{n}") for n in range(25)]
    doomed = make_failing_entry(domain, "doomed", failures=10**6)
    celery = redis_app(domain)
    with running_worker(celery):
        relay_now(celery, domain)
        wait_until(lambda: all(applied(domain, i) == 1 for i in good), message="all applied")
        [entry] = wait_until(lambda: dlq.list_entries(celery, "ledger.apply"), message="DLQ")
    assert entry["message_id"] and entry["attempts"] == 3  # max_retries + 1, counted across
    assert entry["task"] == "tidings.ledger.Apply"  # the pack and the split-out task
    assert applied(domain, doomed) is None
    assert [applied(domain, i) for i in good] == [1] * 25


def _inbox_inserts(domain):
    """A list that grows by one per INSERT into the inbox table, on the domain's engine."""
    import sqlalchemy as sa

    seen: list[str] = []
    engine = domain.outbox_database.engine

    def count(conn, cursor, statement, *_):
        if statement.lstrip().upper().startswith("INSERT INTO TIDINGS_INBOX"):
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    return seen


def _envelopes(domain) -> list[dict]:
    import json

    import sqlalchemy as sa

    from tidings.domain.envelope import Message

    t = domain.outbox_database.outbox_table
    with domain.outbox_database.engine.connect() as conn:
        rows = conn.execute(sa.select(t.c.envelope).order_by(t.c.id)).scalars().all()
    return [Message.from_dict(json.loads(r) if isinstance(r, str) else r).to_dict() for r in rows]


@pytest.mark.parametrize("provider", ["postgresql", "sqlite"], indirect=True)
def test_a_pack_is_one_inbox_statement_and_a_redelivered_pack_applies_nothing_twice(use_provider, tmp_path):
    from tidings.tasks.naming import batch_task_name

    domain = packed_ledger(use_provider, tmp_path, messages_per_tick=10)
    ids = [make_entry(domain, f"e{n}") for n in range(8)]  # no engine yet: rows wait
    celery = eager_app(domain)
    stats = celery.tidings_runtime.stats
    Apply = domain.registry["event_handler"]["Apply"]
    pack = celery.tasks[batch_task_name(domain, Apply)]
    inserts = _inbox_inserts(domain)
    assert pack.apply(args=[_envelopes(domain)[:7]]).get() == {"handled": 7}
    assert len(inserts) == 1  # seven messages, one pack, one multi-row inbox insert

    # the relay sends all eight again in one pack (as a re-delivery or an audit re-send would)
    before = stats["duplicates"], stats["handled"]
    assert relay_now(celery, domain) == 8
    assert (stats["duplicates"] - before[0], stats["handled"] - before[1]) == (7, 1)
    assert len(inserts) == 2
    assert [applied(domain, i) for i in ids] == [1] * 8


@pytest.mark.parametrize("provider", ["postgresql"], indirect=True)
def test_a_failing_member_rolls_its_pack_back_and_the_rest_commit_without_it(use_provider, tmp_path):
    domain = packed_ledger(use_provider, tmp_path, messages_per_tick=10, max_retries=0)
    good = [make_entry(domain, f"g{n}") for n in range(4)]
    doomed = make_failing_entry(domain, "doomed", failures=10**6)
    celery = eager_app(domain)
    relay_now(celery, domain)
    assert [applied(domain, i) for i in good] == [1] * 4
    assert applied(domain, doomed) is None
    assert len(ledger.ERRORS_SEEN) == 2  # once in the pack, once alone (max_retries = 0)
