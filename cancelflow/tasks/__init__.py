"""Celery tasks: open a session, load by id, make one service call, let the base classify errors."""
