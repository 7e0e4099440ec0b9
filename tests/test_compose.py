"""docker-compose.yml and the Dockerfile agree with the real CLI, queues and settings (no Docker needed)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.main import get_command

from cancelflow.cli.main import app as cli_app
from cancelflow.worker.config import QUEUES

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
CELERY_APP = "cancelflow.worker.app"
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; $$ is a literal dollar.
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """What `docker compose config` does to the file before parsing, strict about undefined variables."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if name in env and (env[name] or op not in (":-", ":?")):
            return env[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise KeyError(f"${{{name}}} is required: {arg}")
        raise KeyError(f"${{{name}}} has no default: compose would substitute an empty string")

    text = text.replace("$$", "\0")
    return INTERPOLATION.sub(substitute, text).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(interpolate(COMPOSE.read_text(), {"FLOWER_PASSWORD": "s3cret"}))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def own(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run the cancelflow image."""
    return {name: s for name, s in services.items() if s.get("build") == "."}


def celery_role(command: list[str]) -> str | None:
    if command[:3] != ["celery", "-A", CELERY_APP]:
        return None
    return command[3]


def option(command: list[str], flag: str) -> str:
    index = command.index(flag)
    return command[index + 1]


class TestInterpolation:
    def test_every_variable_has_a_default_or_a_message(self) -> None:
        text = COMPOSE.read_text().replace("$$", "")
        names = {m["name"] for m in INTERPOLATION.finditer(text)}
        assert names, "expected configurable values"
        for match in INTERPOLATION.finditer(text):
            assert match["op"] is not None, f"${{{match['name']}}} has no default"
        # Stray $VAR forms would be substituted by compose without a default.
        assert not re.search(r"\$(?!\{)[A-Za-z_]", text)

    def test_flower_password_is_required(self) -> None:
        with pytest.raises(KeyError, match="FLOWER_PASSWORD"):
            interpolate(COMPOSE.read_text(), {})

    def test_environment_overrides_defaults(self) -> None:
        loaded = yaml.safe_load(
            interpolate(
                COMPOSE.read_text(),
                {"FLOWER_PASSWORD": "x", "CANCELFLOW_BROKER_URL": "amqp://u:p@rabbitmq:5672//"},
            )
        )
        assert (
            loaded["services"]["api"]["environment"]["CANCELFLOW_BROKER_URL"] == "amqp://u:p@rabbitmq:5672//"
        )


class TestServices:
    def test_the_layout(self, services: dict[str, dict[str, Any]]) -> None:
        assert {"postgres", "redis", "migrate", "api", "beat", "flower"} <= set(services)
        assert {f"worker-{q}" for q in QUEUES} <= set(services)

    def test_processes_reach_the_compose_database_and_broker(
        self, services: dict[str, dict[str, Any]]
    ) -> None:
        pg = services["postgres"]["environment"]
        for name, service in own(services).items():
            env = service["environment"]
            db = env["CANCELFLOW_DATABASE_URL"]
            assert db == (
                f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
            ), name
            assert env["CANCELFLOW_BROKER_URL"] == "redis://redis:6379/0", name
            assert env["CANCELFLOW_EMBEDDED"] == "0", name

    def test_one_worker_pool_per_queue_covering_every_queue(
        self, services: dict[str, dict[str, Any]]
    ) -> None:
        queues: list[str] = []
        for name, service in own(services).items():
            if celery_role(service["command"]) == "worker":
                served = option(service["command"], "-Q").split(",")
                assert served == [name.removeprefix("worker-")]
                queues.extend(served)
                assert option(service["command"], "-n").endswith("@%h")
        assert sorted(queues) == sorted(QUEUES)

    def test_export_files_are_shared_by_the_worker_that_writes_and_the_api_that_serves(
        self, services: dict[str, dict[str, Any]]
    ) -> None:
        from cancelflow.services.exports import exports_dir

        dockerfile = (ROOT / "Dockerfile").read_text()
        data_dir = re.search(r"CANCELFLOW_DATA_DIR=(\S+)", dockerfile)
        assert data_dir is not None
        target = str(exports_dir(Path(data_dir.group(1))))
        bulk_workers = [
            n
            for n, s in own(services).items()
            if celery_role(s["command"]) == "worker" and "bulk" in option(s["command"], "-Q").split(",")
        ]
        assert bulk_workers
        mounts = {
            name: {v.split(":")[0] for v in services[name].get("volumes", []) if v.split(":")[1] == target}
            for name in ("api", *bulk_workers)
        }
        shared = set.intersection(*mounts.values())
        assert shared, f"no volume at {target} shared by {sorted(mounts)}: {mounts}"

    def test_exactly_one_beat(self, services: dict[str, dict[str, Any]]) -> None:
        beats = [n for n, s in own(services).items() if celery_role(s["command"]) == "beat"]
        assert beats == ["beat"]
        assert "deploy" not in services["beat"]  # no replicas

    def test_celery_commands_use_the_real_app(self, services: dict[str, dict[str, Any]]) -> None:
        import importlib

        for name, service in own(services).items():
            command = service["command"]
            if command[0] == "celery":
                assert command[1:3] == ["-A", CELERY_APP], name
                assert celery_role(command) in {"worker", "beat", "flower"}, name
        assert importlib.import_module(CELERY_APP).celery_app.main == "cancelflow"

    def test_flower_has_auth_and_a_task_cap(self, services: dict[str, dict[str, Any]]) -> None:
        flower = services["flower"]
        command = flower["command"]
        assert celery_role(command) == "flower"
        # The login is in the environment (Flower reads FLOWER_BASIC_AUTH), never on the command line.
        assert flower["environment"]["FLOWER_BASIC_AUTH"] == "admin:s3cret"
        assert not any("s3cret" in arg or arg.startswith("--basic_auth") for arg in command)
        assert any(arg.startswith("--max_tasks=") for arg in command)
        # Published on the host's loopback only.
        assert flower["ports"] == ["127.0.0.1:5555:5555"]

    def test_api_runs_the_factory(self, services: dict[str, dict[str, Any]]) -> None:
        command = services["api"]["command"]
        assert command[:4] == ["python", "-m", "uvicorn", "--factory"]
        module, _, attr = command[4].partition(":")
        assert command[4] == "cancelflow.api.app:create_app"
        import importlib

        assert callable(getattr(importlib.import_module(module), attr))

    def test_cancelflow_subcommands_exist(self, services: dict[str, dict[str, Any]]) -> None:
        commands = set(get_command(cli_app).commands)  # type: ignore[attr-defined]
        used = [s["command"][1] for s in own(services).values() if s["command"][0] == "cancelflow"]
        assert used == ["migrate"]
        assert set(used) <= commands

    def test_start_order(self, services: dict[str, dict[str, Any]]) -> None:
        assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        assert services["migrate"]["restart"] == "no"
        for name, service in own(services).items():
            if name == "migrate":
                continue
            assert service["depends_on"] == {
                "postgres": {"condition": "service_healthy"},
                "redis": {"condition": "service_healthy"},
                "migrate": {"condition": "service_completed_successfully"},
            }, name

    def test_healthchecks(self, services: dict[str, dict[str, Any]]) -> None:
        for name in ("postgres", "redis", "api", *(f"worker-{q}" for q in QUEUES)):
            assert services[name]["healthcheck"]["test"], name
        assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])
        assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])

    def test_dockerfile_builds_what_compose_runs(self) -> None:
        dockerfile = (ROOT / "Dockerfile").read_text()
        assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
        assert re.search(r"^RUN pip install \.", dockerfile, re.MULTILINE)
        ignored = (ROOT / ".dockerignore").read_text().split()
        assert {".venv", ".git", "test-output"} <= set(ignored)
