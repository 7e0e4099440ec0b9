"""Alembic environment: the URL comes from settings, the target metadata from the models."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from cancelflow.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from cancelflow.config import get_settings
    from cancelflow.db import normalise_url

    return normalise_url(get_settings().require_database_url())


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            # Never queue behind a long transaction on a live table: fail fast and retry the deploy.
            connection.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
