"""Celery defaults for Tidings (`tidings.celeryconfig`), the bottom layer: some values can be
adjusted from the environment (`TIDINGS_<NAME>`); the user's `celeryconfig`, the domain, its
`[celery]` table and the factory's overrides apply on top, and the guarantees below are
enforced on the result (see app/celery_settings.py).

Why these values:
- JSON only: a pickled broker message can run code on the worker.
- acks_late + reject/retry on worker lost: a task whose worker dies is delivered again,
  and 5.7's `task_retry_on_worker_lost` counts that against the handler's max_retries
  instead of looping forever. Handlers are idempotent through the inbox table.
- prefetch 1: a worker holds no more unstarted messages than it has processes, so a crash
  redelivers little and a slow handler does not hoard work.
- Redis visibility timeout: how long a delivered-but-unacknowledged message stays invisible
  before Redis hands it to another worker; it is what bounds recovery after a worker is
  SIGKILLed: VT + one restore sweep (`unacked_restore_interval`, 5 s; kombu 5.7's
  `unacked_restore_throttle` 1 makes every sweep scan, instead of ~100 s) = about 50 s.
  It must exceed the longest handler run plus the longest retry countdown (a retry is held
  unacknowledged in the worker until due), or a message is delivered twice. Hence the
  hard `task_time_limit` (the handler timeout, 30 s): 30 s + the longest countdown (5 s for
  transient retries, `retry_backoff_max` 10 s) < 45 s. Checked at start-up, see
  `tidings.app.factory.check_recovery_bound`.
"""

from __future__ import annotations

import os


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TIDINGS_{name}", default)


VISIBILITY_TIMEOUT = float(_env("VISIBILITY_TIMEOUT", "45"))
HANDLER_TIMEOUT = float(_env("HANDLER_TIMEOUT", "30"))
RESTORE_INTERVAL = float(_env("UNACKED_RESTORE_INTERVAL", "5"))

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"

task_acks_late = True
task_reject_on_worker_lost = True
task_retry_on_worker_lost = True
task_acks_on_failure = True  # the DLQ is written by Tidings on final failure, on every broker
task_acks_on_timeout = True
task_time_limit = HANDLER_TIMEOUT  # a handler killed at its limit is dead-lettered (TimeLimitExceeded)
worker_prefetch_multiplier = int(_env("PREFETCH_MULTIPLIER", "1"))
worker_cancel_long_running_tasks_on_connection_loss = True
worker_soft_shutdown_timeout = float(_env("SOFT_SHUTDOWN_TIMEOUT", "10"))
broker_connection_retry_on_startup = True
task_ignore_result = True
result_backend = None
task_create_missing_queues = True
worker_hijack_root_logger = False
worker_send_task_events = _env("TASK_EVENTS", "true") == "true"  # Flower's live view
task_send_sent_event = worker_send_task_events
broker_transport_options = {
    "visibility_timeout": VISIBILITY_TIMEOUT,
    "unacked_restore_interval": RESTORE_INTERVAL,
    "unacked_restore_throttle": 1,
    "polling_interval": float(_env("POLLING_INTERVAL", "0.1")),  # SQLAlchemy/virtual transports
}
visibility_timeout = VISIBILITY_TIMEOUT
beat_max_loop_interval = 5
timezone = "UTC"
enable_utc = True
