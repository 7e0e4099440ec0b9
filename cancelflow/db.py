"""Engine, sessions and migrations. The caller of a service owns the transaction."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from cancelflow.config import get_settings

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def normalise_url(url: str) -> str:
    """Accept the plain libpq form (postgresql://) and pin the driver we ship."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def unavailable(exc: BaseException) -> bool:
    """The database could not be reached (down, restarting, a dropped connection, an exhausted pool), as
    opposed to a statement it refused: the same unit of work can succeed once it is back."""
    import psycopg2
    from sqlalchemy.exc import DBAPIError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    if isinstance(exc, OperationalError | PoolTimeoutError | psycopg2.OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


@functools.cache
def get_engine(url: str | None = None) -> Engine:
    settings = get_settings()
    return create_engine(
        normalise_url(url or settings.require_database_url()),
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        connect_args={"application_name": "cancelflow"},
        # Statement errors quote the statement, not its values (IBANs, names): their text is logged and
        # stored on steps and jobs.
        hide_parameters=True,
    )


@functools.cache
def _session_factory(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


def new_session(url: str | None = None) -> Session:
    return _session_factory(url)()


@contextmanager
def transaction(url: str | None = None) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back (and drops queued sends) on error."""
    session = new_session(url)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def migrate(url: str | None = None, revision: str = "head") -> None:
    """Bring the schema to `revision` with Alembic (the only way the schema is made)."""
    from alembic import command

    command.upgrade(alembic_config(url or get_settings().require_database_url()), revision)
