"""The outbox relay's steps (relay, purge) and the relay task.

Workers relay from their relay loop (app/relay_loop.py), not from a task; the task is kept for
eager mode (it runs inline after each commit) and for running a round by hand
(`celery call tidings.<domain>.relay_outbox`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from celery import Celery, Task

from tidings.domain.settings import OutboxSettings
from tidings.outbox.relay import Backoff, OutboxStore, relay_pending_messages
from tidings.tasks.dispatch import publisher
from tidings.tasks.naming import relay_task_name
from tidings.tasks.ordering import purge_sequences

if TYPE_CHECKING:
    from tidings.domain.domain import Domain

PURGE_EVERY = 60.0  # seconds between deletions of old published rows and inbox rows, per process


def outbox_store(domain: Domain) -> OutboxStore:
    """The domain's outbox (its own rows only), built once by its provider."""
    return domain.storage.outbox


def relay_now(celery: Celery, domain: Domain) -> int:
    """Relay every due outbox row (rounds of `outbox.batch_size`); returns how many."""
    return relay_with(celery, domain, domain.settings.outbox)


def relay_with(celery: Celery, domain: Domain, outbox: OutboxSettings) -> int:
    """`relay_now` with the given `[outbox]` settings (batch size and publish backoff)."""
    backoff = Backoff(outbox.backoff_base, outbox.backoff_max)
    with publisher(celery, domain) as publish:
        return relay_pending_messages(outbox_store(domain), publish, outbox.batch_size, backoff)


def purge_bookkeeping(domain: Domain, outbox: OutboxSettings, now: datetime | None = None) -> tuple[int, int]:
    """Delete the published rows older than `retention` and this domain's inbox rows older than
    `inbox_retention` (which exceeds `audit_window`, checked when the settings are parsed: the
    audit never re-sends a message whose inbox row may be gone). Returns both counts."""
    now = now or datetime.now(UTC)
    published = outbox_store(domain).purge_published(now - timedelta(seconds=outbox.retention))
    inbox = domain.storage.inbox.purge(
        now - timedelta(seconds=outbox.inbox_retention), prefix=f"tidings.{domain.name}."
    )
    purge_sequences(domain, now - timedelta(seconds=outbox.inbox_retention))  # sequential_by numbers
    return published, inbox


def register_relay_task(
    celery: Celery, domain: Domain, before_relay: Callable[[], None] | None = None
) -> Task:
    """The relay task (not scheduled: see the module docstring); `before_relay` runs before
    each claim."""
    last_purge = [0.0]
    outbox = domain.settings.outbox

    @celery.task(name=relay_task_name(domain), ignore_result=True, shared=False, acks_late=False)
    def relay_outbox() -> int:
        if before_relay is not None:
            before_relay()
        published = relay_with(celery, domain, outbox)
        if time.monotonic() - last_purge[0] > PURGE_EVERY:
            last_purge[0] = time.monotonic()
            purge_bookkeeping(domain, outbox)
        return published

    return relay_outbox
