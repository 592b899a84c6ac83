"""The delivery audit's selection on every provider: a published row is selected for the
handlers that neither applied nor dead-lettered it once its grace has passed, and not again
before its backoff; a round re-sends it to those handlers' queues only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.reliability.audit import build_audit, make_entries
from tidings.app.bootstrap import create_celery_app
from tidings.domain.ports import AuditWindow
from tidings.tasks.audit import audit_deliveries, audit_lag, audit_routes
from tidings.tasks.relay import relay_now

GRACE = 20.0


@pytest.fixture
def audited(use_provider):
    domain = use_provider(build_audit(f"audit_{uuid.uuid4().hex[:8]}"))
    celery = create_celery_app(domain, task_always_eager=False)  # nothing consumes the queues
    yield domain, celery
    celery.close()


def keys(domain) -> tuple[str, str]:
    return f"tidings.{domain.name}.Apply", f"tidings.{domain.name}.Count"


def published(domain, celery, count: int) -> list[str]:
    """`count` messages committed and relayed (sitting in queues nobody consumes): their ids."""
    make_entries(domain, [f"e-{i}" for i in range(count)])
    assert relay_now(celery, domain) >= count
    outbox = domain.storage.deliveries.snapshot([])
    assert outbox.pending == 0
    import json

    return [json.loads(e)["id"] for e in outbox.published]


def applied(domain, handler: str, message_id: str) -> None:
    session = domain.storage.default.session()
    assert session.mark_processed(handler, message_id)
    session.commit()


def dead_lettered(domain, handler: str, message_id: str) -> None:
    domain.storage.dead_letters.record(
        {
            "entry_id": uuid.uuid4().hex,
            "handler": handler,
            "queue": "q",
            "task": handler,
            "body": {"id": message_id},
            "message_id": message_id,
            "error_type": "ValueError",
            "error_message": "bug",
            "attempts": 4,
            "failed_at": datetime.now(UTC).isoformat(),
        }
    )


def window(now: datetime, max_resends: int = 10) -> AuditWindow:
    return AuditWindow(now, now - timedelta(seconds=GRACE), now - timedelta(days=1), max_resends)


def test_the_audit_selects_only_what_a_handler_neither_applied_nor_dead_lettered_after_grace(audited):
    domain, celery = audited
    apply, count = keys(domain)
    done, half_dead, lost, half = published(domain, celery, 4)
    applied(domain, apply, done), applied(domain, count, done)
    applied(domain, apply, half_dead), dead_lettered(domain, count, half_dead)
    applied(domain, apply, half)
    deliveries, routes = domain.storage.deliveries, audit_routes(domain)
    assert sorted(routes[next(iter(routes))]) == [apply, count]

    now = datetime.now(UTC)
    assert deliveries.unconfirmed(routes, window(now), 100) == []  # all within their grace
    later = now + timedelta(seconds=GRACE + 1)
    found = {u.message_id: u.missing for u in deliveries.unconfirmed(routes, window(later), 100)}
    assert found == {lost: (apply, count), half: (count,)}
    assert [u.message_id for u in deliveries.unconfirmed(routes, window(later), 1)] == [lost]  # oldest first
    assert audit_lag(domain, now=later) == pytest.approx(1.0, abs=1.0)
    assert audit_lag(domain, now=now) == 0.0


def test_a_round_resends_to_the_lacking_handlers_only_then_backs_the_row_off(audited):
    domain, celery = audited
    apply, count = keys(domain)
    done, lost, half = published(domain, celery, 3)
    applied(domain, apply, done), applied(domain, count, done)
    applied(domain, apply, half)
    deliveries, routes = domain.storage.deliveries, audit_routes(domain)
    later = datetime.now(UTC) + timedelta(seconds=GRACE + 1)

    first = audit_deliveries(celery, domain, now=later)
    assert (first.selected, first.resent, first.deliveries) == (2, 2, 3)
    assert dict(first.handlers) == {apply: 1, count: 2}
    assert first.confirmed == 1  # `done`: confirmed, never read again
    # re-sent: not selected again before its backoff (grace * 2 after the first re-send)
    assert deliveries.unconfirmed(routes, window(later + timedelta(seconds=GRACE)), 100) == []
    again = later + timedelta(seconds=2 * GRACE + 1)
    assert {u.message_id for u in deliveries.unconfirmed(routes, window(again), 100)} == {lost, half}
    assert [u.resent for u in deliveries.unconfirmed(routes, window(again), 100)] == [1, 1]
    # applied meanwhile: never selected again; at its re-send limit: not selected either
    applied(domain, count, half)
    assert {u.message_id for u in deliveries.unconfirmed(routes, window(again), 100)} == {lost}
    assert deliveries.unconfirmed(routes, window(again, max_resends=1), 100) == []
    # ... but the lag still shows it
    assert audit_lag(domain, now=again) > GRACE


@pytest.mark.parametrize("provider", ["sqlite", "postgresql"], indirect=True)  # the effects table
def test_the_audit_recovers_a_purged_queue_on_an_eager_app(use_provider):
    """End to end in one process: the relay's deliveries are lost (never run), the audit sends
    them again, the handlers apply each once."""
    from tests.reliability.audit import audit

    domain = use_provider(build_audit(f"audit_{uuid.uuid4().hex[:8]}"))
    lost = create_celery_app(domain, task_always_eager=False)
    make_entries(domain, ["a", "b"])
    relay_now(lost, domain)  # to a memory queue that is then forgotten with its app
    lost.close()
    eager = create_celery_app(domain, task_always_eager=True)
    assert all(a.applied == 0 for a in audit(domain).values())
    outcome = audit_deliveries(eager, domain, now=datetime.now(UTC) + timedelta(seconds=GRACE + 1))
    assert outcome.resent == 2
    result = audit(domain)
    assert all((a.applied, a.doubled) == (2, 0) for a in result.values()), result


def test_the_relay_purge_removes_inbox_rows_past_inbox_retention_only(audited):
    from tidings.tasks.relay import purge_bookkeeping

    domain, celery = audited
    apply, _ = keys(domain)
    (message,) = published(domain, celery, 1)
    applied(domain, apply, message)
    outbox = domain.settings.outbox
    now = datetime.now(UTC)
    assert purge_bookkeeping(domain, outbox, now) == (0, 0)  # nothing old enough yet
    past_window = now + timedelta(seconds=outbox.audit_window + 1)
    assert purge_bookkeeping(domain, outbox, past_window) == (0, 0)  # the audit may still re-send
    past_retention = now + timedelta(seconds=outbox.inbox_retention + 1)
    assert purge_bookkeeping(domain, outbox, past_retention) == (1, 1)  # the published row too


@pytest.mark.parametrize(
    ("outbox", "complaint"),
    [
        (
            {"audit_window": 3600, "inbox_retention": 3600},
            "inbox_retention (3600 s) must exceed audit_window",
        ),
        ({"audit_grace": 90, "audit_window": 60}, "audit_window (60 s) must exceed audit_grace"),
    ],
)
def test_init_refuses_an_inbox_retention_the_audit_could_outlive(outbox, complaint):
    from tidings import ConfigurationError, Domain

    domain = Domain("horizons")
    domain.config["outbox"].update(outbox)
    with pytest.raises(ConfigurationError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        domain.init()
