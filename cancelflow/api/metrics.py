"""`GET /metrics`: Prometheus text exposition of the workflow gauges, read from PostgreSQL per scrape.

Unauthenticated like `/healthz`: it carries counts and sums only, no identifiers or personal data, and
is meant for a scraper on the internal network.
"""

from __future__ import annotations

import functools
import logging

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from cancelflow.db import new_session
from cancelflow.services.metrics import DatabaseCollector

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@functools.cache
def registry() -> CollectorRegistry:
    """A registry of our own: the default one would add this process's Python and GC samples, which say
    nothing about the workflow and differ between replicas."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DatabaseCollector(new_session))
    return reg


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."},
        503: {"description": "The database does not answer."},
    },
)
def metrics() -> Response:
    try:
        body = generate_latest(registry())
    except SQLAlchemyError as exc:  # a scrape during a database outage is a 503 the scraper records
        log.warning("metrics: database unreachable: %s", exc)
        return Response("database unreachable\n", status_code=503, media_type="text/plain")
    return Response(body, media_type=CONTENT_TYPE_LATEST)
