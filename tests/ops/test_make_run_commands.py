"""The commands `make run` prints work as printed, in a fresh shell with no venv activated and nothing exported.

`cancelflow run` starts for real (API, worker, beat, Flower, both sandboxes) from the project directory, on the
local PostgreSQL and Redis when the session uses them (else on its own embedded servers). Each command of its
"Try it" block is then run with `bash -c` exactly as printed, from the project directory, in an environment
without VIRTUAL_ENV, without any `.venv/bin` on PATH and without CANCELFLOW_* variables. The storefront token
it prints is used end to end, demo data is loaded into the running stack, and a request routed through the
sandbox fulfillment service still completes afterwards.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from cancelflow.cli import run as run_mod
from cancelflow.config.stack import STATE_FILE
from cancelflow.db import normalise_url
from cancelflow.models import (
    CancellationPlan,
    CancellationRequest,
    FulfillmentOrder,
    FulfillmentService,
    OrderItem,
    WorkflowStep,
)
from cancelflow.models.enums import FORequestStatus, PlanStatus, StepStatus
from tests import conftest
from tests.harness import embedded_servers, free_port, kill_tree, printed_counts, wait_for

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 240.0


@dataclass
class Stack:
    proc: subprocess.Popen[str]
    banner: list[str]
    data_dir: Path
    database_url: str | None

    def session(self) -> Session:
        url = self.database_url or json.loads((self.data_dir / STATE_FILE).read_text())["database_url"]
        return Session(create_engine(normalise_url(url), poolclass=NullPool))


def fresh_shell_env() -> dict[str, str]:
    """A new terminal: no venv, no CANCELFLOW_*. PYTHONPATH stays: in a worktree sharing another checkout's
    venv it is what makes `.venv/bin/cancelflow` import this checkout (a clone's own venv needs nothing)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANCELFLOW_") and k != "VIRTUAL_ENV"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return env


def sh(command: str, *, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env=fresh_shell_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("make-run") / "data"
    env = fresh_shell_env()
    database_url: str | None = None
    if conftest._EMBEDDED is None:  # the session runs on the local servers: so does this stack
        name = f"cf_mr_{uuid.uuid4().hex[:8]}"
        conftest._admin_execute(f'CREATE DATABASE "{name}"')
        base, _, query = conftest.ADMIN_URL.partition("?")
        database_url = base.rsplit("/", 1)[0] + f"/{name}" + (f"?{query}" if query else "")
        env["CANCELFLOW_DATABASE_URL"] = database_url
        env["CANCELFLOW_BROKER_URL"] = (
            f"{conftest.LOCAL_REDIS}/{conftest.SPARE_REDIS_DB}"  # not the session's db
        )
    gateway = free_port()
    env.update(
        {
            "CANCELFLOW_DATA_DIR": str(data_dir),
            "CANCELFLOW_API_PORT": str(free_port()),
            "CANCELFLOW_FLOWER_PORT": str(free_port()),
            "CANCELFLOW_SANDBOX_FULFILLMENT_PORT": str(free_port()),
            "CANCELFLOW_SANDBOX_GATEWAY_PORT": str(gateway),
            "CANCELFLOW_PAYMENT_GATEWAY_URL": f"http://127.0.0.1:{gateway}",
            "CANCELFLOW_LOG_JSON": "false",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "60",  # a narrow terminal: long URLs must stay on their lines
        }
    )
    proc = subprocess.Popen(
        [str(run_mod.venv_bin() / "cancelflow"), "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    banner: list[str] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            banner.append(line.rstrip("\n"))
            if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
                break
        assert banner, "cancelflow run printed nothing"
        assert "Ctrl-C stops everything" in banner[-1], "\n".join(banner)
        yield Stack(proc, banner, data_dir, database_url)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                kill_tree(proc, left_behind=lambda: embedded_servers(data_dir))
                proc.communicate()
        if database_url is not None:
            conftest._admin_execute(
                f'DROP DATABASE IF EXISTS "{database_url.rsplit("/", 1)[1]}" WITH (FORCE)'
            )


def printed_commands(banner: list[str]) -> list[str]:
    start = next(i for i, line in enumerate(banner) if line.strip() == "Try it")
    commands = []
    for line in banner[start + 1 :]:
        stripped = line.strip()
        if not stripped or stripped.endswith(":") or stripped.startswith(("(", "Then:", "Ctrl-C")):
            continue
        commands.append(stripped)
    return commands


def row(banner: list[str], label: str) -> str:
    found = next(line for line in banner if line.strip().startswith(label))
    return found.strip()[len(label) :].strip()


def curl_status(command: str) -> tuple[int, str]:
    """Run a printed curl as printed, plus options that make its HTTP status visible."""
    done = sh(f"{command} -sS -w '\\n%{{http_code}}'")
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def wait_completed(stack: Stack, request_id: int, timeout: float = 120.0) -> None:
    def state() -> str | None:
        with stack.session() as session:
            request = session.get_one(CancellationRequest, request_id)
            dead = session.scalars(
                select(WorkflowStep.last_error).where(
                    WorkflowStep.request_id == request_id, WorkflowStep.status == StepStatus.dead
                )
            ).first()
            assert dead is None, f"request {request_id}: a step died: {dead}"
            plan = session.scalars(
                select(CancellationPlan).where(CancellationPlan.request_id == request_id)
            ).first()
            assert plan is None or plan.status != PlanStatus.failed, plan.failure_reason
            return "completed" if request.status.value == "completed" else None

    wait_for(state, timeout=timeout, interval=0.5, what=f"request {request_id} completed")


@pytest.mark.timeout(600)
def test_every_printed_command_works_as_printed(stack: Stack) -> None:
    banner = stack.banner
    # The banner keeps each URL on the line of its label, however narrow the terminal
    database_line = next(line for line in banner if line.lstrip().startswith("database:"))
    assert re.search(r"database: +postgresql://", database_line), "\n".join(banner)
    assert re.search(r"broker: +\S+://", next(line for line in banner if "broker:" in line))

    commands = printed_commands(banner)
    assert len(commands) == 5, commands
    assert sum(c.startswith("curl") for c in commands) == 3
    storefront = row(banner, "Storefront token")

    # Every command exits 0 and does what it says
    created: list[int] = []
    for command in commands:
        if command.startswith("curl"):
            status, body = curl_status(command)
            assert status in (200, 201), (command, status, body)
            if "-X POST" in command:
                assert status == 201, body
                created.append(json.loads(body)["id"])
            else:
                assert "results" in json.loads(body)
            continue
        done = sh(command)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stdout + done.stderr
        if " submit " in command:
            found = re.search(r"request (\d+)", done.stdout)
            assert found, done.stdout
            created.append(int(found.group(1)))
        else:  # the python -c send_task line, on the storefront's restricted broker user: a request
            assert f"Celery(broker='{row(banner, 'Storefront broker')}')" in command, command
            assert "celery_app" not in command, command
            client_id = re.search(r"client_request_id='([^']+)'", command)
            assert client_id, command

            def stored(cid: str = client_id.group(1)) -> int | None:
                with stack.session() as session:
                    return session.scalar(
                        select(CancellationRequest.id).where(CancellationRequest.client_request_id == cid)
                    )

            created.append(wait_for(stored, timeout=60, what="the published message stored"))
    assert len(set(created)) == 4

    # The storefront token reads every channel too (GET, on the global route and on a channel twin)
    base = row(banner, "API")
    for path in ("/api/v1/cancellation_requests/", "/api/v1/channel/2/cancellation_requests/"):
        status, body = curl_status(f"curl -H 'Authorization: Token {storefront}' {base}{path}")
        assert status == 200, (path, body)

    # `cancelflow show ID` from the "Then:" line, in a new shell, finds the stack on its own
    then = next(line for line in banner if line.strip().startswith("Then:"))
    show_command = then.strip()[len("Then:") :].split("·")[0].strip().replace("ID", str(created[0]))
    shown = sh(show_command)
    assert shown.returncode == 0, (show_command, shown.stdout, shown.stderr)
    assert f"request {created[0]}" in shown.stdout


@pytest.mark.timeout(600)
def test_demo_data_loaded_into_the_running_stack_leaves_it_working(stack: Stack) -> None:
    cancelflow = next(c for c in printed_commands(stack.banner) if " submit " in c).split(" submit ")[0]
    with stack.session() as session:
        secrets_before = dict(
            session.execute(select(FulfillmentService.handle, FulfillmentService.secret)).all()
        )

    # When demo data is loaded (twice) into the running stack
    for _ in range(2):
        loaded = sh(f"{cancelflow} demo")
        assert loaded.returncode == 0, loaded.stdout + loaded.stderr
        assert printed_counts(loaded.stdout)["fulfillment_services"] == 0, loaded.stdout

    with stack.session() as session:
        assert dict(session.execute(select(FulfillmentService.handle, FulfillmentService.secret)).all()) == (
            secrets_before
        )
        # An item whose fulfillment order the accepting sandbox service holds: the request goes to it
        item = session.scalars(
            select(OrderItem.id)
            .join(FulfillmentOrder, FulfillmentOrder.order_id == OrderItem.order_id)
            .join(FulfillmentService, FulfillmentService.id == FulfillmentOrder.fulfillment_service_id)
            .where(
                FulfillmentService.handle == "sandbox-accept",
                FulfillmentOrder.request_status == FORequestStatus.accepted,
                OrderItem.requested_quantity == 0,
            )
            .order_by(OrderItem.id)
            .limit(1)
        ).one()

    # Then a request through that service is notified, answered and completed as before
    submitted = sh(f"{cancelflow} submit --order-item {item} --reason 1 --quantity 1")
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    found = re.search(r"request (\d+)", submitted.stdout)
    assert found, submitted.stdout
    wait_completed(stack, int(found.group(1)))


@pytest.mark.timeout(300)
def test_after_stopping_the_cli_says_no_stack_is_running(stack: Stack) -> None:
    cancelflow = next(c for c in printed_commands(stack.banner) if " submit " in c).split(" submit ")[0]
    assert (stack.data_dir / STATE_FILE).exists()
    assert (stack.data_dir / STATE_FILE).stat().st_mode & 0o777 == 0o600
    stack.proc.send_signal(signal.SIGINT)
    stack.proc.communicate(timeout=120)
    assert stack.proc.returncode == 0
    assert not (stack.data_dir / STATE_FILE).exists()
    shown = sh(f"{cancelflow} show 1")
    assert shown.returncode == 2, shown.stdout + shown.stderr
    assert "no `cancelflow run`" in shown.stderr
    assert "Traceback" not in shown.stdout + shown.stderr


def test_state_file_is_ignored_once_its_run_is_gone(tmp_path: Path) -> None:
    from cancelflow.config import Settings
    from cancelflow.config.stack import read_running, write_state
    from cancelflow.errors import ConfigurationError

    # Given the state of a run that is this process
    write_state(tmp_path, database_url="postgresql://x/y", broker_url="redis://z", api_url="http://a")
    assert read_running(tmp_path) is not None
    assert Settings(data_dir=tmp_path, database_url=None).require_database_url() == "postgresql://x/y"
    # When the pid it names now belongs to another process (started at another time)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    state["started"] -= 1000
    (tmp_path / STATE_FILE).write_text(json.dumps(state))
    # Then it is ignored, with the clean error
    assert read_running(tmp_path) is None
    with pytest.raises(ConfigurationError, match="no `cancelflow run`"):
        Settings(data_dir=tmp_path, broker_url=None).require_broker_url()


def test_a_command_started_elsewhere_finds_the_stack_of_its_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cancelflow.config import Settings, stack
    from cancelflow.config.stack import write_state
    from cancelflow.errors import ConfigurationError

    # Given a `make run` of the checkout (this process stands for it) and a terminal in another directory
    checkout, elsewhere = tmp_path / "checkout", tmp_path / "home"
    elsewhere.mkdir()
    write_state(
        checkout / ".cancelflow", database_url="postgresql://x/y", broker_url="redis://z", api_url="a"
    )
    monkeypatch.setattr(stack, "checkout_root", lambda: checkout)
    monkeypatch.chdir(elsewhere)
    for variable in ("CANCELFLOW_DATA_DIR", "CANCELFLOW_DATABASE_URL", "CANCELFLOW_BROKER_URL"):
        monkeypatch.delenv(variable, raising=False)

    # Then a command with the default data dir finds it (the full path to the checkout's cancelflow typed)
    assert Settings().require_database_url() == "postgresql://x/y"
    assert Settings().require_broker_url() == "redis://z"
    # But a data dir given explicitly is the only place looked at
    with pytest.raises(ConfigurationError, match="no `cancelflow run`"):
        Settings(data_dir=elsewhere / ".cancelflow").require_database_url()
