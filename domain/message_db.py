"""The Message DB event store: events and commands written with `message_store.write_message`.

Message DB (https://github.com/message-db/message-db) lives in its own PostgreSQL database
(`message_store`), so its writes cannot share the business transaction. A session writes
each record inside its own open transaction when the unit of work appends them, and the
unit of work commits that transaction *after* the business database: a conflict or a
failed write aborts the whole unit of work, and a failed business commit leaves no
phantom events behind. See README "Message DB" for the remaining window.

Only Message DB's public interface is used (`write_message`, `stream_version`,
`get_stream_messages`, `get_category_messages`), so connecting as its least-privilege
`message_store` role is enough.
"""

from __future__ import annotations

import heapq
import itertools
import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from tidings.domain.envelope import category_of
from tidings.domain.errors import ConfigurationError, ExpectedVersionError, TidingsError
from tidings.domain.sql import TransactionSession, normalize_uri

# Message DB's functions call each other and their table unqualified.
_SEARCH_PATH = "-c search_path=message_store,public"
_WRONG_VERSION = "Wrong expected version"


class MessageDbError(TidingsError):
    """Message DB refused a write or read (other than an expected-version conflict)."""


def make_engine(uri: str) -> sa.Engine:
    """A psycopg2 engine whose sessions find Message DB's functions."""
    uri = normalize_uri(uri)
    if not uri.startswith("postgresql"):
        raise ConfigurationError(
            f"event_store.database_uri for message_db must be PostgreSQL, "
            f"got {sa.make_url(uri).render_as_string(hide_password=True)}"
        )
    return sa.create_engine(uri, pool_pre_ping=True, connect_args={"options": _SEARCH_PATH})


class MessageDbDatabase:
    """The event store in a Message DB database (installed by `.ci/install-message-db`)."""

    def __init__(self, name: str, uri: str) -> None:
        self.name = name
        self.uri = uri
        self._engine: sa.Engine | None = None

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:  # built on first use, so nothing is shared across a fork
            self._engine = make_engine(self.uri)
        return self._engine

    def session(self) -> MessageDbSession:
        return MessageDbSession(self)

    def create_tables(self) -> None:
        """Check Message DB is installed (its installer owns the schema)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT message_store_version()"))
        except DBAPIError as exc:
            url = self.engine.url.render_as_string(hide_password=True)
            raise ConfigurationError(
                f"no Message DB at {url}: install it with .ci/install-message-db ({type(exc.orig).__name__})"
            ) from None

    def drop_tables(self) -> None:
        """Never drops anything: the message store is append-only and shared."""

    def dispose(self, close: bool = True) -> None:
        # close=False after a fork: drop the pool without closing the connections, which
        # belong to the parent (closing one from a child ends the parent's session too)
        if self._engine is not None:
            self._engine.dispose(close=close)
            self._engine = None

    def read_events(self, stream_or_category: str, from_position: int = 0, limit: int = 1000) -> list[dict]:
        """A stream from its position `from_position`, or a category from a global position."""
        if "-" in stream_or_category:
            query = "SELECT * FROM get_stream_messages(:name, :position, :limit)"
        else:
            query = "SELECT * FROM get_category_messages(:name, :position, :limit)"
        params = {"name": stream_or_category, "position": from_position, "limit": limit}
        with self.engine.connect() as conn:
            rows = _run(conn, query, params)
        return [_record(row) for row in rows]

    def read_categories(
        self, categories: list[str], from_position: int, limit: int, settled: bool = False
    ) -> list[dict]:
        """Records of these categories with global_position >= from_position, in global order
        (`settled` is Message DB's own business: it is read as it is)."""
        per_category = [self.read_events(c, from_position, limit) for c in dict.fromkeys(categories)]
        merged = heapq.merge(*per_category, key=lambda r: r["global_position"])
        return list(itertools.islice(merged, limit))

    def last_position(self, categories: list[str]) -> int | None:
        """None: Message DB's public interface has no cheap maximum over categories."""
        return None


class MessageDbSession(TransactionSession):
    """One Message DB transaction; `append_events` writes, `commit` makes the writes visible."""

    def append_events(self, records: list[dict[str, Any]]) -> None:
        """Write each record now; an aggregate's events expect the stream's current version."""
        versions: dict[str, int] = {}
        for record in records:
            expected = None
            if record["metadata"].get("sequence") is not None:  # raised by an aggregate
                stream = record["stream"]
                if stream not in versions:
                    versions[stream] = self.stream_version(stream)
                expected = versions[stream]
            position = self.write_message(record, expected)
            if expected is not None:
                versions[record["stream"]] = position

    def stream_version(self, stream: str) -> int:
        """The position of the stream's last message as committed now (-1 when empty)."""
        row = _run(self.conn, "SELECT stream_version(:stream)", {"stream": stream}).first()
        assert row is not None  # a SELECT of a function call returns one row
        return -1 if row[0] is None else row[0]

    def write_message(self, record: dict[str, Any], expected_version: int | None = None) -> int:
        """`write_message` one record; returns its stream position.

        Raises ExpectedVersionError when the stream is not at `expected_version`.
        """
        params = {
            "id": record["message_id"],
            "stream": record["stream"],
            "type": record["type"],
            "data": json.dumps(record["data"]),
            "metadata": json.dumps(record["metadata"]),
            "expected": expected_version,
        }
        query = (
            "SELECT write_message(:id, :stream, :type, CAST(:data AS jsonb), "
            "CAST(:metadata AS jsonb), :expected)"
        )
        return _run(self.conn, query, params).scalar_one()


def _run(conn: sa.Connection, query: str, params: dict[str, Any]) -> sa.CursorResult:
    """Run a Message DB function, translating its errors into ours."""
    try:
        return conn.execute(sa.text(query), params)
    except DBAPIError as exc:
        detail = str(getattr(exc.orig, "pgerror", None) or exc.orig).strip().splitlines()[0]
        if _WRONG_VERSION in detail:
            raise ExpectedVersionError(f"Message DB: {detail.removeprefix('ERROR:').strip()}") from None
        raise MessageDbError(f"Message DB: {detail}") from exc


def _record(row: Any) -> dict[str, Any]:
    """A Message DB message as the record dict every event store returns."""
    metadata = json.loads(row.metadata) if row.metadata else {}
    written = metadata.get("time")  # the envelope's time; Message DB's own is the write time
    return {
        "global_position": row.global_position,
        "message_id": row.id,
        "stream": row.stream_name,
        "category": category_of(row.stream_name),
        "position": row.position,
        "type": row.type,
        "data": json.loads(row.data) if row.data else {},
        "metadata": metadata,
        "time": datetime.fromisoformat(written) if written else row.time.replace(tzinfo=UTC),
    }
