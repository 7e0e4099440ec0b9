"""Engine, sessions and migrations. The caller of a service owns the transaction."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event
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


def closed_by_server(dbapi_connection: Any, connection_record: Any, connection_proxy: Any) -> None:
    """Before a pooled connection is handed out: refuse one the server has closed, as `pool_pre_ping` does,
    without its `SELECT 1` round trip. An idle connection receives nothing unless the server ends it (a
    restart, a fast shutdown, a terminated backend, a postmaster that died: each sends its FATAL message or
    closes the socket), so a socket with something to read, or at its end, is a dead connection; the pool
    then opens a new one (and `services.recovery` reads the server's start time on it). A connection that
    dies after this check fails its statement, as it could after a ping."""
    import select

    from sqlalchemy.exc import DisconnectionError

    if dbapi_connection.closed:
        raise DisconnectionError("the connection is closed")
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
    if poller.poll(0):  # POLLERR and POLLHUP are always reported
        raise DisconnectionError("the database server closed the connection")


@functools.cache
def get_engine(url: str | None = None) -> Engine:
    settings = get_settings()
    engine = create_engine(
        normalise_url(url or settings.require_database_url()),
        # Sized per process (README "Configuration"): connections beyond pool_size are closed when given
        # back, so a process whose concurrency exceeds it opens and closes a connection per request.
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        # The most recently used connection first: under light load the same few stay warm.
        pool_use_lifo=True,
        connect_args={"application_name": "cancelflow"},
        # Statement errors quote the statement, not its values (IBANs, names): their text is logged and
        # stored on steps and jobs.
        hide_parameters=True,
    )
    event.listen(engine.pool, "checkout", closed_by_server)
    return engine


@functools.cache
def _session_factory(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


def new_session(url: str | None = None) -> Session:
    return _session_factory(url)()


class OneConnectionSession(Session):
    """A session that takes one pooled connection at its first statement and keeps it until it is closed,
    across its commits: a unit of work that commits more than once (an idempotency key claimed, then the
    work) checks out and pings a connection once."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(expire_on_commit=False)
        self._engine = engine
        self._pinned: Connection | None = None

    def get_bind(self, *args: Any, **kwargs: Any) -> Engine | Connection:
        if self._pinned is None:
            self._pinned = self._engine.connect()
        return self._pinned

    def close(self) -> None:
        try:
            super().close()
        finally:
            pinned, self._pinned = self._pinned, None
            if pinned is not None:
                pinned.close()


@contextmanager
def transaction(url: str | None = None, *, one_connection: bool = False) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back (and drops queued sends) on error.

    `one_connection`: the session keeps the connection it takes across its own commits (see
    `OneConnectionSession`); otherwise each of its transactions checks one out from the pool.
    """
    session = OneConnectionSession(get_engine(url)) if one_connection else new_session(url)
    try:
        with _committed(session):
            yield session
    finally:
        session.close()


@contextmanager
def statements_alone(session: Session) -> Iterator[bool]:
    """`session`'s connection with each statement its own transaction, sent without BEGIN and COMMIT (the
    driver's autocommit, for the duration of the block): a read, or a write that is one statement, costs one
    round trip instead of three. Only where no transaction is open on the connection (a fresh session, or
    right after `unit_on`'s rollback); otherwise the statements simply join the open transaction. A string
    of several statements sent in one execute is one transaction of its own too (PostgreSQL's implicit
    transaction block), where `SET LOCAL` applies. Yields whether the statements run alone."""
    import psycopg2.extensions

    raw: Any = session.connection().connection.dbapi_connection
    alone = bool(
        raw is not None
        and not raw.autocommit
        and raw.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    )
    if alone:
        raw.autocommit = True  # a flag of the driver: nothing is sent to the server
    try:
        yield alone
    finally:
        if alone and not raw.closed:
            raw.autocommit = False


@contextmanager
def unit_on(session: Session) -> Iterator[Session]:
    """A transaction of its own on `session` (on its connection, with a `OneConnectionSession`): whatever
    the session had open is rolled back first; commits on success, rolls back on error."""
    session.rollback()
    with _committed(session):
        yield session


@contextmanager
def _committed(session: Session) -> Iterator[None]:
    """Commit when the block succeeds, roll back when anything ends it otherwise (an error, a cancellation,
    a generator closed early): one rule for every unit of work."""
    try:
        yield
        session.commit()
    except BaseException:
        session.rollback()
        raise


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
