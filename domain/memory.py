"""The in-memory provider: the default database, event store and outbox for tests and demos."""

from __future__ import annotations

import copy
import itertools
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from tidings.domain.database import Row
from tidings.domain.envelope import stream_matches
from tidings.domain.errors import ExpectedVersionError
from tidings.domain.ports import CommandKey
from tidings.domain.tables import define_model_table

if TYPE_CHECKING:
    from tidings.domain.elements import StoredModel

_DELETED = object()


class MemoryDatabase:
    """Committed state lives here; sessions stage changes and apply them atomically."""

    provider = "memory"

    def __init__(self, name: str = "default") -> None:
        self.name = name
        self.metadata = sa.MetaData()  # the tables its models would have in SQL (for Alembic)
        self.lock = threading.RLock()
        self.tables: dict[str, dict[str, Row]] = {}
        self.events: list[dict[str, Any]] = []
        self.outbox: list[dict[str, Any]] = []
        self.inbox: dict[tuple[str, str], datetime] = {}  # (handler, message id) -> processed at
        self.command_keys: dict[tuple[str, str], CommandKey] = {}  # (domain, idempotency key)
        self.outbox_ids = itertools.count(1)
        self.positions: dict[str, int] = {}  # event_store subscription cursors
        self.failed_positions: dict[tuple[str, int], dict[str, Any]] = {}
        self.subscription_locks: dict[str, threading.Lock] = {}  # single active consumer
        self.dead_letters: dict[str, dict[str, Any]] = {}  # entry id -> dead letter, in order

    def session(self) -> MemorySession:
        return MemorySession(self)

    def create_tables(self) -> None:
        """Nothing to create in memory."""

    def drop_tables(self) -> None:
        with self.lock:
            self.tables.clear()
            self.events.clear()
            self.outbox.clear()
            self.inbox.clear()
            self.command_keys.clear()
            self.positions.clear()
            self.failed_positions.clear()
            self.dead_letters.clear()

    def dispose(self, close: bool = True) -> None:
        """Nothing to release."""

    def ping(self) -> None:
        """Always answers."""

    def add_model(self, model: StoredModel, versioned: bool) -> None:
        define_model_table(self.metadata, model, versioned)

    def truncate(self, table: str) -> None:
        with self.lock:
            self.tables.pop(table, None)

    def last_position(self, categories: list[str]) -> int | None:
        wanted = set(categories)
        with self.lock:
            return max((e["global_position"] for e in self.events if e["category"] in wanted), default=0)

    def read_events(self, stream_or_category: str, from_position: int = 0, limit: int = 1000) -> list[dict]:
        with self.lock:
            return _select_events(self.events, stream_or_category, from_position, limit)

    def read_categories(
        self, categories: list[str], from_position: int, limit: int, settled: bool = False
    ) -> list[dict]:  # positions are given at commit, under the lock: all are settled
        wanted = set(categories)
        with self.lock:
            found = [
                e for e in self.events if e["category"] in wanted and e["global_position"] >= from_position
            ]
            return copy.deepcopy(found[:limit])


def _select_events(events: list[dict], key: str, from_position: int, limit: int) -> list[dict]:
    out = []
    for record in events:
        if record["stream"] == key:
            if record["position"] >= from_position:
                out.append(copy.deepcopy(record))
        elif (record["category"] == key or stream_matches(record["stream"], key)) and record[
            "global_position"
        ] >= from_position:
            out.append(copy.deepcopy(record))
        if len(out) >= limit:
            break
    return out


class MemorySession:
    def __init__(self, db: MemoryDatabase) -> None:
        self.db = db
        self.writes: dict[tuple[str, str], Any] = {}
        self.expected: dict[tuple[str, str], int | None] = {}
        self.events: list[dict] = []
        self.outbox: list[dict] = []
        self.inbox: set[tuple[str, str]] = set()
        self.command_keys: dict[tuple[str, str], CommandKey] = {}

    def _current(self, table: str, identity: str) -> Row | None:
        key = (table, identity)
        if key in self.writes:
            value = self.writes[key]
            return None if value is _DELETED else value
        return self.db.tables.get(table, {}).get(identity)

    def get(self, table: str, identity: str) -> Row | None:
        with self.db.lock:
            row = self._current(table, identity)
        return copy.deepcopy(row) if row else None

    def find(self, table: str, filters: dict[str, Any]) -> list[Row]:
        with self.db.lock:
            ids = set(self.db.tables.get(table, {})) | {i for t, i in self.writes if t == table}
            rows = [self._current(table, i) for i in sorted(ids)]
        return [copy.deepcopy(r) for r in rows if r and all(r[0].get(k) == v for k, v in filters.items())]

    def save(
        self, table: str, identity: str, data: dict[str, Any], expected_version: int, versioned: bool
    ) -> int:
        with self.db.lock:
            current = self._current(table, identity)
            stored = current[1] if current else -1
            if versioned and stored != expected_version:
                raise ExpectedVersionError(
                    f"{table} {identity}: expected version {expected_version}, found {stored}"
                )
            key = (table, identity)
            if key not in self.expected:
                committed = self.db.tables.get(table, {}).get(identity)
                self.expected[key] = committed[1] if committed else None
            version = stored + 1
            self.writes[key] = (copy.deepcopy(data), version)
            return version

    def delete(self, table: str, identity: str) -> bool:
        with self.db.lock:
            existed = self._current(table, identity) is not None
            key = (table, identity)
            if key not in self.expected:
                committed = self.db.tables.get(table, {}).get(identity)
                self.expected[key] = committed[1] if committed else None
            self.writes[key] = _DELETED
            return existed

    def append_events(self, records: list[dict[str, Any]]) -> None:
        self.events.extend(copy.deepcopy(records))

    def write_outbox(self, rows: list[dict[str, Any]]) -> None:
        self.outbox.extend(copy.deepcopy(rows))

    def mark_processed(self, handler: str, message_id: str) -> bool:
        key = (handler, message_id)
        with self.db.lock:
            if key in self.db.inbox or key in self.inbox:
                return False
        self.inbox.add(key)
        return True

    def claim_command_key(self, domain: str, key: str, message_id: str) -> CommandKey | None:
        with self.db.lock:
            found = self.command_keys.get((domain, key)) or self.db.command_keys.get((domain, key))
        if found is not None:
            return found
        self.command_keys[(domain, key)] = CommandKey(message_id, None)
        return None

    def record_command_result(self, domain: str, key: str, result: str) -> None:
        claimed = self.command_keys[(domain, key)]
        self.command_keys[(domain, key)] = CommandKey(claimed.message_id, result)

    def flush(self) -> None:
        """Nothing is held back: the commit applies everything."""

    def commit(self) -> None:
        db = self.db
        with db.lock:
            for (table, identity), expected in self.expected.items():
                committed = db.tables.get(table, {}).get(identity)
                if (committed[1] if committed else None) != expected:
                    raise ExpectedVersionError(f"{table} {identity} was changed concurrently")
            if any(key in db.inbox for key in self.inbox):
                raise ExpectedVersionError("message already processed by this handler")
            if any(key in db.command_keys for key in self.command_keys):
                # another transaction took the key since: re-run, and find it taken
                raise ExpectedVersionError("idempotency key taken concurrently")
            for (table, identity), value in self.writes.items():
                rows = db.tables.setdefault(table, {})
                if value is _DELETED:
                    rows.pop(identity, None)
                else:
                    rows[identity] = value
            for record in self.events:
                in_stream = [e for e in db.events if e["stream"] == record["stream"]]
                record["position"] = len(in_stream)
                record["global_position"] = len(db.events) + 1
                db.events.append(record)
            for row in self.outbox:
                row["id"] = next(db.outbox_ids)
                db.outbox.append(row)
            now = datetime.now(UTC)
            db.inbox.update(dict.fromkeys(self.inbox, now))
            db.command_keys.update(self.command_keys)
        self._reset()

    def rollback(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.writes, self.expected = {}, {}
        self.events, self.outbox, self.inbox = [], [], set()
        self.command_keys = {}
