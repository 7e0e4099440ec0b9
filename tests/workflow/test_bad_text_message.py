"""`cancellations.submit` messages carrying text PostgreSQL cannot store, through a real worker.

Every string field of the message schema (`intake.SubmitMessage`) gets NUL or a lone surrogate, drawn
by Hypothesis; kombu's JSON carries them as `\\u0000` / `\\ud800` escapes, as any publisher's would. The
task must finish with its "invalid" verdict (a logged rejection, no traceback, no retry) and write no row.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cancelflow.services.intake import SubmitMessage
from tests.api.test_bad_text import row_counts
from tests.factories import load, order_payload
from tests.harness import Proc, Stack, clean_workdir, repeatable_examples, wait_for
from tests.workflow.conftest import request_row

pytestmark = pytest.mark.worker

BAD = st.builds(
    lambda a, c, b: a + c + b,
    st.text(max_size=5),
    st.one_of(st.just("\x00"), st.characters(categories=["Cs"])),
    st.text(max_size=5),
)


def text_fields() -> list[str]:
    schema = SubmitMessage.model_json_schema()

    def is_text(node: dict[str, Any]) -> bool:
        if "$ref" in node:
            node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        return node.get("type") == "string" or any(is_text(o) for o in node.get("anyOf", []))

    return [name for name, prop in schema["properties"].items() if is_text(prop)]


FIELDS = text_fields()


@pytest.fixture(scope="module")
def worker(database: str) -> Iterator[Proc]:
    """Only a worker: nothing else may write while rows are counted."""
    stack = Stack(clean_workdir("stack-bad-text-message"))
    try:
        yield stack.start_worker()
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def order_item(database: str) -> int:
    """An order with no payment: a well-formed message about it is stored, as a rejected request."""
    order = order_payload()
    del order["payment"]
    load({"orders": [order]})
    return int(order["items"][0]["id"])


def verdict(worker: Proc, task_id: str) -> str:
    """The worker's log line that ends this task: succeeded (with its return value), raised, or retried."""
    pattern = re.compile(rf"cancellations\.submit\[{task_id}\] (succeeded|raised|retry)[^\n]*")
    found = wait_for(
        lambda: pattern.search(worker.log_text()), timeout=60, what=f"the worker's verdict on {task_id}"
    )
    return str(found.group(0))


def publish(**kwargs: Any) -> str:
    from cancelflow.worker.app import celery_app

    return str(celery_app.send_task("cancellations.submit", kwargs=kwargs).id)


def test_the_message_schema_has_the_reported_fields() -> None:
    assert {"client_request_id", "description", "iban", "holder_name"} <= set(FIELDS)


def stored_counts() -> dict[str, int]:
    """Rows a message could write. Not the record of refused messages (which a refusal is meant to write), and
    not the tables a worker moves other tests' requests through while this one runs (steps, plans, events)."""
    counts = row_counts()
    return {table: counts[table] for table in ("cancellation_requests",) if table in counts}


def rejection_codes(client_request_ids: list[str]) -> dict[str, str]:
    from sqlalchemy import select

    from cancelflow.db import transaction
    from cancelflow.models import RejectedMessage

    with transaction() as session:
        rows = session.execute(
            select(RejectedMessage.client_request_id, RejectedMessage.code).where(
                RejectedMessage.client_request_id.in_(client_request_ids)
            )
        ).all()
    return {str(cid): str(code) for cid, code in rows}


def test_a_well_formed_message_is_stored(worker: Proc, order_item: int) -> None:
    """The control: the same message with good text does write, so "no row" below means refused."""
    cid = f"good-{secrets.token_hex(6)}"
    task_id = publish(client_request_id=cid, order_item=order_item, reason=1, description="fine")
    assert "succeeded" in verdict(worker, task_id)
    assert request_row(cid) is not None


@pytest.mark.parametrize("field", FIELDS)
def test_text_that_cannot_be_stored_is_a_logged_rejection(worker: Proc, order_item: int, field: str) -> None:
    before = stored_counts()
    recorded: list[str] = []

    @repeatable_examples(3)
    @given(value=BAD)
    def check(value: str) -> None:
        message: dict[str, Any] = {
            "client_request_id": f"bad-{secrets.token_hex(6)}",
            "order_item": order_item,
            "reason": 1,
            field: value,
        }
        task_id = publish(**message)
        line = verdict(worker, task_id)
        assert "succeeded" in line, line
        assert "'invalid'" in line, line
        if field != "client_request_id":
            recorded.append(message["client_request_id"])

    check()
    # Nothing but the refusal itself: a rejected-message record under a storable client_request_id.
    assert stored_counts() == before
    assert rejection_codes(recorded) == dict.fromkeys(recorded, "invalid_message")
    assert "Traceback" not in worker.log_text()
