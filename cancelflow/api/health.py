"""Liveness with a database round trip, for load balancers, `make run` and the test harness."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from cancelflow.api.schemas.health import Health
from cancelflow.db import transaction

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=Health,
    summary="Health check",
    responses={503: {"model": Health, "description": "The database does not answer."}},
)
def healthz() -> Health | JSONResponse:
    try:
        with transaction() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:  # the database is down: report it as a 503, not a 500
        log.warning("health check: database unreachable: %s", exc)
        return JSONResponse({"ok": False, "database": "unreachable"}, status_code=503)
    return Health(ok=True, database="ok")
