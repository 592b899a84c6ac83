"""A tiny domain whose handler fails on demand: for retries, DLQ and crash tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tidings import Domain, current_domain, handle
from tidings.domain.errors import BusinessRuleError
from tidings.fields import Identifier, Integer, String

FAILURES: dict[str, int] = {}  # entry id -> failures still to raise
FAULTS: dict[str, int] = {}  # entry id -> transient faults (ConnectionError) still to raise
ERRORS_SEEN: list[tuple[str, str]] = []


class DownstreamError(Exception):
    """An ordinary handler failure: retried per max_retries, then dead-lettered."""


class EntryRefused(Exception):
    """Declared in the handler's `throws`: never retried."""


class LedgerClosed(BusinessRuleError):
    """A business rule: never retried."""


def build_ledger(root: Path | None = None, name: str = "ledger") -> Domain:
    """The ledger domain; another `name` gives it queues of its own (`<name>.apply`, ...)."""
    domain = Domain(name, root_path=root or Path(__file__).parent)
    domain.config.update(event_processing="async", command_processing="async", message_processing="async")
    domain.config["server"]["stream_subscription"].update(max_retries=3, retry_delay_seconds=0)

    @domain.aggregate
    class Entry:
        label: String(required=True)

    @domain.aggregate
    class Tally:
        entry_id: Identifier(identifier=True)
        applied: Integer(default=0)

    @domain.event(part_of=Entry)
    class EntryMade:
        entry_id: Identifier(required=True)
        label: String(required=True)

    @domain.event_handler(part_of=Tally, stream_category="entry", throws=(EntryRefused,))
    class Apply:
        @handle(EntryMade)
        def apply(self, event):
            if FAULTS.get(event.entry_id, 0) > 0:
                FAULTS[event.entry_id] -= 1
                raise ConnectionError(f"connection reset while applying {event.label}")
            if FAILURES.get(event.entry_id, 0) > 0:
                FAILURES[event.entry_id] -= 1
                raise DownstreamError(f"flaky downstream for {event.label}")
            if event.label.startswith("refused"):
                raise EntryRefused(f"{event.label} is refused")
            if event.label.startswith("closed"):
                raise LedgerClosed(f"the ledger is closed to {event.label}")
            if event.label.startswith("paced"):
                time.sleep(0.02)  # keeps deliveries in flight while a test cuts the database
            slow_file = os.environ.get("LEDGER_SLOW_FILE")
            if event.label.startswith("slow") and slow_file and not _holds(Path(slow_file), event.entry_id):
                Path(slow_file).write_text(event.entry_id)
                time.sleep(30)  # the crash test kills the worker during this (first run only)
            repo = current_domain.repository_for(Tally)
            try:
                tally = repo.get(event.entry_id)
            except Exception:  # noqa: BLE001 - first time: start at zero
                tally = Tally(entry_id=event.entry_id)
            tally.applied += 1
            repo.add(tally)

        @classmethod
        def handle_error(cls, exc, message):
            ERRORS_SEEN.append((type(exc).__name__, message.id))

    return domain


def _holds(path: Path, entry_id: str) -> bool:
    return path.exists() and path.read_text() == entry_id


def make_entry(domain: Domain, label: str) -> str:
    Entry = domain.registry["aggregate"]["Entry"]
    EntryMade = domain.registry["event"]["EntryMade"]
    with domain.domain_context():
        entry = Entry(label=label)
        entry.raise_(EntryMade(entry_id=entry.id, label=label))
        domain.repository_for(Entry).add(entry)
    return entry.id


def make_failing_entry(domain: Domain, label: str, failures: int) -> str:
    """Make an entry whose handler fails `failures` times (its id is known before commit)."""
    Entry = domain.registry["aggregate"]["Entry"]
    EntryMade = domain.registry["event"]["EntryMade"]
    with domain.domain_context():
        entry = Entry(label=label)
        FAILURES[entry.id] = failures
        entry.raise_(EntryMade(entry_id=entry.id, label=label))
        domain.repository_for(Entry).add(entry)
    return entry.id


def make_entry_with_faults(domain: Domain, label: str, faults: int, failures: int = 0) -> str:
    """Make an entry whose handler first raises `faults` transient faults (ConnectionError),
    then `failures` ordinary ones (DownstreamError)."""
    Entry = domain.registry["aggregate"]["Entry"]
    EntryMade = domain.registry["event"]["EntryMade"]
    with domain.domain_context():
        entry = Entry(label=label)
        FAULTS[entry.id] = faults
        FAILURES[entry.id] = failures
        entry.raise_(EntryMade(entry_id=entry.id, label=label))
        domain.repository_for(Entry).add(entry)
    return entry.id


def applied(domain: Domain, entry_id: str) -> int | None:
    Tally = domain.registry["aggregate"]["Tally"]
    with domain.domain_context():
        try:
            return domain.repository_for(Tally).get(entry_id).applied
        except Exception:  # noqa: BLE001
            return None
