"""The composition root: the Celery app factory, the `tidings` command line, health and admin."""
