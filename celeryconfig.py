"""Celery defaults for Tidings; every value can be overridden from the environment."""
