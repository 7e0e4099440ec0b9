"""The query string of the cancellation-request lists: the OpenAPI parameters that document it and the
parsing of its pagination. The filters themselves (`services.queries.RequestFilters`) and the SQL behind
them are the service's; `RequestFilters.parse` reads the filter parameters, whatever face sent them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from cancelflow.errors import Invalid
from cancelflow.services import queries

MAX_LIMIT: Final = 1000
MAX_PAGE: Final = 2**31 - 1

FILTER_DESCRIPTIONS: Final[Mapping[str, str]] = {
    "uuid": "Filter by UUID.",
    "pk": "Filters by primary key.",
    "pk__gt": "Filter by primary key greater than a specific value.",
    "pk__gte": "Filters by primary key greater than or equal to the given value.",
    "pk__lt": "Filters by primary key less than the given value.",
    "pk__lte": "Filters by primary key less than or equal to the given value.",
    "pk__in": (
        "Filter by multiple primary key values (comma-separated list of integers, at most "
        f"{queries.MAX_PK_IN})."
    ),
    "cancellation_type": "Filter by cancellation type.",
    "status": "Status of the cancellation request.",
    "order_number": "Order number (case-insensitive).",
    "sku": "Product SKU of the order item (case-insensitive).",
    "channel": "ID of the channel the order (and its customer) belongs to.",
    "order__customer__first_name__iexact": "Customer's first name (case-insensitive).",
    "order__customer__last_name__iexact": "Customer's last name (case-insensitive).",
    "order__customer__email__iexact": "Customer's email (case-insensitive).",
    "order": "Order ID.",
    "cancellation_plan_status": "Status of the cancellation plan (requests without a plan never match).",
    "easy_return__code__iexact": (
        "Easy return code (case-insensitive). cancelflow keeps no easy-return records: accepted for "
        "compatibility, matches nothing."
    ),
    "easy_return__tracking_number__iexact": "Tracking number of the order's shipment (case-insensitive).",
    "currency": "Currency of the order (Akinon's `tr`/`eu` match `try`/`eur`).",
    "order__shipping_option_slug__iexact": "Filter by the order's shipping option slug (case-insensitive).",
    "order_item": "Filter by order item ID.",
    "reason": "Filter by cancellation reason ID.",
    "description": "Filter by the request's (product) description, exact match.",
    "iban": (
        "Filter by IBAN (spaces ignored, case-insensitive). Staff tokens with the `view_iban` permission "
        "only: for any other token it is a 403."
    ),
    "holder_name": "Filter by holder name (case-insensitive).",
    "easy_return": (
        "Filter by easy return ID. cancelflow keeps no easy-return records: accepted for compatibility, "
        "matches nothing."
    ),
    "quantity": "Filter by quantity.",
    "fully_refund_as_loyalty_money": "Filter by the fully-refund-as-loyalty-money flag (`true`/`false`).",
    "escalated": (
        "`true`: the request's plan was escalated (its fulfillment service missed the reply deadline); "
        "`false`: not escalated (including requests without a plan)."
    ),
}


# --- the filters' OpenAPI parameters ---------------------------------------------------------------


def filter_parameters() -> list[dict[str, Any]]:
    """The filters as OpenAPI query parameters, with their aliases in each description."""
    aliases: dict[str, list[str]] = {}
    for alias, primary in queries.ALIASES.items():
        aliases.setdefault(primary, []).append(alias)
    params: list[dict[str, Any]] = []
    for name in queries.RequestFilters.model_fields:
        schema = _schema(name)
        description = FILTER_DESCRIPTIONS.get(name) or _date_description(name)
        if aliases.get(name):
            description += " Also accepted as " + ", ".join(f"`{a}`" for a in aliases[name]) + "."
        params.append(
            {"name": name, "in": "query", "required": False, "description": description, "schema": schema}
        )
    return params


def _date_description(name: str) -> str:
    column, _, lookup = name.partition("__")
    what = "creation" if column == "created_date" else "modification"
    if not lookup:
        return f"Exact {what} date-time (ISO 8601; no offset means UTC)."
    if lookup.startswith("date"):
        op = lookup.partition("__")[2] or "exact"
        return f"{what.capitalize()} date (calendar day in UTC, `YYYY-MM-DD`), lookup `{op}`."
    return f"{what.capitalize()} date-time (ISO 8601; no offset means UTC), lookup `{lookup}`."


def _schema(name: str) -> dict[str, Any]:
    if name in queries.CHOICES:
        return {"type": "string", "enum": list(queries.CHOICES[name])}
    if name.startswith(("created_date", "modified_date")):
        return {"type": "string", "format": "date" if "__date" in name else "date-time"}
    if name == "uuid":
        return {"type": "string", "format": "uuid"}
    if name == "pk__in":
        return {"type": "string", "pattern": r"^-?\d{1,18}(,-?\d{1,18})*$", "example": "1,2,3"}
    annotation = queries.RequestFilters.model_fields[name].annotation
    if annotation == (bool | None):
        return {"type": "boolean"}
    if annotation == (int | None):
        return {"type": "integer", "format": "int64"}
    return {"type": "string", "minLength": 1, "maxLength": queries.MAX_TEXT}


# --- pagination ---------------------------------------------------------------------------------------


def parse_page(params: Mapping[str, Any]) -> tuple[int, int]:
    """`page` (>= 1, default 1) and `limit` (>= 1, default 10, values above 1000 are capped, as DRF's
    `max_page_size` does). Raises `Invalid` for a malformed or non-positive value."""
    errors: dict[str, list[str]] = {}
    values: dict[str, int] = {}
    for name, default, maximum in (("page", 1, MAX_PAGE), ("limit", queries.DEFAULT_LIMIT, MAX_LIMIT)):
        raw = params.get(name)
        if raw is None or raw == "":
            values[name] = default
            continue
        text = str(raw).strip()
        if not text.isascii() or not text.isdigit() or len(text) > 18:
            errors[name] = ["A valid integer is required."]
            continue
        number = int(text)
        if number < 1:
            errors[name] = ["Ensure this value is greater than or equal to 1."]
            continue
        if name == "page" and number > maximum:
            errors[name] = [f"Ensure this value is less than or equal to {maximum}."]
            continue
        values[name] = min(number, maximum)
    if errors:
        raise Invalid("invalid pagination", field_errors=errors, code="invalid")
    return values["page"], values["limit"]


def parse_cursor(params: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """`page_after` / `page_before`: the keyset the `next` / `previous` links carry (a request id).

    With one of them a page is read by seeking the id index, however deep it is; `page` then only numbers
    the page for the links. Raises `Invalid` for a malformed value or for both at once.
    """
    errors: dict[str, list[str]] = {}
    values: dict[str, int | None] = {"page_after": None, "page_before": None}
    for name in values:
        raw = params.get(name)
        if raw is None or raw == "":
            continue
        text = str(raw).strip()
        if not text.isascii() or not text.isdigit() or len(text) > 18 or int(text) < 1:
            errors[name] = ["A valid request id is required."]
            continue
        values[name] = int(text)
    if not errors and values["page_after"] is not None and values["page_before"] is not None:
        errors["non_field_errors"] = ["Send page_after or page_before, not both."]
    if errors:
        raise Invalid("invalid pagination", field_errors=errors, code="invalid")
    return values["page_after"], values["page_before"]


PAGE_PARAMETERS: Final[list[dict[str, Any]]] = [
    {
        "name": "page",
        "in": "query",
        "required": False,
        "description": "Specifies the page number of the current dataset (default 1).",
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 1},
    },
    {
        "name": "page_after",
        "in": "query",
        "required": False,
        "description": (
            "Keyset of the `next` link: the page holds the requests listed after this request id. Sent by "
            "the links; with it a deep page is an index seek rather than a skip of `(page - 1) * limit` rows."
        ),
        "schema": {"type": "integer", "minimum": 1},
    },
    {
        "name": "page_before",
        "in": "query",
        "required": False,
        "description": "Keyset of the `previous` link: the page holds the requests listed before this id.",
        "schema": {"type": "integer", "minimum": 1},
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": (
            f"Indicates the number of rows on the current page (default {queries.DEFAULT_LIMIT}; values "
            f"above {MAX_LIMIT} are capped to {MAX_LIMIT})."
        ),
        "schema": {"type": "integer", "minimum": 1, "default": queries.DEFAULT_LIMIT},
    },
]
EXPORT_PARAMETER: Final[dict[str, Any]] = {
    "name": "export_format",
    "in": "query",
    "required": False,
    "description": (
        "Export the detailed list (all matching rows, not one page) as a file: `csv`, `xlsx` or `json`. "
        "Large exports answer 202 with an export job (see `/api/v1/exports/`)."
    ),
    "schema": {"type": "string", "enum": ["csv", "xlsx", "json"]},
}
FILTERS_NOTE: Final = (
    " Filters use django-filter names (see each parameter for accepted aliases); unknown parameters are "
    'ignored, and a bad value is a 400 `{"<param>": ["…"], "code": "invalid"}`. Rows come newest '
    "first (`id` descending). A page past the end is a 404."
)
