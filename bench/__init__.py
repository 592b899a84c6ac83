"""Benchmarks: Tidings against bare Celery and a naive Celery + outbox pipeline, in one run."""
