"""A storefront's own Celery client publishes `cancellations.submit` with an IBAN (lower case and
spaced, or dashed), a holder name and e-mail addresses, sometimes under a misspelled task name, and may
set the `argsrepr` / `kwargsrepr` headers to whatever it likes. None of it shows where operators look:
the worker's log file (the "received" and "succeeded" lines with their nested `data`, the "Received
unregistered task" dump) and the task events Flower keeps (`task-received` args/kwargs, and what the
worker's `inspect` answers give).

A real worker (its own process, its log file) and a plain Celery producer on the same broker."""

from __future__ import annotations

import json
import re
import secrets
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from cancelflow.worker.app import celery_app
from tests.conftest import BROKER_URL
from tests.factories import VALID_IBAN, load, order_payload
from tests.harness import Stack, clean_workdir, wait_for
from tests.workflow.conftest import request_row

HOLDER = "Maximiliane Geheimnisträger"
EMAIL = "maximiliane.geheim@example.org"
SPACED = " ".join(VALID_IBAN[i : i + 4] for i in range(0, len(VALID_IBAN), 4)).lower()
DASHED = "-".join(VALID_IBAN[i : i + 4] for i in range(0, len(VALID_IBAN), 4))
FORGED = "FORGED-REPR-7f3a"
BBAN = VALID_IBAN[4:]  # 370400440532013000: any spelling of the IBAN contains it once separators go


def leaks(text: str) -> list[str]:
    """What of the personal data is in `text`, in any case or spelling."""
    compact = re.sub(r"[^0-9A-Za-z]", "", text).upper()
    found = [s for s in (BBAN, VALID_IBAN) if s in compact]
    found += [
        s for s in ("Geheimnisträger", "Geheimnistr", "maximiliane", FORGED) if s.lower() in text.lower()
    ]
    return found


class Events:
    """Task events as Flower receives them (`app.events.Receiver` on the broker), in a thread."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.seen: list[dict[str, Any]] = []
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(connection, handlers={"*": self.seen.append})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def of(self, task_id: str, kind: str) -> dict[str, Any] | None:
        return next((e for e in list(self.seen) if e.get("uuid") == task_id and e["type"] == kind), None)

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def worker(database: str) -> Iterator[Stack]:
    stack = Stack(clean_workdir("stack-security-worker-personal-data"), concurrency=1)
    try:
        stack.start_worker()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def events(worker: Stack) -> Iterator[Events]:
    listening = Events(celery_app)
    listening.thread.start()
    # Events are not queued for a receiver that is not there yet: probe until one is seen.
    probe = Celery("probe", broker=BROKER_URL)

    def seen_probe() -> bool:
        # The worker sends task events once a monitor asks, as Flower does every few seconds.
        celery_app.control.enable_events()
        task_id = str(uuid.uuid4())
        probe.send_task("cancellations.submit", kwargs={}, task_id=task_id, queue="default")
        return bool(wait_for(lambda: True, timeout=1)) and _wait_event(listening, task_id)

    wait_for(seen_probe, timeout=60, interval=0.5, what="the event receiver to see task-received")
    try:
        yield listening
    finally:
        listening.stop()


def _wait_event(listening: Events, task_id: str) -> bool:
    try:
        wait_for(lambda: listening.of(task_id, "task-received"), timeout=3, what="probe event")
    except AssertionError:
        return False
    return True


@pytest.fixture(scope="module")
def storefront() -> Celery:
    """A storefront's own client: plain Celery, none of cancelflow's code."""
    return Celery("storefront", broker=BROKER_URL)


def test_worker_logs_and_task_events_show_no_personal_data(
    worker: Stack, events: Events, storefront: Celery
) -> None:
    order = order_payload(method="bank_transfer")
    load({"orders": [order]})
    stored_id = secrets.token_hex(8)
    sent: dict[str, str] = {}

    def publish(name: str, kwargs: dict[str, Any], **options: Any) -> str:
        task_id = str(uuid.uuid4())
        storefront.send_task(name, kwargs=kwargs, task_id=task_id, queue="default", **options)
        sent[task_id] = name
        return task_id

    base = {"order_item": order["items"][0]["id"], "reason": 1, "quantity": 1}
    stored = publish(
        "cancellations.submit",
        {
            **base,
            "client_request_id": stored_id,
            "iban": SPACED,
            "holder_name": HOLDER,
            "description": f"call me at {EMAIL}, account {DASHED}",
        },
    )
    invalid = publish(  # refused by intake (unknown field), logged with its field errors
        "cancellations.submit",
        {
            **base,
            "client_request_id": secrets.token_hex(8),
            "iban": DASHED,
            "holder_name": HOLDER,
            "email": EMAIL,
        },
    )
    forged = publish(  # the producer's own reprs carry the data (and a marker that must not survive)
        "cancellations.submit",
        {**base, "client_request_id": secrets.token_hex(8), "iban": VALID_IBAN, "holder_name": HOLDER},
        argsrepr=f"({FORGED!r}, {VALID_IBAN!r})",
        kwargsrepr=f"{{'holder_name': {HOLDER!r}, 'note': {FORGED!r}, 'mail': {EMAIL!r}}}",
    )
    publish(  # a misspelled task name: Celery logs the whole message
        "cancellations.submitt",
        {
            **base,
            "client_request_id": secrets.token_hex(8),
            "iban": SPACED,
            "holder_name": HOLDER,
            "email": EMAIL,
        },
    )
    assert wait_status(stored_id).iban == VALID_IBAN  # the data itself arrived whole

    log = worker.procs["worker"]
    wait_for(
        lambda: (
            all(f"[{t}] succeeded" in log.log_text() for t in (stored, invalid, forged))
            and "Received unregistered task of type 'cancellations.submitt'" in log.log_text()
        ),
        timeout=60,
        what="the worker's log lines for every message",
    )
    for task_id in (stored, invalid, forged):
        wait_for(lambda t=task_id: events.of(t, "task-received"), timeout=30, what=f"event of {task_id}")

    text = log.log_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    ours = [line for line in lines if any(t in json.dumps(line) for t in sent)]
    assert any("succeeded" in str(line.get("event")) and line.get("data") for line in ours)
    assert leaks(text) == [], [json.dumps(line)[:600] for line in ours if leaks(json.dumps(line))]

    for task_id in (stored, invalid, forged):
        received = events.of(task_id, "task-received")
        assert received is not None
        shown = f"{received['args']} {received['kwargs']}"
        assert leaks(shown) == [], shown
        assert "<redacted>" in received["kwargs"]  # recomputed by the worker, not the producer's text
    for event in events.seen:
        if event.get("uuid") in sent:
            assert leaks(json.dumps(event, default=str)) == [], event


def test_a_request_never_shows_the_producers_reprs_or_raw_arguments(storefront: Celery) -> None:
    """`inspect active/reserved` (Flower's worker pages) answer from `Request.info()`, and the pool
    process logs from the request dict: both carry the worker's redacted reprs."""
    from kombu import Message
    from kombu.serialization import dumps

    celery_app.loader.import_default_modules()  # the task modules, as the worker imports them
    task = celery_app.tasks["cancellations.submit"]
    kwargs = {"iban": SPACED, "holder_name": HOLDER, "description": EMAIL}
    headers, properties, body, _ = storefront.amqp.create_task_message(
        str(uuid.uuid4()), "cancellations.submit", (DASHED,), kwargs, kwargsrepr=repr(kwargs), argsrepr=FORGED
    )
    content_type, encoding, data = dumps(body, serializer="json")
    message = Message(
        body=data, headers=headers, content_type=content_type, content_encoding=encoding, **properties
    )
    from cancelflow.worker.privacy import MaskedRequest

    received = MaskedRequest(message, app=celery_app, task=task, hostname="test")
    for shown in (
        received.info(),
        received.info(safe=True),
        {k: received.request_dict[k] for k in ("argsrepr", "kwargsrepr")},
        repr(received),
    ):
        assert leaks(str(shown)) == [], shown
    assert received.kwargs == kwargs  # the task itself still gets everything


def wait_status(client_request_id: str) -> Any:
    return wait_for(lambda: request_row(client_request_id), timeout=60, what=f"request {client_request_id}")
