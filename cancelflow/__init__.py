"""cancelflow: order-cancellation workflows on Celery, PostgreSQL and Redis."""

__version__ = "0.1.0"
