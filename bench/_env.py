"""Benchmark environment: a throw-away database and a private Redis db, like the test suite's."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

ADMIN_DB = os.environ.get("CANCELFLOW_BENCH_ADMIN_DB", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("CANCELFLOW_BENCH_REDIS", "redis://127.0.0.1:6379")
# `--broker amqp`: the local RabbitMQ, in a private vhost made (and deleted) through rabbitmqctl.
AMQP = os.environ.get("CANCELFLOW_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672")


def _admin(url: str, sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def _rabbitmqctl(*argv: str) -> None:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    subprocess.run([ctl, "-q", *argv], check=True, capture_output=True, timeout=60)


def template_exists(url: str, template: str) -> bool:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (template,))
            return cur.fetchone() is not None
    finally:
        conn.close()


def keep_as_template(url: str, template: str) -> None:
    """Copy the generated database `url` to `template` (PostgreSQL's file-level CREATE DATABASE … TEMPLATE),
    so a later run with the same data set starts in seconds instead of regenerating it."""
    from cancelflow.db import get_engine

    get_engine.cache_clear()  # the copy needs the source without connections
    base, _, query = url.partition("?")
    source = base.rsplit("/", 1)[1]
    admin = base.rsplit("/", 1)[0] + "/postgres" + (f"?{query}" if query else "")
    _admin(
        admin,
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{source}' "  # noqa: S608 - our own generated name
        "AND pid <> pg_backend_pid()",
    )
    _admin(admin, f'CREATE DATABASE "{template}" TEMPLATE "{source}"')


def _private_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    """A redis-server of this run's own on a free port, when the machine has one: two runs sharing a
    broker database consume each other's messages (and the first one's FLUSHDB empties the other's)."""
    binary = shutil.which("redis-server")
    if binary is None or os.environ.get("CANCELFLOW_BENCH_REDIS"):
        return None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=(workdir / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return proc, url
        time.sleep(0.05)
    proc.kill()
    return None


@contextmanager
def bench_environment(
    workdir: Path, broker_kind: str = "redis", template: str | None = None
) -> Iterator[str]:
    """Point CANCELFLOW_* at a fresh, migrated database; embedded servers when no local ones answer.

    With `broker_kind="amqp"` the broker is the local RabbitMQ (a private vhost) and Redis keeps only the
    counters (`CANCELFLOW_THROTTLE_URL`). With `template`, the database is a copy of that (kept) database
    when it exists."""
    from cancelflow.config.embedded import EmbeddedServices, local_services_reachable

    # A SIGTERM (a `kill` of the run, a CI timeout) unwinds like Ctrl-C, so the stack, the private Redis
    # and the database below are stopped and dropped instead of left running.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    name = f"cf_bench_{uuid.uuid4().hex[:8]}"
    embedded = None
    private = None
    if local_services_reachable(ADMIN_DB, f"{REDIS}/15"):
        admin, broker = ADMIN_DB, f"{REDIS}/15"
        private = _private_redis(workdir)
        if private is not None:
            broker = private[1]
    else:
        embedded = EmbeddedServices(workdir / "embedded")
        admin, broker = embedded.start()
    base, _, query = admin.partition("?")
    url = base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")
    vhost = None
    if broker_kind == "amqp":
        os.environ["CANCELFLOW_THROTTLE_URL"] = broker
        vhost = name
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, urlsplit(AMQP).username or "guest", ".*", ".*", ".*")
        broker = f"{AMQP}/{vhost}"
    os.environ.update(
        {
            "CANCELFLOW_DATABASE_URL": url,
            "CANCELFLOW_BROKER_URL": broker,
            "CANCELFLOW_EMBEDDED": "0",
            # The sandbox fulfillment service the callbacks point at listens on loopback.
            "CANCELFLOW_OUTBOUND_ALLOW": os.environ.get("CANCELFLOW_OUTBOUND_ALLOW") or "127.0.0.1",
            # Shopify's REST bucket (40 calls, 2/s per token) would cap the sandbox service's pulls and
            # answers at 2 a second: the benchmarks measure cancelflow, not that policy (set it to measure it).
            "CANCELFLOW_SHOPIFY_REST_BUCKET_SIZE": os.environ.get("CANCELFLOW_SHOPIFY_REST_BUCKET_SIZE")
            or "1000000",
        }
    )
    if template is not None and template_exists(admin, template):
        _admin(admin, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    else:
        _admin(admin, f'CREATE DATABASE "{name}"')
    try:
        import redis

        counters = os.environ.get("CANCELFLOW_THROTTLE_URL") or broker
        if counters.startswith("redis://"):
            redis.Redis.from_url(counters).flushdb()
        from cancelflow.db import migrate

        migrate(url)
        yield url
    finally:
        from cancelflow.db import get_engine

        get_engine.cache_clear()
        _admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if vhost is not None:
            _rabbitmqctl("delete_vhost", vhost)
        if private is not None:
            private[0].terminate()
            private[0].wait(timeout=10)
        if embedded is not None:
            embedded.stop()
