"""Flower as `make run` starts it: on loopback, with its password out of every process's command line.

The attack: Flower listened on every interface with basic auth and no lockout, and its password was in
`ps` output (`--basic_auth=user:password`) for every local user. The test starts the real Flower process
from the supervisor's own process table and looks at it the way an attacker on the host would.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import psutil
import pytest

from cancelflow.cli import run as run_mod
from cancelflow.config.settings import Settings
from tests.conftest import BROKER_URL, DATABASE_URL
from tests.harness import child_spec, free_port, wait_for

pytestmark = pytest.mark.worker


def _listening(pid: int, port: int) -> set[str]:
    addresses: set[str] = set()
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for conn in proc.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
                addresses.add(conn.laddr.ip)
    return addresses


def test_flower_listens_on_loopback_and_its_password_is_not_on_any_command_line(tmp_path: Path) -> None:
    # Given Flower from the process table `make run` supervises, with a password of its own
    settings = Settings(flower_port=free_port(), flower_max_tasks=100)
    password = secrets.token_urlsafe(24)
    [spec] = [
        s
        for s in run_mod.child_specs(
            settings,
            data_dir=tmp_path,
            sandbox_config=tmp_path / "sandbox.json",
            flower_user="ops",
            flower_password=password,
        )
        if s.name == "flower"
    ]
    supervisor = run_mod.Supervisor(
        [spec],
        env=run_mod.child_env(DATABASE_URL, BROKER_URL, data_dir=tmp_path),
        log_dir=tmp_path / "logs",
        stop_timeout=10,
    )
    supervisor.start()
    try:
        [child] = supervisor.children
        port = settings.flower_port
        # When it is up
        addresses = wait_for(
            lambda: _listening(child.proc.pid, port), timeout=60, what=f"Flower listening on {port}"
        )
        # Then it listens on loopback only
        assert addresses == {"127.0.0.1"}
        # And no process of it shows the password where every local user can read it (`ps`)
        for proc in [
            psutil.Process(child.proc.pid),
            *psutil.Process(child.proc.pid).children(recursive=True),
        ]:
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            assert password.encode() not in cmdline
            assert b"basic_auth" not in cmdline
        # And its environment, which only its owner can read, is what carries the login
        assert Path(f"/proc/{child.proc.pid}/environ").stat().st_mode & 0o077 == 0
        # And the login still works, and is still required
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401
        assert httpx.get(f"{base}/api/workers", auth=("ops", "wrong"), timeout=10).status_code == 401
        assert httpx.get(f"{base}/api/workers", auth=("ops", password), timeout=10).status_code == 200
    finally:
        supervisor.stop()


def test_flower_address_is_a_setting(tmp_path: Path) -> None:
    settings = Settings(flower_address="10.1.2.3", flower_port=5999)
    spec = child_spec(settings, "flower", tmp_path)
    assert "--address=10.1.2.3" in spec.argv
    assert spec.env == {"FLOWER_BASIC_AUTH": "u:p"}
    assert not any("u:p" in arg or "basic_auth" in arg for arg in spec.argv)
