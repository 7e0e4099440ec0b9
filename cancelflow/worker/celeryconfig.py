"""Loaded by Celery on first use of its configuration (not at import of the app): settings -> Celery."""

from cancelflow.config import get_settings
from cancelflow.worker.config import celery_config

globals().update(celery_config(get_settings()))
