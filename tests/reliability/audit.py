"""The audited domain of the fault suite, and the audit that says what became of each message.

Two event handlers, `Apply` and `Count`, subscribe to `EntryMade`. Each run of either inserts
one `Effect` row (a fresh id every run) inside the handler's own unit of work, so the effect
commits together with the inbox row or not at all, and a message applied twice shows up as a
second row. That makes the audit exact, per handler:

- committed: the `EntryMade` messages in the outbox (what the producers committed);
- applied: distinct message ids with at least one effect row;
- doubled: message ids with more than one effect row (the inbox failed);
- dead_lettered: entries in the handler's DLQ;
- lost: committed - applied - dead_lettered.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tidings import Domain, current_domain, handle
from tidings.domain.context import current_message
from tidings.fields import Identifier, String

HANDLERS = ("Apply", "Count")


def build_audit(name: str) -> Domain:
    """The audited domain; `name` gives it queues of its own (`<name>.apply`, `<name>.count`)."""
    domain = Domain(name, root_path=Path(__file__).parent)
    domain.config.update(event_processing="async", command_processing="async", message_processing="async")
    # A retry spaced 1 s, 2 s, 4 s: a handler that meets a database restart retries past it.
    domain.config["server"]["stream_subscription"].update(
        max_retries=3, retry_delay_seconds=1, retry_backoff=True, retry_backoff_max=4, retry_jitter=False
    )

    @domain.aggregate
    class Entry:
        label: String(required=True)

    @domain.aggregate
    class Effect:
        message_id: String(required=True)
        handler: String(required=True)
        run_id: String(required=True)

    @domain.event(part_of=Entry)
    class EntryMade:
        entry_id: Identifier(required=True)
        label: String(required=True)

    def record(handler: str, event: Any) -> None:
        """One effect row for this run, in the handler's unit of work."""
        message = current_message.get()
        pause(handler, event.label)
        current_domain.repository_for(Effect).add(
            Effect(message_id=message.id, handler=handler, run_id=uuid.uuid4().hex)
        )

    @domain.event_handler(part_of=Effect, stream_category="entry")
    class Apply:
        @handle(EntryMade)
        def apply(self, event):
            record("Apply", event)

    @domain.event_handler(part_of=Effect, stream_category="entry")
    class Count:
        @handle(EntryMade)
        def count(self, event):
            record("Count", event)

    return domain


def pause(handler: str, label: str) -> None:
    """Crash tests (AUDIT_PAUSE_AT=before): on the entry labelled `AUDIT_PAUSE_LABEL`, handler
    `Apply` writes this process's pid to `AUDIT_PAUSE_FILE` and sleeps, so the test can kill
    the process there, inside the handler's unit of work (see audit_worker.py).

    With AUDIT_BUSY_DIR, the first run of each handler on an entry labelled `busy-...` writes
    `<dir>/<label>.<handler>` and sleeps: one such entry keeps both pool processes of a
    worker (concurrency 2) busy, so that it reserves nothing more while the test kills it."""
    busy = os.environ.get("AUDIT_BUSY_DIR")
    if busy and label.startswith("busy-"):
        mark = Path(busy) / f"{label}.{handler}"
        if not mark.exists():
            mark.write_text(str(os.getpid()))
            time.sleep(60)  # killed in here: before the handler's commit
    if os.environ.get("AUDIT_PAUSE_AT") != "before":
        return
    path, wanted = os.environ.get("AUDIT_PAUSE_FILE"), os.environ.get("AUDIT_PAUSE_LABEL")
    if path and handler == "Apply" and label == wanted and not Path(path).exists():
        Path(path).write_text(str(os.getpid()))
        time.sleep(60)  # killed in here: before the handler's commit


def make_entries(domain: Domain, labels: Iterable[str]) -> list[str]:
    """Commit one `Entry` (and its `EntryMade`) per label, each in its own unit of work."""
    Entry = domain.registry["aggregate"]["Entry"]
    EntryMade = domain.registry["event"]["EntryMade"]
    ids = []
    for label in labels:
        with domain.domain_context():
            entry = Entry(label=label)
            entry.raise_(EntryMade(entry_id=entry.id, label=label))
            domain.repository_for(Entry).add(entry)
        ids.append(entry.id)
    return ids


def handler_queue(domain: Domain, handler: str) -> str:
    from tidings.tasks.naming import queue_name

    return queue_name(domain, domain.registry["event_handler"][handler])


@dataclass(frozen=True)
class HandlerAudit:
    """What became of the committed messages for one handler."""

    handler: str
    committed: int
    applied: int
    doubled: int
    dead_lettered: int

    @property
    def lost(self) -> int:
        return self.committed - self.applied - self.dead_lettered


def effects_table(domain: Domain) -> sa.Table:
    return domain.metadata.tables["effect"]


def audit(domain: Domain, dead_lettered: dict[str, int] | None = None) -> dict[str, HandlerAudit]:
    """Count committed / applied / doubled per handler from the outbox and the effect table;
    `dead_lettered` is the DLQ depth per handler (the broker's, measured by the caller)."""
    outbox, effects = domain.outbox_database.outbox_table, effects_table(domain)
    with domain.outbox_database.engine.connect() as conn:
        committed = conn.execute(
            sa.select(sa.func.count()).select_from(outbox).where(outbox.c.type.like("%EntryMade%"))
        ).scalar_one()
        runs = conn.execute(
            sa.select(effects.c.handler, effects.c.message_id, sa.func.count()).group_by(
                effects.c.handler, effects.c.message_id
            )
        ).all()
    result = {}
    for handler in HANDLERS:
        counts = [n for h, _, n in runs if h == handler]
        result[handler] = HandlerAudit(
            handler,
            committed=committed,
            applied=len(counts),
            doubled=sum(1 for n in counts if n > 1),
            dead_lettered=(dead_lettered or {}).get(handler, 0),
        )
    return result
