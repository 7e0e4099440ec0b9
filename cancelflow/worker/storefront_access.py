"""The storefronts' broker user: it can publish to the intake exchange and do nothing else.

A storefront publishes `cancellations.submit` to the intake exchange (`config.INTAKE_QUEUE`), which routes to
the intake queue alone. Its broker user is made here, with the administrative broker URL of the settings:

- RabbitMQ (`amqp://`): a user without tags whose permissions on the broker's virtual host are configure
  nothing (`^$`), write the intake exchange only (`^intake$`), read nothing (`^$`). Publishing needs write on
  the exchange and nothing else; it cannot declare, bind, consume or purge. Made with `rabbitmqctl`
  (the password goes on its standard input, never on its command line).
- Redis (`redis://`, `redis+socket://`): an ACL user allowed PING, LPUSH on the key `intake` and SMEMBERS on
  `_kombu.binding.intake` (how kombu finds the queue a direct exchange routes to); on Redis 7 and later that
  key is read-only (`%R~`). No other command, key or channel.

The intake queue and its binding are declared first, so that a storefront's first message is routed. The
worker still checks what arrives on the intake queue (`intake_guard`): write access to the exchange is not
trust in what is written.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from urllib.parse import quote, unquote, urlsplit

from kombu import Connection, Queue

from cancelflow.config.settings import Settings
from cancelflow.worker.config import INTAKE_QUEUE, celery_config

if TYPE_CHECKING:
    import redis

DEFAULT_USER: Final = "storefront"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RABBITMQCTL_TIMEOUT: Final = 120.0


class BrokerAccessError(Exception):
    """The broker user could not be made (unsupported broker, refused command)."""


@dataclass(frozen=True)
class StorefrontAccess:
    username: str
    url: str  # the storefront's broker URL, with its password


def rabbitmq_permissions() -> tuple[str, str, str]:
    """(configure, write, read) regular expressions of the storefront user."""
    return "^$", f"^{re.escape(INTAKE_QUEUE)}$", "^$"


def redis_acl_rules(*, read_only_selectors: bool, select_db: bool) -> list[str]:
    binding = f"_kombu.binding.{INTAKE_QUEUE}"
    rules = ["resetkeys", "resetchannels", "-@all", "+ping", "+lpush", "+smembers", f"~{INTAKE_QUEUE}"]
    # kombu's LPUSH never touches the binding set; on Redis 7 the user cannot write it at all.
    rules.append(f"%R~{binding}" if read_only_selectors else f"~{binding}")
    if select_db:
        rules.append("+select")  # redis-py selects a non-zero database on connect
    return rules


def ensure_storefront_user(settings: Settings, username: str, password: str) -> StorefrontAccess:
    """Create or update the storefront broker user (same name: new password, same narrow rights)."""
    if not _NAME.match(username):
        raise BrokerAccessError(f"invalid broker user name {username!r}")
    url = settings.require_broker_url()
    try:
        declare_intake(settings)
    except Exception as exc:  # kombu and the drivers raise their own kinds; all mean "not set up"
        raise BrokerAccessError(f"could not declare the intake queue: {type(exc).__name__}: {exc}") from exc
    if url.startswith(("redis://", "redis+socket://")):
        _ensure_redis_user(url, username, password)
    elif url.startswith(("amqp://", "pyamqp://")):
        _ensure_rabbitmq_user(url, username, password)
    else:
        raise BrokerAccessError(
            f"no storefront broker user for this broker URL scheme: {urlsplit(url).scheme}"
        )
    return StorefrontAccess(username, with_credentials(url, username, password))


def declare_intake(settings: Settings) -> None:
    """Declare the intake exchange, queue and binding as the worker does (idempotent)."""
    config = celery_config(settings)
    queue: Queue = next(q for q in config["task_queues"] if q.name == INTAKE_QUEUE)
    with Connection(
        config["broker_url"], transport=config.get("broker_transport"), connect_timeout=10
    ) as conn:
        queue.bind(conn.default_channel).declare()


def _redis_client(url: str) -> redis.Redis:
    import redis

    if url.startswith("redis+socket://"):
        parts = urlsplit(url)
        return redis.Redis(
            unix_socket_path=unquote(parts.path),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )
    return redis.Redis.from_url(url)


def _ensure_redis_user(url: str, username: str, password: str) -> None:
    import redis

    client = _redis_client(url)
    try:
        version = str(client.info("server").get("redis_version", "0"))
        db = int(client.connection_pool.connection_kwargs.get("db") or 0)
        rules = redis_acl_rules(read_only_selectors=int(version.split(".")[0]) >= 7, select_db=db != 0)
        # `reset` first: an existing user keeps nothing of what it had, then gets exactly these rights.
        client.execute_command("ACL", "SETUSER", username, "reset", "on", "resetpass", f">{password}", *rules)
    except redis.RedisError as exc:
        raise BrokerAccessError(f"Redis refused to set up the ACL user {username!r}: {exc}") from exc
    finally:
        client.close()


def _rabbitmqctl() -> str:
    found = shutil.which("rabbitmqctl") or next(
        (p for p in ("/usr/sbin/rabbitmqctl", "/usr/lib/rabbitmq/bin/rabbitmqctl") if shutil.which(p)), None
    )
    if found is None:
        raise BrokerAccessError(
            "rabbitmqctl not found: run this on the RabbitMQ host, or create the user there"
        )
    return found


def _ctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [_rabbitmqctl(), "-q", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=RABBITMQCTL_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerAccessError(f"rabbitmqctl {args[0]}: {exc}") from exc


def _ensure_rabbitmq_user(url: str, username: str, password: str) -> None:
    with Connection(url) as conn:
        vhost = conn.virtual_host or "/"
    users = _ctl("list_users", "--no-table-headers")
    if users.returncode != 0:
        raise BrokerAccessError(
            f"rabbitmqctl list_users failed: {users.stderr.strip() or users.stdout.strip()}"
        )
    known = {line.split("\t", 1)[0] for line in users.stdout.splitlines() if line.strip()}
    steps: list[tuple[tuple[str, ...], str | None]] = [
        (("change_password", username) if username in known else ("add_user", username), f"{password}\n"),
        (("set_user_tags", username), None),
        (("set_permissions", "-p", vhost, username, *rabbitmq_permissions()), None),
    ]
    for args, stdin in steps:
        done = _ctl(*args, stdin=stdin)
        if done.returncode != 0:
            raise BrokerAccessError(
                f"rabbitmqctl {args[0]} failed: {done.stderr.strip() or done.stdout.strip()}"
            )


def with_credentials(url: str, username: str, password: str) -> str:
    """The broker URL with these credentials in place of any it had."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}@"
    if host:
        return parts._replace(netloc=userinfo + host).geturl()
    # A unix socket has no host; urlunsplit would drop the credentials with it.
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{userinfo}{parts.path}{query}"
