"""kombu's SQLAlchemy transport, made fit for the embedded default (SQLite, several processes).

kombu hands every transport option to `create_engine`, so the virtual-transport options we
rely on (`polling_interval`, ...) would break it; and SQLite needs a busy timeout when the
API and the workers share the broker file.
"""

from __future__ import annotations

from typing import Any

from kombu import transport as kombu_transport
from kombu.transport import sqlalchemy as kombu_sqla
from sqlalchemy import create_engine
from sqlalchemy.exc import IntegrityError, OperationalError

_NOT_FOR_THE_ENGINE = {
    "queue_tablename",
    "message_tablename",
    "callback",
    "errback",
    "max_retries",
    "interval_start",
    "interval_step",
    "interval_max",
    "retry_errors",
    "polling_interval",
    "visibility_timeout",
    "unacked_restore_interval",
    "unacked_restore_throttle",
    "global_keyprefix",
}


class Channel(kombu_sqla.Channel):
    # Several processes (API, worker, beat) start on one fresh broker file at once: creating
    # kombu's tables or a queue row can race. The loser retries once and finds them there.
    def _open(self) -> Any:
        try:
            return super()._open()
        except OperationalError as exc:
            if "already exists" not in str(exc):
                raise
            self._engines.pop(self.connection.client.hostname, None)
            return super()._open()

    def _get_or_create(self, queue: str) -> Any:
        try:
            return super()._get_or_create(queue)
        except IntegrityError:
            self.session.rollback()
            return super()._get_or_create(queue)

    def _engine_from_config(self) -> Any:
        conninfo = self.connection.client
        options = {k: v for k, v in conninfo.transport_options.items() if k not in _NOT_FOR_THE_ENGINE}
        if conninfo.hostname.startswith("sqlite"):
            options.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
        return create_engine(conninfo.hostname, **options)


class Transport(kombu_sqla.Transport):
    Channel = Channel


def register() -> None:
    """Make `sqla+…` and `sqlalchemy+…` URLs use this transport in this process — also where
    the URL comes from Celery's own `--broker`/`BROKER_URL`, which bypass the app's config."""
    for alias in ("sqla", "sqlalchemy"):
        kombu_transport.TRANSPORT_ALIASES[alias] = "tidings.app.sqla_transport:Transport"
