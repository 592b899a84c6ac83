"""Structured logs: one JSON object per line, with the message, correlation id and handler of
the task that logged it. On with `TIDINGS_LOG_FORMAT=json` (workers, beat, `tidings server`).

    {"time": "2026-12-01T23:50:00.123+00:00", "level": "INFO", "logger": "tidings.tasks",
     "message": "...", "domain": "shop", "handler": "ManageInventory", "message_id": "...",
     "correlation_id": "...", "causation_id": "...", "trace_id": "..."}

Celery sets up the worker's logging itself; its `after_setup_logger` and
`after_setup_task_logger` signals give each of its handlers this formatter. A process Celery
does not set up (an API, a script) calls `configure()`.
"""

from __future__ import annotations

import json
import logging
import os
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, task_postrun, task_prerun

from tidings.domain.context import current_message
from tidings.domain.tracing import carrier_of

FORMAT_ENV = "TIDINGS_LOG_FORMAT"

# What the running handler task is about: set at task_prerun, cleared at task_postrun.
task_fields: ContextVar[dict[str, str] | None] = ContextVar("tidings_log_fields", default=None)


def json_wanted() -> bool:
    return os.environ.get(FORMAT_ENV, "").strip().lower() == "json"


class JsonFormatter(logging.Formatter):
    """A log record as one JSON line; never fails on a record (falls back to its repr)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(task_fields.get() or _message_fields(current_message.get()))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=repr)


def _message_fields(message: Any) -> dict[str, str]:
    """The ids of the message being handled in this context (sync handlers too)."""
    if message is None:
        return {}
    fields = {"message_id": str(message.id), "correlation_id": str(message.correlation_id)}
    if message.causation_id:
        fields["causation_id"] = str(message.causation_id)
    return fields


def _task_fields(domain: str, handler: str, envelope: Any) -> dict[str, str]:
    fields = {"domain": domain, "handler": handler}
    if isinstance(envelope, dict):
        for key in ("id", "correlation_id", "causation_id"):
            if envelope.get(key):
                fields["message_id" if key == "id" else key] = str(envelope[key])
        traceparent = carrier_of(envelope.get("metadata") or {}).get("traceparent", "")
        if traceparent.count("-") == 3:
            fields["trace_id"] = traceparent.split("-")[1]
    return fields


def use_json(logger: logging.Logger) -> None:
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())


def configure(level: int = logging.INFO) -> None:
    """JSON lines on stderr for a process that Celery does not set up."""
    logging.basicConfig(level=level)
    use_json(logging.getLogger())


def install(domain_name: str, handlers: dict[str, str], celery: Celery) -> None:
    """When `TIDINGS_LOG_FORMAT=json`: Celery's loggers get the JSON formatter, and this
    runtime's handler tasks put their ids on every line they log."""
    if not json_wanted():
        return

    def formatted(logger: logging.Logger | None = None, **_: Any) -> None:
        if logger is not None:
            use_json(logger)

    def started(sender: Any = None, args: Any = None, **_: Any) -> None:
        name = getattr(sender, "name", "")
        if name in handlers and getattr(sender, "app", None) is celery:
            task_fields.set(_task_fields(domain_name, handlers[name], args[0] if args else None))

    def finished(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "name", "") in handlers and getattr(sender, "app", None) is celery:
            task_fields.set(None)

    after_setup_logger.connect(formatted, weak=False)
    after_setup_task_logger.connect(formatted, weak=False)
    task_prerun.connect(started, weak=False)
    task_postrun.connect(finished, weak=False)
