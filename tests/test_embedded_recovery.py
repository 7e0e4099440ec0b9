"""`make run`'s supervisor keeps the stack up when its embedded PostgreSQL or Redis dies: it starts the
server that died again, on the same files and socket, says so, and leaves the children running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil

from tests.harness import wait_for
from tests.test_embedded import RUN_UNTIL_SIGNALLED, _pid_from_log, _server_pids, _sql, run_env, slow

__all__ = ["run_env"]  # the fixture, used below by name


@slow
def test_run_restarts_a_killed_postgres_then_a_killed_redis_and_keeps_the_children(run_env: Path) -> None:
    data_dir = run_env
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_UNTIL_SIGNALLED, str(Path(__file__).parent)],
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
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
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
        reader.start()
        children = [_pid_from_log(data_dir / "logs" / f"{name}.log", "pid") for name in ("api", "other")]
        postmaster, redis_pid = _server_pids(data_dir)

        # When its PostgreSQL's postmaster is SIGKILLed, a new one answers on the same socket
        os.kill(postmaster, signal.SIGKILL)
        wait_for(
            lambda: _server_pids(data_dir)[0] != postmaster and _pg_answers(data_dir),
            timeout=60,
            what="a new postmaster",
        )
        # Then its Redis is SIGKILLed: a new redis-server, from the append-only file
        os.kill(redis_pid, signal.SIGKILL)
        wait_for(lambda: _redis_pid(data_dir) not in (None, redis_pid), timeout=60, what="a new redis-server")

        assert proc.poll() is None, "".join(lines)
        assert all(psutil.pid_exists(pid) for pid in children)
        output = "".join(lines)
        assert "embedded PostgreSQL was down; running again" in output
        assert "embedded Redis exited with -9; restarted it" in output

        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0, "".join(lines)


def _pg_answers(data_dir: Path) -> bool:
    from urllib.parse import quote

    socket_dir = quote(str(data_dir / "postgres"), safe="/")
    try:
        return _sql(f"postgresql://postgres@/postgres?host={socket_dir}", "SELECT 1") == [(1,)]
    except Exception:
        return False


def _redis_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "redis" / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None
