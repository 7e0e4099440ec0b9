"""Order import and lookup (`/api/v1/orders/`): how a deployment brings its own orders and services."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from cancelflow.api.auth import AkinonStaff
from cancelflow.api.deps import DbSession
from cancelflow.api.errors import AKINON_RESPONSES
from cancelflow.api.schemas.orders import ImportResult, OrderOut
from cancelflow.errors import NotFound
from cancelflow.services import importer, request_view
from cancelflow.services.importer import ImportPayload

router = APIRouter(prefix="/api/v1/orders", tags=["orders"], responses=AKINON_RESPONSES)


@router.post(
    "/",
    response_model=ImportResult,
    status_code=201,
    summary="Import orders and reference data",
    description=(
        "Loads channels, cancellation reasons, fulfillment services, customers, and orders with their "
        "items, payment and fulfillment orders (the same payload as `cancelflow import FILE`). Reference "
        "data is upserted by id; orders and what hangs off them are inserted once and then belong to the "
        "workflow. Answers **201** when anything was written and **200** with all counts zero when the "
        "payload was imported before and nothing changed. A fulfillment service with cancellation requests "
        "in flight keeps its handle, callback URL and secret unless `replace_services=true`. Staff token."
    ),
    responses={200: {"model": ImportResult, "description": "Nothing new: every count is zero."}},
)
def import_orders(
    payload: ImportPayload,
    principal: AkinonStaff,
    response: Response,
    session: DbSession,
    replace_services: Annotated[
        bool,
        Query(
            description="Change the handle, callback URL or secret of a fulfillment service even while it "
            "has cancellation requests in flight (otherwise a 400 naming the field)."
        ),
    ] = False,
) -> ImportResult:
    data = payload.model_dump(mode="json")
    counts = importer.import_payload(session, data, replace_services=replace_services)
    if not any(counts.values()):
        response.status_code = 200
    return ImportResult(imported=counts)


@router.get(
    "/{order_id}/",
    response_model=OrderOut,
    summary="Retrieve an order",
    description="The order with its items, payment and fulfillment-order ids. Staff token.",
)
def get_order(
    order_id: Annotated[int, Path(gt=0, le=2**63 - 1)], principal: AkinonStaff, session: DbSession
) -> OrderOut:
    detail = request_view.order(session, order_id)
    if detail is None:
        raise NotFound(f"order {order_id} not found")
    return OrderOut.model_validate(detail)
