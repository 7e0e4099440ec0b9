"""What `cancelflow run` prints: lines that never wrap, and commands that run from where `make run` ran."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from cancelflow.cli import run as run_mod
from cancelflow.config import Settings


def banner(
    tmp_path: Path, *, data_dir: Path, cwd: Path, width: int = 40, storefront_broker: str | None = None
) -> list[str]:
    out = io.StringIO()
    creds = run_mod.load_or_create_credentials(tmp_path / "credentials.json")
    run_mod.print_summary(
        Console(file=out, width=width),
        Settings(),
        creds,
        log_dir=data_dir / "logs",
        data_dir=data_dir,
        example=run_mod.Example((11, 12, 13, 14), 1),
        cwd=cwd,
        storefront_broker=storefront_broker,
    )
    return out.getvalue().splitlines()


def test_each_command_is_one_line_at_any_width(tmp_path: Path) -> None:
    lines = banner(tmp_path, data_dir=tmp_path / ".cancelflow", cwd=tmp_path, width=30)
    commands = [
        line.strip() for line in lines if line.strip().startswith(("curl", "CANCELFLOW_", "/", ".venv"))
    ]
    assert len(commands) == 5, lines
    for command in commands:
        if command.startswith("curl"):
            assert command.endswith("/api/v1/cancellation_requests/"), command
    assert any("submit --order-item 13 --reason 1 --quantity 1" in c for c in commands)
    assert any("order_item=14" in c and c.endswith('))"') for c in commands)


def test_the_broker_example_publishes_as_the_storefront_user_when_there_is_one(tmp_path: Path) -> None:
    url = "redis://storefront:s3cret@127.0.0.1:6379/0"
    lines = banner(tmp_path, data_dir=tmp_path / ".cancelflow", cwd=tmp_path, storefront_broker=url)
    [python] = [line.strip() for line in lines if " -c " in line]
    assert f"Celery(broker='{url}')" in python
    assert "celery_app" not in python
    assert "queue='intake'" in python
    # Without a storefront user (a broker it cannot be made on) the example falls back to the worker's app
    [python] = [line.strip() for line in banner(tmp_path, data_dir=tmp_path, cwd=tmp_path) if " -c " in line]
    assert "celery_app.send_task('cancellations.submit'" in python


def test_a_default_data_dir_needs_no_prefix_and_another_one_is_named(tmp_path: Path) -> None:
    assert run_mod.command_prefix(tmp_path / ".cancelflow", cwd=tmp_path) == ""
    elsewhere = tmp_path / "other data"
    assert run_mod.command_prefix(elsewhere, cwd=tmp_path) == f"CANCELFLOW_DATA_DIR='{elsewhere}' "
    assert run_mod.shown_path(tmp_path / ".venv" / "bin" / "cancelflow", tmp_path) == ".venv/bin/cancelflow"
    assert run_mod.shown_path(Path("/opt/venv/bin/cancelflow"), tmp_path) == "/opt/venv/bin/cancelflow"


def test_a_long_line_keeps_its_url(tmp_path: Path) -> None:
    out = io.StringIO()
    url = "postgresql://postgres@/cancelflow?host=" + "/very/long/path" * 8
    run_mod._line(Console(file=out, width=30), f"  database: {url}")
    assert out.getvalue() == f"  database: {url}\n"
