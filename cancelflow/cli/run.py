"""`cancelflow run` (what `make run` starts): one supervisor for the whole local stack.

It resolves the database and broker (configured, or the embedded PostgreSQL and Redis under data_dir),
migrates, loads the demo data and API tokens idempotently, then starts the API, the workers (the steps'
queues with intake; `bulk` alone; webhook deliveries; beat's sweeps), beat, Flower and the two sandbox
services as child processes, each in its own process group with its log under ``<data_dir>/logs``. If a child
dies it reports it and stops everything; Ctrl-C or SIGTERM stops the children (SIGTERM, then SIGKILL after
15 s) and then the embedded servers. Running it again reuses the credentials and the data.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, TypedDict, TypeGuard

from rich.console import Console

from cancelflow.config import get_settings
from cancelflow.config.embedded import EmbeddedServices, EmbeddedServicesError, resolve_urls
from cancelflow.config.stack import checkout_root, remove_state, write_state
from cancelflow.private_files import open_private, private_dir

if TYPE_CHECKING:
    from cancelflow.config.settings import Settings

CREDENTIALS_FILE: Final = "credentials.json"
SANDBOX_CONFIG_FILE: Final = "sandbox-fulfillment.json"
API_VERSION: Final = "2021-07"
STOP_TIMEOUT: Final = 15.0
HEALTH_TIMEOUT: Final = 60.0
DEMO_ORDERS: Final = 50


@dataclass(frozen=True)
class SandboxService:
    policy: str
    delay_seconds: float = 0.0


# The demo fulfillment services, one per way a warehouse answers a cancellation request.
SANDBOX_SERVICES: Final[Mapping[str, SandboxService]] = {
    "sandbox-accept": SandboxService("accept"),
    "sandbox-slow": SandboxService("accept_after", 5.0),
    "sandbox-reject": SandboxService("reject"),
}


class _StopSignalError(BaseException):
    """Raised from the SIGINT/SIGTERM handler to unwind whatever `run()` is doing (like KeyboardInterrupt)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --------------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------------


class ServiceCredentials(TypedDict):
    token: str
    secret: str


class Credentials(TypedDict):
    """What ``credentials.json`` always holds (it may hold more, e.g. ``storefront_broker_password``)."""

    staff_token: str
    storefront_token: str
    flower_password: str
    services: dict[str, ServiceCredentials]


_SECRETS: Final = ("staff_token", "storefront_token", "flower_password")
_SERVICE_SECRETS: Final = ("token", "secret")


def _new_secret() -> str:
    return secrets.token_urlsafe(32)


def _complete(creds: Mapping[str, object]) -> TypeGuard[Credentials]:
    """Every secret a `cancelflow run` stack uses is there, a string."""
    services = creds.get("services")
    return (
        all(isinstance(creds.get(key), str) for key in _SECRETS)
        and isinstance(services, dict)
        and all(
            isinstance(entry := services.get(handle), dict)
            and all(isinstance(entry.get(key), str) for key in _SERVICE_SECRETS)
            for handle in SANDBOX_SERVICES
        )
    )


def load_or_create_credentials(path: Path) -> Credentials:
    """Read ``credentials.json`` (mode 0600), filling in and saving whatever is missing.

    The first run creates every key; later runs reuse them, so the tokens a user copied keep working and
    nothing is created twice. A file from an older version gains only the keys it lacks.
    """
    creds: dict[str, Any] = {}
    if path.exists():
        creds = json.loads(path.read_text())
        if not isinstance(creds, dict):
            raise ValueError(f"{path}: expected a JSON object")
    changed = not path.exists()
    for key in _SECRETS:
        if not isinstance(creds.get(key), str) or not creds[key]:
            creds[key] = _new_secret()
            changed = True
    services = creds.setdefault("services", {})
    for handle in SANDBOX_SERVICES:
        entry = services.setdefault(handle, {})
        for key in _SERVICE_SECRETS:
            if not isinstance(entry.get(key), str) or not entry[key]:
                entry[key] = _new_secret()
                changed = True
    if changed:
        _write_private_json(path, creds)
    elif path.stat().st_mode & 0o077:
        path.chmod(0o600)
    if not _complete(creds):  # filled in above: only a concurrent writer could leave a gap
        raise ValueError(f"{path}: credentials missing")
    return creds


def _write_private_json(path: Path, data: Mapping[str, object]) -> None:
    """Write atomically, readable by the owner only from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def flower_password(settings: Settings, creds: Credentials) -> str:
    if settings.flower_password is not None:
        return settings.flower_password.get_secret_value()
    return str(creds["flower_password"])


STOREFRONT_BROKER_USER: Final = "storefront"


def storefront_broker_url(
    console: Console, settings: Settings, broker_url: str, creds_path: Path
) -> str | None:
    """Create (or refresh) the storefronts' broker user and return its URL; None, with a warning, if it cannot.

    Its password is kept in ``credentials.json`` (``storefront_broker_password``), so the URL stays the same
    from one run to the next.
    """
    from cancelflow.worker.storefront_access import BrokerAccessError, ensure_storefront_user

    creds = json.loads(creds_path.read_text())
    password = creds.get("storefront_broker_password")
    if not isinstance(password, str) or not password:
        password = creds["storefront_broker_password"] = _new_secret()
        _write_private_json(creds_path, creds)
    try:
        access = ensure_storefront_user(
            settings.model_copy(update={"broker_url": broker_url}), STOREFRONT_BROKER_USER, password
        )
    except BrokerAccessError as exc:
        console.print(f"[yellow]no storefront broker user:[/yellow] {exc}", highlight=False)
        return None
    return access.url


# --------------------------------------------------------------------------------------------------
# Demo data, tokens and the sandbox configuration
# --------------------------------------------------------------------------------------------------


def _connect_host(host: str) -> str:
    """Where a local client reaches a server bound to ``host`` (a wildcard bind is reachable on loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def api_url(settings: Settings) -> str:
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    host = _connect_host(settings.api_host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api_port}"


def callback_url(settings: Settings, handle: str) -> str:
    return f"http://127.0.0.1:{settings.sandbox_fulfillment_port}/{handle}"


def outbound_allow(settings: Settings) -> str:
    """`CANCELFLOW_OUTBOUND_ALLOW` for the children: the configured entries plus the sandbox fulfillment
    service, which listens on loopback where callback URLs may otherwise not point."""
    from cancelflow.config.allowlist import parse_allow_rule

    sandbox = parse_allow_rule(f"127.0.0.1:{settings.sandbox_fulfillment_port}")
    return ",".join(dict.fromkeys(str(rule) for rule in (*settings.outbound_allow, sandbox)))


def load_demo_and_tokens(
    database_url: str, creds: Credentials, settings: Settings, *, with_demo: bool = True
) -> dict[str, int]:
    """Upsert the demo data set and the tokens in ``creds``; safe to repeat (both are idempotent)."""
    from cancelflow.db import transaction
    from cancelflow.services.tokens import ensure_token

    counts: dict[str, int] = {}
    with transaction(database_url) as session:
        if with_demo:
            from cancelflow.config.allowlist import parse_allow_entries
            from cancelflow.integrations.outbound import OutboundPolicy
            from cancelflow.services import demo, importer

            # The sandbox is started with the secrets in creds: the stored services get them back, even
            # with requests in flight (without them, those requests could never be answered).
            services = demo.demo_services(
                session,
                SANDBOX_SERVICES,
                secret=lambda handle: str(creds["services"][handle]["secret"]),
                callback_url=lambda handle: callback_url(settings, handle),
                keep_stored=False,
            )
            payload = demo.build_demo_payload(services=services, orders=DEMO_ORDERS)
            policy = OutboundPolicy(parse_allow_entries(outbound_allow(settings)))
            counts = importer.import_payload(session, payload, outbound_policy=policy, replace_services=True)
            session.flush()
        ensure_token(session, name="cancelflow-run staff", kind="staff", key=creds["staff_token"])
        ensure_token(
            session, name="cancelflow-run storefront", kind="storefront", key=creds["storefront_token"]
        )
        if with_demo:
            # A fulfillment service's token needs its service, which only the demo data set creates.
            for handle in SANDBOX_SERVICES:
                ensure_token(
                    session,
                    name=f"cancelflow-run {handle}",
                    kind="fulfillment_service",
                    key=creds["services"][handle]["token"],
                    fulfillment_service_handle=handle,
                )
    return counts


def write_sandbox_config(path: Path, creds: Credentials, settings: Settings) -> Path:
    """The sandbox fulfillment service's configuration: where the shop is and how each service answers."""
    config = {
        "api_base_url": f"http://{_connect_host(settings.api_host)}:{settings.api_port}",
        "api_version": API_VERSION,
        "services": {
            handle: {
                "token": creds["services"][handle]["token"],
                "secret": creds["services"][handle]["secret"],
                "policy": spec.policy,
                "delay_seconds": spec.delay_seconds,
            }
            for handle, spec in SANDBOX_SERVICES.items()
        },
    }
    _write_private_json(path, config)
    return path


# --------------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------------


def api_worker_args(settings: Settings) -> list[str]:
    """uvicorn's `--workers` (`CANCELFLOW_API_WORKERS`, by default one per core up to four): one Python
    process serves at most one core, and the API is what a storefront burst waits on."""
    return ["--workers", str(settings.api_workers)] if settings.api_workers > 1 else []


def proxy_args(settings: Settings) -> list[str]:
    """uvicorn believes X-Forwarded-For/-Proto only from the configured proxies (by default it believes
    any local peer, and every client of a loopback-bound API is local): the client address is what login
    throttling counts."""
    if not settings.forwarded_allow_ips:
        return ["--no-proxy-headers"]
    return ["--proxy-headers", f"--forwarded-allow-ips={settings.forwarded_allow_ips}"]


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]
    # Added to this child's environment only (secrets go here: argv is readable by every local user).
    env: Mapping[str, str] = field(default_factory=dict)


def child_specs(
    settings: Settings,
    *,
    data_dir: Path,
    sandbox_config: Path,
    flower_user: str,
    flower_password: str,
    python: str = sys.executable,
) -> list[ChildSpec]:
    """The processes `make run` supervises, in start order."""
    celery = [python, "-m", "celery", "-A", "cancelflow.worker.app"]
    return [
        ChildSpec(
            "api",
            [
                python, "-m", "uvicorn", "--factory", "cancelflow.api.app:create_app",
                "--host", settings.api_host, "--port", str(settings.api_port), *proxy_args(settings),
                *api_worker_args(settings),
            ],
        ),
        ChildSpec(
            "worker",
            [
                *celery, "worker", "--loglevel", "INFO", "--concurrency", "2",
                "-Q", "default,route,money,intake", "-n", "worker1@%h",
            ],
        ),
        # Exports and bulk tagging in a pool of their own: a long export can never hold the processes
        # that refunds and routing need (DESIGN-NOTES 2026-11-30).
        ChildSpec(
            "worker-bulk",
            [
                *celery, "worker", "--loglevel", "INFO", "--concurrency", "1",
                "-Q", "bulk", "-n", "worker-bulk1@%h",
            ],
        ),
        # Storefronts' receivers answer at their own pace: their deliveries never hold the steps' pool.
        ChildSpec(
            "worker-webhooks",
            [*celery, "worker", "--loglevel", "INFO", "--concurrency", "2", "-Q", "webhooks", "-n", "webhooks@%h"],
        ),
        # Beat's sweeps on a pool of their own, so they run however deep any other queue is.
        ChildSpec(
            "worker-sweep",
            [*celery, "worker", "--loglevel", "INFO", "--concurrency", "1", "-Q", "sweep", "-n", "sweep@%h"],
        ),
        ChildSpec(
            "beat",
            [*celery, "beat", "--loglevel", "INFO", "-s", str(data_dir / "celerybeat-schedule")],
        ),
        ChildSpec(
            "flower",
            [
                *celery, "flower", f"--address={settings.flower_address}", f"--port={settings.flower_port}",
                f"--max_tasks={settings.flower_max_tasks}",
            ],
            # Flower reads FLOWER_<OPTION> from its environment, which only its owner can read.
            env={"FLOWER_BASIC_AUTH": f"{flower_user}:{flower_password}"},
        ),
        ChildSpec(
            "sandbox-fulfillment",
            [
                python, "-m", "cancelflow.sandbox.fulfillment", "--host", "127.0.0.1",
                "--port", str(settings.sandbox_fulfillment_port), "--config", str(sandbox_config),
            ],
        ),
        ChildSpec(
            "sandbox-gateway",
            [
                python, "-m", "cancelflow.sandbox.gateway", "--host", "127.0.0.1",
                "--port", str(settings.sandbox_gateway_port),
                "--state-file", str(data_dir / "gateway-state.jsonl"),
            ],
        ),
    ]  # fmt: skip


def child_env(
    database_url: str, broker_url: str, *, data_dir: Path, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "CANCELFLOW_DATABASE_URL": database_url,
            "CANCELFLOW_BROKER_URL": broker_url,
            # The children use the servers this process resolved; they never start their own.
            "CANCELFLOW_EMBEDDED": "0",
            "CANCELFLOW_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@dataclass
class Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Supervisor:
    """Start child processes in their own process groups and stop every one of them, whatever happens."""

    specs: Sequence[ChildSpec]
    env: Mapping[str, str]
    log_dir: Path
    stop_timeout: float = STOP_TIMEOUT
    children: list[Child] = field(default_factory=list)

    def start(self) -> None:
        private_dir(self.log_dir)
        for spec in self.specs:
            log = self.log_dir / f"{spec.name}.log"
            with open_private(log, "ab") as fh:  # logs show request data: the owner's alone
                fh.write(f"\n=== {datetime.now(UTC).isoformat()} starting {spec.name} ===\n".encode())
                fh.flush()
                proc = subprocess.Popen(
                    list(spec.argv),
                    env={**self.env, **spec.env},
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    # Own process group: Ctrl-C reaches only the supervisor, which then stops the
                    # children in order; killpg also reaches a child's own children (Celery's pool).
                    start_new_session=True,
                )
            self.children.append(Child(spec, proc, log))

    def dead(self) -> list[Child]:
        return [child for child in self.children if child.proc.poll() is not None]

    def stop(self) -> None:
        """SIGTERM every process group, wait up to ``stop_timeout``, SIGKILL what remains."""
        for child in self.children:
            _signal_group(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(max(0.0, deadline - time.monotonic()))
        # Leaders that ignored SIGTERM, and anything a leader left behind in its group.
        while time.monotonic() < deadline and any(_group_alive(c.proc.pid) for c in self.children):
            time.sleep(0.1)
        for child in self.children:
            if child.proc.poll() is None or _group_alive(child.proc.pid):
                _signal_group(child.proc.pid, signal.SIGKILL)
        for child in self.children:
            child.proc.wait()
        self.children.clear()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


# --------------------------------------------------------------------------------------------------
# Waiting, signals, the summary
# --------------------------------------------------------------------------------------------------


def wait_for_health(url: str, *, supervisor: Supervisor, timeout: float = HEALTH_TIMEOUT) -> bool:
    """Poll ``GET url`` until it answers 200; False on timeout. Raises if a child dies meanwhile."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dead := supervisor.dead():
            raise _ChildDiedError(dead)
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.25)
    return False


class _ChildDiedError(Exception):
    def __init__(self, children: list[Child]) -> None:
        super().__init__(", ".join(c.spec.name for c in children))
        self.children = children


@contextlib.contextmanager
def _signals_raise() -> Iterator[Callable[[], None]]:
    """SIGINT/SIGTERM raise `_StopSignalError`; the yielded callable makes further signals harmless."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def raise_stop(signum: int, frame: FrameType | None) -> None:
        raise _StopSignalError(signum)

    def ignore(signum: int, frame: FrameType | None) -> None:
        pass  # already stopping; a second Ctrl-C must not cut the shutdown short

    def shield() -> None:
        for sig in previous:
            signal.signal(sig, ignore)

    for sig in previous:
        signal.signal(sig, raise_stop)
    try:
        yield shield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


EXAMPLE_ITEMS: Final = 4  # one order item per printed command that creates a request


@dataclass(frozen=True)
class Example:
    """Ids the printed commands use, so each works as printed: distinct items still cancellable."""

    items: tuple[int, ...] = ()
    reason: int | None = None

    def item(self, n: int) -> str:
        return str(self.items[n]) if n < len(self.items) else "<order_item_id>"

    @property
    def reason_s(self) -> str:
        return str(self.reason) if self.reason is not None else "<reason_id>"


def _example_ids(database_url: str) -> Example:
    """Order items still cancellable (one per creating command) and a `cancel` reason."""
    try:
        from sqlalchemy import select

        from cancelflow.db import transaction
        from cancelflow.models import CancellationReason, OrderItem

        with transaction(database_url) as session:
            items = session.scalars(
                select(OrderItem.id)
                .where(OrderItem.requested_quantity < OrderItem.quantity)
                .order_by(OrderItem.id)
                .limit(EXAMPLE_ITEMS)
            ).all()
            reason = session.scalar(
                select(CancellationReason.id)
                .where(CancellationReason.cancellation_type == "cancel", CancellationReason.is_active)
                .order_by(CancellationReason.id)
                .limit(1)
            )
        return Example(tuple(int(i) for i in items), reason)
    except Exception:  # noqa: BLE001 -- only decorates the summary; placeholders are printed instead
        return Example()


def project_root() -> Path | None:
    """The source checkout this package runs from (where pyproject.toml is), or None for an installed one."""
    return checkout_root()


def venv_bin() -> Path:
    """Where `cancelflow` and the Python that has cancelflow installed are: the checkout's `.venv/bin`, else
    the directory of this interpreter."""
    root = project_root()
    if root is not None and (root / ".venv" / "bin" / "cancelflow").exists():
        return root / ".venv" / "bin"
    return Path(sys.executable).parent


def shown_path(path: Path, cwd: Path | None = None) -> str:
    """`path` as typed in a shell started in `cwd`: relative below it, else absolute."""
    cwd = Path.cwd() if cwd is None else cwd
    try:
        return str(path.relative_to(cwd))
    except ValueError:
        return str(path)


def command_prefix(data_dir: Path, cwd: Path | None = None) -> str:
    """What a printed command needs in front to find this stack: nothing when run from `cwd` with the
    default data dir, else `CANCELFLOW_DATA_DIR=…`."""
    cwd = Path.cwd() if cwd is None else cwd
    if data_dir.resolve() == (cwd / ".cancelflow").resolve():
        return ""
    return f"CANCELFLOW_DATA_DIR={shlex.quote(str(data_dir))} "


def print_summary(
    console: Console,
    settings: Settings,
    creds: Credentials,
    *,
    log_dir: Path,
    data_dir: Path,
    example: Example = Example(),
    cwd: Path | None = None,
    storefront_broker: str | None = None,
) -> None:
    """The URLs, credentials and commands to try.

    Every command runs as printed in a new shell in `cwd` (the directory `make run` was started in): no venv
    to activate and nothing to export, since the CLI finds this stack through its state file in `data_dir`.
    """
    base = api_url(settings)
    staff = creds["staff_token"]
    storefront = creds["storefront_token"]
    handle = next(iter(SANDBOX_SERVICES))
    flower_host = _connect_host(settings.flower_address)
    if ":" in flower_host:
        flower_host = f"[{flower_host}]"
    rows = [
        ("API", base),
        ("API docs", f"{base}/api/docs/"),
        ("Staff console", f"{base}/console/"),
        ("Flower", f"http://{flower_host}:{settings.flower_port}/"),
        ("Flower login", f"{settings.flower_user} / {flower_password(settings, creds)}"),
        ("Staff token", staff),
        ("Storefront token", storefront),
        *([("Storefront broker", storefront_broker)] if storefront_broker else []),
        (f"Fulfillment token ({handle})", creds["services"][handle]["token"]),
        ("Logs", str(log_dir)),
    ]
    width = max(len(label) for label, _ in rows)
    console.rule("[bold green]cancelflow is running[/bold green]")
    for label, value in rows:
        # soft_wrap: tokens are never cut or folded, so they can be copied from any terminal width.
        console.print(f"  [bold]{label:<{width}}[/bold]  {value}", soft_wrap=True, highlight=False)

    reason = example.reason_s

    def body(n: int) -> str:
        return f'{{"order_item": {example.item(n)}, "reason": {reason}, "cancellation_type": "cancel", "quantity": 1}}'

    def show(line: str) -> None:
        console.print(line, soft_wrap=True, highlight=False, markup=False)

    bin_dir = venv_bin()
    prefix = command_prefix(data_dir, cwd)
    cancelflow = prefix + shlex.quote(shown_path(bin_dir / "cancelflow", cwd))
    python = prefix + shlex.quote(shown_path(bin_dir / "python", cwd))
    where = Path.cwd() if cwd is None else cwd
    celery_kwargs = (
        f"client_request_id='try-{secrets.token_hex(4)}', order_item={example.item(3)}, quantity=1, "
        f"reason={reason}, cancellation_type='cancel'"
    )

    console.print("[bold]Try it[/bold]")
    show(f"  (each command runs as printed from {where} in any terminal; no venv to activate)")
    show(f"  curl -H 'Authorization: Token {staff}' {base}/api/v1/cancellation_requests/")
    show(
        f"  curl -X POST -H 'Authorization: Token {staff}' -H 'Content-Type: application/json' "
        f"-d '{body(0)}' {base}/api/v1/cancellation_requests/"
    )
    show("  As a storefront, over HTTP (its token acts for every channel):")
    show(
        f"    curl -X POST -H 'Authorization: Token {storefront}' -H 'Content-Type: application/json' "
        f"-d '{body(1)}' {base}/api/v1/cancellation_requests/"
    )
    show("  As a storefront, through the broker (the `cancellations.submit` message):")
    show(f"    {cancelflow} submit --order-item {example.item(2)} --reason {reason} --quantity 1")
    if storefront_broker:
        # A storefront's own Celery client on its restricted broker user, set up as the README shows.
        show(
            f'    {python} -c "from celery import Celery; from kombu import Exchange, Queue; '
            f"app = Celery(broker='{storefront_broker}'); "
            "app.conf.task_queues = [Queue('intake', Exchange('intake', type='topic'), routing_key='intake', "
            "no_declare=True)]; "
            f"app.send_task('cancellations.submit', kwargs=dict({celery_kwargs}), queue='intake')\""
        )
    else:
        show(
            f'    {python} -c "from cancelflow.worker.app import celery_app; '
            f"celery_app.send_task('cancellations.submit', kwargs=dict({celery_kwargs}))\""
        )
    show(f"  Then: {cancelflow} show ID  ·  {cancelflow} --help")
    show(
        f"  (staff console at {base}/console/: sign in with a staff user, made with "
        f"{cancelflow} users create NAME)"
    )
    console.print("[dim]Ctrl-C stops everything.[/dim]")


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


SpecsFactory = Callable[..., list[ChildSpec]]


def run(
    *,
    with_demo: bool = True,
    console: Console | None = None,
    specs_factory: SpecsFactory | None = None,
) -> int:
    """Start the whole local stack and supervise it until Ctrl-C, SIGTERM or a child's death.

    Returns the exit code: 0 after a requested stop, 1 when something failed or died.
    ``specs_factory`` (same signature as `child_specs`) replaces the process table, for tests.
    """
    console = console or Console()
    settings = get_settings()
    data_dir = settings.data_dir.expanduser().resolve()
    started = _Started()
    rc = 0
    with _signals_raise() as shield:
        try:
            rc = _run(
                console,
                settings,
                data_dir,
                with_demo=with_demo,
                started=started,
                specs_factory=specs_factory or child_specs,
            )
        except _StopSignalError as stop:
            console.print(f"\n[yellow]{stop} received, stopping…[/yellow]")
            rc = 0
        finally:
            shield()
            started.stop(console)
    return rc


@dataclass
class _Started:
    """What `_run` has started so far, for `run` to stop whatever happens."""

    supervisor: Supervisor | None = None
    services: EmbeddedServices | None = None
    state_dir: Path | None = None

    def stop(self, console: Console) -> None:
        if self.state_dir is not None:
            remove_state(self.state_dir)
        try:
            if self.supervisor is not None and self.supervisor.children:
                console.print("stopping the children…")
                self.supervisor.stop()
        finally:
            if self.services is not None:
                console.print("stopping the embedded PostgreSQL and Redis…")
                self.services.stop()


def _run(
    console: Console,
    settings: Settings,
    data_dir: Path,
    *,
    with_demo: bool,
    started: _Started,
    specs_factory: SpecsFactory,
) -> int:
    from cancelflow.db import get_engine, migrate

    log_dir = data_dir / "logs"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        database_url, broker_url, services = resolve_urls(settings)
    except EmbeddedServicesError as exc:
        console.print(f"[red]cannot start the embedded servers:[/red] {exc}")
        return 1
    started.services = services
    if services is None:
        _line(
            console,
            "Using the configured PostgreSQL and broker (CANCELFLOW_DATABASE_URL / CANCELFLOW_BROKER_URL).",
        )
    else:
        _line(console, f"Using the embedded servers under {data_dir}:")
    _line(console, f"  database: {_safe_url(database_url)}")
    _line(console, f"  broker:   {_safe_url(broker_url)}")

    console.print("Migrating…")
    migrate(database_url)

    creds = load_or_create_credentials(data_dir / CREDENTIALS_FILE)
    counts = load_demo_and_tokens(database_url, creds, settings, with_demo=with_demo)
    if with_demo:
        _line(console, f"Demo data loaded: {counts}")
    sandbox_config = write_sandbox_config(data_dir / SANDBOX_CONFIG_FILE, creds, settings)
    storefront_broker = storefront_broker_url(console, settings, broker_url, data_dir / CREDENTIALS_FILE)

    supervisor = Supervisor(
        specs_factory(
            settings,
            data_dir=data_dir,
            sandbox_config=sandbox_config,
            flower_user=settings.flower_user,
            flower_password=flower_password(settings, creds),
        ),
        env={
            # The API's links (`next`, job URLs) point where this run serves it, whatever Host a client
            # sends; set for the children only, never in this process's own environment.
            "CANCELFLOW_PUBLIC_BASE_URL": api_url(settings),
            **child_env(database_url, broker_url, data_dir=data_dir),
            "CANCELFLOW_OUTBOUND_ALLOW": outbound_allow(settings),
        },
        log_dir=log_dir,
    )
    started.supervisor = supervisor
    supervisor.start()
    console.print(f"Started {', '.join(c.spec.name for c in supervisor.children)}; waiting for the API…")

    health = f"http://{_connect_host(settings.api_host)}:{settings.api_port}/healthz"
    try:
        healthy = wait_for_health(health, supervisor=supervisor)
    except _ChildDiedError as died:
        _report_dead(console, died.children)
        return 1
    if not healthy:
        console.print(f"[red]the API did not answer {health} within {HEALTH_TIMEOUT:.0f}s[/red]")
        api = next(c for c in supervisor.children if c.spec.name == "api")
        console.print(tail(api.log), markup=False, highlight=False)
        return 1

    example = _example_ids(database_url)
    get_engine(database_url).dispose()  # the supervisor itself needs no connections from here on
    # Other terminals' commands find the stack through this file; `_Started.stop` removes it.
    started.state_dir = data_dir
    write_state(data_dir, database_url=database_url, broker_url=broker_url, api_url=api_url(settings))
    print_summary(
        console,
        settings,
        creds,
        log_dir=log_dir,
        data_dir=data_dir,
        example=example,
        storefront_broker=storefront_broker,
    )
    return supervise(console, supervisor, services)


def _line(console: Console, text: str) -> None:
    """One line as is: a long URL or path stays on its line (and copyable) at any terminal width."""
    console.print(text, soft_wrap=True, highlight=False, markup=False)


def _safe_url(url: str) -> str:
    """The URL without its password, for printing."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:**@{hostinfo}"))


def supervise(console: Console, supervisor: Supervisor, services: EmbeddedServices | None) -> int:
    """Block until a child dies (returns 1); signals unwind it from outside. An embedded server that
    dies is started again on the same files, and the children, which reconnect, keep running."""
    while True:
        if dead := supervisor.dead():
            _report_dead(console, dead)
            return 1
        if services is not None:
            for line in services.revive():
                console.print(f"[yellow]{line}[/yellow]", highlight=False)
        time.sleep(0.5)


def _report_dead(console: Console, dead: list[Child]) -> None:
    for child in dead:
        console.print(
            f"[red]{child.spec.name} exited with code {child.proc.returncode}[/red]; "
            f"last lines of {child.log}:"
        )
        console.print(tail(child.log), markup=False, highlight=False)
    console.print("[red]stopping everything[/red]")
