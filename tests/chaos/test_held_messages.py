"""A worker whose broker connection breaks gives back the messages it held and had not started, as soon as it
is connected again (`worker.broker_loss.HeldMessages`).

The broker here keeps its contents, as `make run`'s embedded Redis does (append-only file): it comes back from
a SIGKILL with its marker, so no broker-loss sweep runs, and with the messages the worker had taken in its
unacked index. The worker prefetches (4 per process, acknowledgement late): its one pool process is busy, three
messages wait in the worker for it and two for their countdown. Celery drops those five when the connection
breaks; without the give-back they would come back only after the visibility timeout (an hour)."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from cancelflow.config import get_settings
from cancelflow.worker.config import celery_config
from tests.chaos.conftest import RedisServer
from tests.conftest import TEST_BROKER
from tests.harness import PYTHON, Proc, clean_workdir, wait_for

pytestmark = pytest.mark.worker

HELD_APP = "tests.chaos.held_app"


@pytest.fixture
def persistent_redis() -> Iterator[RedisServer]:
    if TEST_BROKER != "redis":
        pytest.skip("RabbitMQ requeues a lost connection's unacknowledged messages itself")
    server = RedisServer.create(clean_workdir("held-messages"), persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _tasks(client: redis.Redis, key: str) -> list[str]:
    """The task names of the messages in `key`: a queue (a list) or the unacked index (a hash)."""
    raw = client.lrange(key, 0, -1) if client.type(key) == b"list" else client.hvals(key)
    found = []
    for item in raw:
        payload = json.loads(item)
        message = payload[0] if isinstance(payload, list) else payload  # unacked: [message, exchange, key]
        found.append(message["headers"]["task"])
    return found


def test_messages_the_worker_held_when_redis_was_killed_run_once_it_is_back(
    persistent_redis: RedisServer,
) -> None:
    server = persistent_redis
    workdir = server.proc.log_path.parent.parent
    release = workdir / "release"
    env = {
        **os.environ,
        "CANCELFLOW_BROKER_URL": server.url,
        "CANCELFLOW_THROTTLE_URL": server.url,  # where the pings count themselves
        "CANCELFLOW_WORKER_PREFETCH_MULTIPLIER": "4",
        "CANCELFLOW_VISIBILITY_TIMEOUT": "3600",
    }
    worker = Proc(
        "worker",
        [
            PYTHON, "-m", "celery", "-A", HELD_APP, "worker", "--loglevel", "INFO", "--concurrency", "1",
            "-Q", "default", "-n", f"held-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
        ],
        workdir / "logs" / "worker.log",
        env,
    )  # fmt: skip
    app = Celery("cancelflow-held", set_as_current=False)
    app.conf.update(celery_config(get_settings().model_copy(update={"broker_url": server.url})))
    client = server.client()
    counter = f"held-{uuid.uuid4().hex}"
    worker.start()
    try:
        wait_for(lambda: "ready." in worker.log_text(), timeout=60, what="the worker ready")
        app.send_task("tests.hold", args=[str(release)], queue="default")
        wait_for(lambda: "tests.hold" in _tasks(client, "unacked"), what="the worker running tests.hold")
        # Countdowns first: each one the worker holds raises its prefetch limit by one (Celery's rule).
        for _ in range(2):
            app.send_task("workflow.ping", kwargs={"counter_key": counter}, queue="default", countdown=3)
        wait_for(lambda: len(_tasks(client, "unacked")) == 3, what="the worker holding the countdowns")
        for _ in range(3):
            app.send_task("workflow.ping", kwargs={"counter_key": counter}, queue="default")
        wait_for(
            lambda: client.llen("default") == 0 and len(_tasks(client, "unacked")) == 6,
            what="the worker holding the five pings",
        )
        assert sorted(_tasks(client, "unacked")) == ["tests.hold"] + ["workflow.ping"] * 5

        connected = worker.log_text().count("Connected to")
        server.kill()
        server.start()  # from its append-only file: the marker and the unacked index are back
        wait_for(
            lambda: worker.log_text().count("Connected to") > connected, what="the worker connected again"
        )
        release.touch()

        # Far less than the visibility timeout the held messages would otherwise wait.
        wait_for(
            lambda: int(client.get(f"cancelflow:counter:{counter}") or 0) >= 5, timeout=60, what="5 pings"
        )
        wait_for(lambda: "workflow.ping" not in _tasks(client, "unacked"), what="the pings acknowledged")
        assert "workflow.ping" not in _tasks(client, "default")
        assert int(client.get(f"cancelflow:counter:{counter}") or 0) == 5  # each ran once
        assert "gave back the messages held when the broker connection was lost" in worker.log_text()
        assert worker.alive(), worker.log_text()[-4000:]
    except BaseException:
        print(worker.log_text()[-6000:])
        raise
    finally:
        release.touch()
        worker.stop()
        client.close()
        app.close()
