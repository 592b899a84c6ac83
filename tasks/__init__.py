"""Handlers as Celery tasks: routing, retries, dead-letter queue, idempotency, subscriptions."""
