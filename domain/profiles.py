"""The built-in subscription defaults and profiles (the reference's values), as data."""

from __future__ import annotations

from typing import Any

BUILT_IN: dict[str, Any] = {  # the reference's effective defaults for a stream subscription
    "subscription_type": "stream",
    "messages_per_tick": 100,
    "blocking_timeout_ms": 100,
    "max_retries": 3,
    "retry_delay_seconds": 1,
    "retry_backoff": False,
    "retry_backoff_max": 10,  # below the Redis visibility timeout minus the handler timeout
    "retry_jitter": False,
    "enable_dlq": True,
    "position_update_interval": 10,
    "batch_delivery": False,  # stream: pack up to messages_per_tick messages into one task
    # tasks/breaker.py: this many failures in a row open the handler's breaker (its lane stops
    # consuming its queue) for `circuit_breaker_reset_seconds`, then one probe message runs.
    # 0: no breaker (the default; the reference's value is 10): a handler that fails every
    # message because of its own bug then dead-letters them instead of holding them forever.
    "circuit_breaker_threshold": 0,
    "circuit_breaker_reset_seconds": 60,
}

PROFILES: dict[str, dict[str, Any]] = {
    "production": {
        "subscription_type": "stream",
        "messages_per_tick": 100,
        "blocking_timeout_ms": 5000,
        "max_retries": 3,
        "retry_delay_seconds": 1,
        "enable_dlq": True,
        "position_update_interval": 10,
    },
    "fast": {
        "subscription_type": "stream",
        "messages_per_tick": 10,
        "blocking_timeout_ms": 100,
        "max_retries": 2,
        "retry_delay_seconds": 0,
        "enable_dlq": True,
        "position_update_interval": 5,
    },
    "batch": {
        "subscription_type": "stream",
        "messages_per_tick": 500,
        "blocking_timeout_ms": 10000,
        "max_retries": 5,
        "retry_delay_seconds": 2,
        "enable_dlq": True,
        "position_update_interval": 50,
        "batch_delivery": True,
    },
    "debug": {
        "subscription_type": "stream",
        "messages_per_tick": 1,
        "blocking_timeout_ms": 1000,
        "max_retries": 1,
        "retry_delay_seconds": 0,
        "enable_dlq": False,
        "position_update_interval": 1,
    },
    "projection": {
        "subscription_type": "event_store",
        "messages_per_tick": 100,
        "max_retries": 3,
        "retry_delay_seconds": 1,
        "enable_dlq": False,
        "position_update_interval": 10,
    },
}
