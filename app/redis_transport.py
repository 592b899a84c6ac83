"""kombu's Redis transport, made to survive what it pops.

kombu's Redis channel pops a list item (BRPOP in the worker, RPOP for `basic_get`) and decodes
it as a kombu message in the same step; an item that is not one (`LPUSH <queue> garbage`, a
JSON value that is not a message, a body whose encoding is broken) raises out of the event
loop and takes the worker down (kombu 5.7 `Channel._brpop_read` -> `loads`). The item is
already off the list by then, so it is gone as well.

This channel checks every item it pops before handing it on. An item that is not a kombu
message goes to the dead-letter queue of its queue (`<queue>.dlq`), written on the same
connection, as text with the reason, and consumption goes on. An item popped from a DLQ itself
is not dead-lettered again: it is handed on as a DLQ entry that says what it is, so that
`tidings dlq list` shows it (and the entry is written back in that form).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kombu import transport as kombu_transport
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str

from tidings.tasks.dlq import entry_for
from tidings.tasks.naming import DLQ_SUFFIX, dlq_name

log = logging.getLogger("tidings.transport")

Empty = kombu_redis.Empty


class NotAMessage(ValueError):
    """A list item that is not a kombu message."""


class Channel(kombu_redis.Channel):
    """A Redis channel whose pops never raise on what they pop (see the module docstring)."""

    def _brpop_read(self, **options: Any) -> bool:
        # kombu 5.7's `_brpop_read`, with the decode replaced by `_accepted`: the reply is read
        # and routed the same way, and the connection bookkeeping in `finally` is kombu's.
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # the next poll reconnects
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payload = self._accepted(item, dest)
            if payload is not None:
                self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu's own reset value
            flush = getattr(self, "_flush_brpop_reauth", None)  # kombu >= 5.7
            if flush is not None:
                flush()

    def _get(self, queue: str, timeout: Any = None) -> dict[str, Any]:
        # `basic_get`: the next item that is a message; the others go to the DLQ on the way.
        while True:
            payload = self._accepted(self._get_raw(queue), queue)
            if payload is not None:
                return payload

    def _get_raw(self, queue: str) -> bytes:
        """kombu's `_get` without the decode: the next raw item of `queue`, or Empty."""
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    return item
            self._maybe_update_queues_expire(client, queue)
            raise Empty()

    # ---- checking what was popped -----------------------------------------------------------
    def _accepted(self, item: bytes | str, queue: str) -> dict[str, Any] | None:
        """The kombu message in `item`; or None once a non-message is dead-lettered (from a
        DLQ: the DLQ entry that describes it)."""
        try:
            return self._message_in(item)
        except Exception as exc:  # noqa: BLE001 - anything the decode raises makes it poison
            reason = exc
        if queue.endswith(DLQ_SUFFIX):
            return self._as_message(self._poison_entry(item, queue.removesuffix(DLQ_SUFFIX), reason), queue)
        try:
            entry = self._poison_entry(item, queue, reason)
            self._put(dlq_name(queue), self._as_message(entry, dlq_name(queue)))
        except Exception:  # noqa: BLE001 - never take the worker down; the item is in the log
            log.exception("%s: could not dead-letter an item that is not a message: %r", queue, item)
            return None
        log.error(
            "%s: an item that is not a message moved to %s: %s: %s",
            queue,
            dlq_name(queue),
            entry["error_type"],
            entry["error_message"],
        )
        return None

    def _message_in(self, item: bytes | str) -> dict[str, Any]:
        """Decode `item` as kombu does, and check what kombu's Message needs of it."""
        payload = json.loads(bytes_to_str(item))
        if not isinstance(payload, dict):
            raise NotAMessage(f"a kombu message is a JSON object, got {type(payload).__name__}")
        properties = payload.get("properties")
        if not isinstance(properties, dict) or "delivery_tag" not in properties:
            raise NotAMessage("a kombu message has 'properties' with a 'delivery_tag'")
        if not isinstance(properties.get("delivery_info", {}), dict):
            raise NotAMessage("'properties.delivery_info' is not an object")
        if payload.get("body"):
            self.decode_body(payload["body"], properties.get("body_encoding"))  # broken base64
        return payload

    @staticmethod
    def _poison_entry(item: bytes | str, queue: str, reason: Exception) -> dict[str, Any]:
        return entry_for(
            queue=queue,
            task=None,
            body=None,
            error=f"not a message (raw list item): {type(reason).__name__}: {reason}",
            error_type="NotAMessage",
            attempts=1,
            raw_body=item,
        )

    def _as_message(self, entry: dict[str, Any], queue: str) -> dict[str, Any]:
        """`entry` as a kombu message for `queue` (what `basic_publish` would put there)."""
        message = self.prepare_message(
            json.dumps(entry), content_type="application/json", content_encoding="utf-8"
        )
        self._inplace_augment_message(message, "", queue)
        return message


class Transport(kombu_redis.Transport):
    Channel = Channel


def register() -> None:
    """Make `redis://` and `rediss://` URLs use this transport in this process, also where the
    URL comes from Celery's own `--broker`/`BROKER_URL`, which bypass the app's config."""
    for alias in ("redis", "rediss"):
        kombu_transport.TRANSPORT_ALIASES[alias] = "tidings.app.redis_transport:Transport"
