"""The outbox store on each provider: relay marks rows published; old published rows go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.engine.ledger import build_ledger, make_entry
from tidings.outbox.relay import Backoff
from tidings.tasks.relay import outbox_store


def test_published_rows_are_deleted_after_the_retention_and_pending_ones_never(use_provider, tmp_path):
    domain = use_provider(build_ledger(tmp_path))
    for label in ("a", "b", "c"):
        make_entry(domain, label)  # no engine attached: the rows wait in the outbox
    store = outbox_store(domain)
    sent: list[str] = []
    assert store.relay_batch(sent.append, 2, Backoff()) == 2
    status = store.status()
    assert (status.pending, status.published) == (1, 2) and len(sent) == 2
    assert store.purge_published(datetime.now(UTC) - timedelta(hours=1)) == 0  # too recent
    assert store.purge_published(datetime.now(UTC) + timedelta(seconds=1)) == 2
    status = store.status()
    assert (status.pending, status.published) == (1, 0)
    assert status.oldest_pending_age >= 0
