"""Real processes for workflow tests: Celery worker(s) and beat, the API, the sandbox services.

Nothing here is eager or in-process: every hop crosses the broker, as in production.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

T = TypeVar("T")
PYTHON = sys.executable


def clean_workdir(name: str) -> Path:
    """An empty `test-output/<name>/` for a stack's files, left after the run for whoever debugs a failure."""
    from tests.conftest import OUTPUT_DIR

    workdir = OUTPUT_DIR / name
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    return workdir


@contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    """Start every process of `stack`, and stop them all when the block ends, however it ends."""
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@contextmanager
def serving(app: Any, **config: Any) -> Iterator[str]:
    """`app` served by uvicorn on a free loopback port, in a thread of this process: its `host:port`.

    For what the in-process TestClient cannot show: real sockets, real concurrency, raw HTTP.
    """
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=30, interval=0.05, what="uvicorn started")
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def repeatable_examples(max_examples: int) -> Any:
    """Hypothesis settings for a test that pays for every example (a request, a process, a worker round trip):
    the same examples on every run, no time limit, and a failure reported as drawn (shrinking would cost
    more of them)."""
    from hypothesis import HealthCheck, Phase, settings

    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def printed_counts(output: str) -> dict[str, int]:
    """The `name │ number` rows of a table the CLI printed (import counts, for one)."""
    counts = {}
    for line in output.splitlines():
        parts = [p.strip() for p in line.strip("│┃ ").split("│")]
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def child_spec(
    settings: Any, name: str, data_dir: Path, *, flower_user: str = "u", flower_password: str = "p"
) -> Any:
    """The spec `cancelflow run` would start child `name` with (`cli.run.child_specs`), under `settings`,
    with this interpreter."""
    from cancelflow.cli import run as run_mod

    specs = run_mod.child_specs(
        settings,
        data_dir=data_dir,
        sandbox_config=data_dir / "sb.json",
        flower_user=flower_user,
        flower_password=flower_password,
        python=PYTHON,
    )
    return next(spec for spec in specs if spec.name == name)


# The sockets that keep the ports `free_port` handed out reserved, for as long as this process runs.
_RESERVED: list[socket.socket] = []


@atexit.register
def _release_reserved_ports() -> None:
    # Closed on purpose at exit, so the interpreter does not warn about each one as an unclosed socket.
    for reserved in _RESERVED:
        reserved.close()


def free_port() -> int:
    """A loopback port no other process is handed while this one runs, for a server this process starts.

    The port stays bound here (SO_REUSEADDR, never listening) after the call: a server that binds it with
    SO_REUSEADDR, as uvicorn, Tornado (Flower), http.server and redis-server all do, binds and listens, and
    a connection to it before then is refused as to a closed port; but no other socket is given it by the
    kernel's port search. Released at once, the port could be handed to the other xdist worker's next
    stack in the seconds before our server bound it; whichever server bound second then exited
    ("address already in use") while the first answered in its place, with the other worker's database
    behind it (every token unknown: 401 "Invalid token.").
    """
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    _RESERVED.append(s)
    return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 60.0, interval: float = 0.1, what: str = ""
) -> T:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate!r} (last: {last!r})")


def embedded_servers(data_dir: Path) -> list[psutil.Process]:
    """The embedded PostgreSQL and Redis still running on `data_dir` (pg_ctl daemonises the postmaster, so
    it is not below the stack's process); a pid file's pid counts only while it runs in that directory."""
    servers = []
    for pid_file in (data_dir / "postgres" / "postmaster.pid", data_dir / "redis" / "redis.pid"):
        try:
            server = psutil.Process(int(pid_file.read_text().split()[0]))
            if Path(server.cwd()).is_relative_to(data_dir.resolve()):
                servers.append(server)
        except (OSError, ValueError, IndexError, psutil.Error):
            continue  # not written, already removed, or a pid that is not the server any more
    return servers


def kill_tree(
    proc: subprocess.Popen[Any],
    *,
    left_behind: Callable[[], Iterable[psutil.Process]] = list,
    timeout: float = 10.0,
) -> None:
    """SIGKILL `proc`, every process below it and every process group they are in (but this test's), then
    `left_behind()` (what it started outside its tree: a daemonised postmaster) with the same; return when
    they are gone. A no-op for a stack that already stopped itself.

    For a teardown that must leave nothing running however the test failed: `make run`'s supervisor starts
    each child in a process group of its own, so killing its top process (or that one's group) orphans
    the worker, beat, API and the embedded servers. `proc` goes first, so it restarts nothing killed below.
    """
    found: list[psutil.Process] = []
    if proc.poll() is None:
        with suppress(psutil.NoSuchProcess):
            found = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
    proc.wait()
    for process in left_behind():
        with suppress(psutil.NoSuchProcess):
            found += [process, *process.children(recursive=True)]
    groups: set[int] = set()
    for process in found:
        with suppress(ProcessLookupError):
            groups.add(os.getpgid(process.pid))
        with suppress(psutil.NoSuchProcess):
            process.kill()
    for group in groups - {os.getpgrp()}:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)  # what a dead leader left in its group (Celery's pool)
    _, alive = psutil.wait_procs(found, timeout=timeout)
    assert not alive, f"still running after SIGKILL: {alive}"


@dataclass
class Proc:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def children(self) -> list[psutil.Process]:
        if not self.alive():
            return []
        assert self.popen is not None
        try:
            return psutil.Process(self.popen.pid).children(recursive=False)
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
            except ProcessLookupError:
                pass  # already gone
        self.popen = None


@dataclass
class Stack:
    """API + worker + beat + sandbox fulfillment service + sandbox gateway, on free ports."""

    workdir: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    concurrency: int = 2
    procs: dict[str, Proc] = field(default_factory=dict)
    # What the stack's worker consumes; a test may leave some queues to a worker of its own.
    queues: str = "default,route,money,bulk,intake,webhooks,sweep"
    # The Celery app the worker and beat run (a benchmark may wrap cancelflow's with other settings).
    app: str = "cancelflow.worker.app"

    def __post_init__(self) -> None:
        self.api_port = free_port()
        self.gateway_port = free_port()
        self.fulfillment_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.gateway_url = f"http://127.0.0.1:{self.gateway_port}"
        self.fulfillment_url = f"http://127.0.0.1:{self.fulfillment_port}"
        self.sandbox_config = self.workdir / "sandbox-fulfillment.json"
        self.services: dict[str, dict[str, Any]] = {}
        self._write_sandbox_config()
        allow = (os.environ.get("CANCELFLOW_OUTBOUND_ALLOW", ""), f"127.0.0.1:{self.fulfillment_port}")
        self.env = {
            **os.environ,
            "CANCELFLOW_PAYMENT_GATEWAY_URL": self.gateway_url,
            "CANCELFLOW_LOG_JSON": "true",
            "CANCELFLOW_API_PORT": str(self.api_port),
            # Callback URLs point at the sandbox fulfillment service, on loopback.
            "CANCELFLOW_OUTBOUND_ALLOW": ",".join(filter(None, allow)),
            **self.env_overrides,
        }

    # --- sandbox services ----------------------------------------------------------------------

    def add_service(
        self,
        handle: str,
        *,
        token: str,
        secret: str,
        policy: str = "accept",
        delay_seconds: float = 0,
        fail_first: int = 0,
        message: str | None = None,
    ) -> str:
        """Register a sandbox policy for a service; returns its callback URL."""
        self.services[handle] = {
            "token": token,
            "secret": secret,
            "policy": policy,
            "delay_seconds": delay_seconds,
            "fail_first": fail_first,
        }
        if message:
            self.services[handle]["message"] = message
        self._write_sandbox_config()
        return f"{self.fulfillment_url}/{handle}"

    def _write_sandbox_config(self) -> None:
        tmp = self.sandbox_config.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "api_base_url": getattr(self, "api_url", ""),
                    "api_version": "2021-07",
                    "services": self.services,
                }
            )
        )
        tmp.replace(self.sandbox_config)

    def gateway(self, path: str, **kwargs: Any) -> Any:
        method = "POST" if "json" in kwargs else "GET"
        response = httpx.request(method, f"{self.gateway_url}{path}", timeout=10, **kwargs)
        response.raise_for_status()
        return response.json()

    # --- processes -----------------------------------------------------------------------------

    def _proc(self, name: str, argv: list[str]) -> Proc:
        proc = Proc(name, argv, self.workdir / "logs" / f"{name}.log", self.env)
        self.procs[name] = proc
        return proc

    def start(self) -> Stack:
        try:
            return self._start()
        except BaseException:
            self.stop()  # never leave half a stack running
            raise

    def _start(self) -> Stack:
        self._proc(
            "gateway",
            [
                PYTHON,
                "-m",
                "cancelflow.sandbox.gateway",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.gateway_port),
                "--state-file",
                str(self.workdir / "gateway.jsonl"),
            ],
        ).start()
        self._proc(
            "fulfillment",
            [
                PYTHON,
                "-m",
                "cancelflow.sandbox.fulfillment",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.fulfillment_port),
                "--config",
                str(self.sandbox_config),
            ],
        ).start()
        self._proc(
            "api",
            [
                PYTHON,
                "-m",
                "uvicorn",
                "--factory",
                "cancelflow.api.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
                "--log-level",
                "warning",
            ],
        ).start()
        self.start_worker()
        self._proc(
            "beat",
            [
                PYTHON,
                "-m",
                "celery",
                "-A",
                self.app,
                "beat",
                "--loglevel",
                "INFO",
                "-s",
                str(self.workdir / "celerybeat-schedule"),
            ],
        ).start()
        for url in (
            f"{self.gateway_url}/healthz",
            f"{self.fulfillment_url}/healthz",
            f"{self.api_url}/healthz",
        ):
            wait_for(lambda u=url: _ok(u), timeout=60, what=url)  # type: ignore[misc]
        return self

    def start_worker(
        self, name: str = "worker", concurrency: int | None = None, queues: str | None = None
    ) -> Proc:
        before = len(self.procs[name].log_text()) if name in self.procs else 0
        proc = self._proc(
            name,
            [
                PYTHON,
                "-m",
                "celery",
                "-A",
                self.app,
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(concurrency or self.concurrency),
                "-Q",
                queues or self.queues,
                "-n",
                f"{name}-{os.getpid()}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
        )
        proc.start()
        wait_for(lambda: "ready." in proc.log_text()[before:], timeout=60, what=f"{name} ready")
        return proc

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"===== {p.name}\n{p.log_text()[-4000:]}" for p in self.procs.values())


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
