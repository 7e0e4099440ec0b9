"""Refused storefront messages are kept for CANCELFLOW_REJECTED_MESSAGE_RETENTION, then pruned by a sweep."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cancelflow.models import RejectedMessage
from cancelflow.services import intake
from cancelflow.services.clock import now
from cancelflow.worker.config import ROUTES, celery_config


def _refusal(session: Session, *, age: timedelta) -> str:
    key = f"pruning-{uuid.uuid4().hex}"
    intake.record_rejection(
        session, {"client_request_id": key}, code="unknown_item", message="no such item", errors={}
    )
    session.execute(
        update(RejectedMessage)
        .where(RejectedMessage.client_request_id == key)
        .values(rejected_at=now() - age)
    )
    return key


def test_refusals_older_than_the_retention_are_pruned_and_newer_ones_kept(session: Session) -> None:
    old = [_refusal(session, age=timedelta(days=31)) for _ in range(3)]
    fresh = _refusal(session, age=timedelta(days=1))

    pruned = intake.prune_rejections(session, older_than=now() - timedelta(days=30), batch=2)
    assert pruned == 2  # a batch at a time, oldest first
    assert intake.prune_rejections(session, older_than=now() - timedelta(days=30)) >= 1
    left = set(session.scalars(select(RejectedMessage.client_request_id)))
    assert not left & set(old)
    assert fresh in left


def test_the_pruning_runs_on_the_sweep_queue_every_sweep() -> None:
    from cancelflow.config import get_settings

    schedule = celery_config(get_settings())["beat_schedule"]
    assert schedule["cancellations.prune_rejections"]["task"] == "cancellations.prune_rejections"
    assert ROUTES["cancellations.prune_rejections"] == {"queue": "sweep"}
