"""The cancellation-request list filters (Akinon / django-filter names) and the queries behind them.

`RequestFilters.parse(params)` turns a query-string mapping (or a JSON object, e.g. the filter of a bulk
operation) into a validated, typed filter set; `filter_requests(stmt, filters)` narrows any SELECT over
`cancellation_requests`; `list_requests(session, filters, page=, limit=)` is one page of the list.

Query shape, for a list that must stay fast on millions of rows:
* rows come in `ORDER BY id DESC` (newest first), so a page is a backwards walk of the primary key;
* a filter on the request's own columns is a plain predicate; a filter on the order, its customer, the
  order item or the plan is a semi-join (`order_id IN (SELECT id FROM orders WHERE …)`), added only
  when such a filter is present, so the common list never joins;
* case-insensitive filters are written `lower(col) = lower(:value)`, which expression indexes on
  `lower(col)` match;
* `count` is exact up to `EXACT_COUNT_LIMIT` matching rows (a bounded count never reads more) and above
  that it is the planner's estimate (`EXPLAIN`), as Django admin does for big tables.

Easy returns: cancelflow keeps no easy-return records. `easy_return__tracking_number__iexact` (alias
`tracking_number`) matches the order's tracking number; `easy_return__code__iexact` and `easy_return`
(an easy-return id) are accepted and validated for compatibility and match no request.
"""

from __future__ import annotations

import json
import operator
import uuid as uuid_lib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Final, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from sqlalchemy import ColumnElement, Select, and_, false, func, literal, or_, select
from sqlalchemy.orm import Session

from cancelflow.errors import Invalid
from cancelflow.models import CancellationPlan, CancellationRequest, Customer, Order, OrderItem
from cancelflow.models.enums import CancellationType, PlanStatus, RequestStatus
from cancelflow.services import tallies

MAX_BIGINT: Final = 2**63 - 1
MAX_PK_IN: Final = 10_000
MAX_TEXT: Final = 1000
DEFAULT_LIMIT: Final = 10
# Counts at or below this are exact; above it `count` is PostgreSQL's estimate.
EXACT_COUNT_LIMIT: Final = 10_000

# Akinon's CurrencyEnum (price lists) plus the ISO codes real Omnitron payloads carry ("try", "eur").
CURRENCIES: Final[tuple[str, ...]] = (
    "try", "tr", "eur", "eu", "usd", "egp", "gbp", "mad", "pln", "sar", "ron", "uah", "czk", "huf",
    "rub", "bgn", "iqd", "kwd", "bhd", "omr", "qar", "aed", "ngn", "inr", "lei", "kzt", "jod", "rsd",
)  # fmt: skip
_CURRENCY_TWINS: Final[Mapping[str, tuple[str, ...]]] = {
    "try": ("try", "tr"),
    "tr": ("try", "tr"),
    "eur": ("eur", "eu"),
    "eu": ("eur", "eu"),
    "lei": ("lei", "ron"),
}


# --- value types ----------------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    """A date-time without an offset is read as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _int_list(value: Any) -> Any:
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")]
        if any(not part for part in parts):
            raise ValueError("Enter a comma-separated list of integers.")
        return parts
    return value


def _bounded_list(value: list[int]) -> list[int]:
    unique = sorted(set(value))
    if len(unique) > MAX_PK_IN:
        raise ValueError(f"At most {MAX_PK_IN} values are allowed.")
    return unique


def _lower_choice(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
BigInt = Annotated[int, Field(ge=-MAX_BIGINT - 1, le=MAX_BIGINT)]
Id = Annotated[int, Field(ge=1, le=MAX_BIGINT)]
Stamp = Annotated[datetime, AfterValidator(_utc)]
IdList = Annotated[list[BigInt], BeforeValidator(_int_list), AfterValidator(_bounded_list)]

_KindT = TypeVar("_KindT")


# --- the filter set -------------------------------------------------------------------------------------


class RequestFilters(BaseModel):
    """Every list filter of seed 000. Field names are the primary query-parameter names; `ALIASES`
    maps the accepted alternative names onto them. Unset filters are None."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    created_date: Stamp | None = None
    created_date__gt: Stamp | None = None
    created_date__gte: Stamp | None = None
    created_date__lt: Stamp | None = None
    created_date__lte: Stamp | None = None
    created_date__date: date | None = None
    created_date__date__gt: date | None = None
    created_date__date__gte: date | None = None
    created_date__date__lt: date | None = None
    created_date__date__lte: date | None = None
    modified_date: Stamp | None = None
    modified_date__gt: Stamp | None = None
    modified_date__gte: Stamp | None = None
    modified_date__lt: Stamp | None = None
    modified_date__lte: Stamp | None = None
    modified_date__date: date | None = None
    modified_date__date__gt: date | None = None
    modified_date__date__gte: date | None = None
    modified_date__date__lt: date | None = None
    modified_date__date__lte: date | None = None
    uuid: uuid_lib.UUID | None = None
    pk: BigInt | None = None
    pk__gt: BigInt | None = None
    pk__gte: BigInt | None = None
    pk__lt: BigInt | None = None
    pk__lte: BigInt | None = None
    pk__in: IdList | None = None
    cancellation_type: Annotated[CancellationType, BeforeValidator(_lower_choice)] | None = None
    status: Annotated[RequestStatus, BeforeValidator(_lower_choice)] | None = None
    order_number: Text | None = None
    sku: Text | None = None
    channel: BigInt | None = None
    order__customer__first_name__iexact: Text | None = None
    order__customer__last_name__iexact: Text | None = None
    order__customer__email__iexact: Text | None = None
    order: BigInt | None = None
    cancellation_plan_status: Annotated[PlanStatus, BeforeValidator(_lower_choice)] | None = None
    easy_return__code__iexact: Text | None = None
    easy_return__tracking_number__iexact: Text | None = None
    currency: Annotated[str, BeforeValidator(_lower_choice)] | None = None
    order__shipping_option_slug__iexact: Text | None = None
    order_item: BigInt | None = None
    reason: BigInt | None = None
    description: Text | None = None
    iban: Text | None = None
    holder_name: Text | None = None
    easy_return: BigInt | None = None
    quantity: BigInt | None = None
    fully_refund_as_loyalty_money: bool | None = None
    escalated: bool | None = None

    @classmethod
    def parse(cls, params: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> RequestFilters:
        """Validate filters from a query-param mapping (primary names or aliases; other keys ignored).

        Raises `Invalid` (code `invalid`) with `{"<param as sent>": ["message"]}` for any bad value.
        A repeated parameter keeps its last value, as Django's `QueryDict.get` does.
        """
        items = params.items() if isinstance(params, Mapping) else params
        data: dict[str, Any] = {}
        sent_as: dict[str, str] = {}
        for name, value in items:
            field = ALIASES.get(name, name if name in cls.model_fields else None)
            if field is None:
                continue
            if isinstance(value, str) and value == "":
                continue  # django-filter ignores an empty value: `?status=` means "any status"
            data[field] = value
            sent_as[field] = name
        errors: dict[str, list[str]] = {}
        currency = data.get("currency")
        if currency is not None and (
            not isinstance(currency, str) or currency.strip().lower() not in CURRENCIES
        ):
            errors.setdefault(sent_as["currency"], []).append(_choice_message(currency))
            data.pop("currency")
        try:
            filters = cls.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else "non_field_errors"
                errors.setdefault(sent_as.get(field, field), []).append(_message(field, error, data))
            raise Invalid("invalid filter", field_errors=errors, code="invalid") from exc
        if errors:
            raise Invalid("invalid filter", field_errors=errors, code="invalid")
        return filters

    def as_params(self) -> dict[str, str]:
        """The set filters as query parameters (primary names), e.g. to build `next` links or export jobs."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(exclude_none=True, mode="json").items():
            if isinstance(value, list):
                out[name] = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                out[name] = "true" if value else "false"
            else:
                out[name] = str(value)
        return out

    @property
    def is_empty(self) -> bool:
        return not self.model_dump(exclude_none=True)


# Accepted alternative names -> primary name.
ALIASES: Final[Mapping[str, str]] = {
    "id": "pk",
    "id__gt": "pk__gt",
    "id__gte": "pk__gte",
    "id__lt": "pk__lt",
    "id__lte": "pk__lte",
    "id__in": "pk__in",
    "order__number__iexact": "order_number",
    "order__number": "order_number",
    "order_item__product__sku__iexact": "sku",
    "order_item__sku": "sku",
    "order__channel": "channel",
    "customer__channel": "channel",
    "channel_id": "channel",
    "first_name": "order__customer__first_name__iexact",
    "customer__first_name": "order__customer__first_name__iexact",
    "last_name": "order__customer__last_name__iexact",
    "customer__last_name": "order__customer__last_name__iexact",
    "email": "order__customer__email__iexact",
    "customer__email": "order__customer__email__iexact",
    "order_id": "order",
    "cancellation_plan__status": "cancellation_plan_status",
    "plan_status": "cancellation_plan_status",
    "easy_return_code": "easy_return__code__iexact",
    "tracking_number": "easy_return__tracking_number__iexact",
    "order__tracking_number__iexact": "easy_return__tracking_number__iexact",
    "order__currency": "currency",
    "shipping_option_slug": "order__shipping_option_slug__iexact",
    "order__shipping_option_slug": "order__shipping_option_slug__iexact",
    "order_item_id": "order_item",
    "reason_id": "reason",
    "product_description": "description",
    "holder_name__iexact": "holder_name",
    "easy_return_id": "easy_return",
}

CHOICES: Final[Mapping[str, tuple[str, ...]]] = {
    "cancellation_type": tuple(m.value for m in CancellationType),
    "status": tuple(m.value for m in RequestStatus),
    "cancellation_plan_status": tuple(m.value for m in PlanStatus),
    "currency": CURRENCIES,
}


def _message(field: str, error: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    kind = str(error.get("type", ""))
    if field in CHOICES:
        return _choice_message(data.get(field))
    if field.startswith(("created_date", "modified_date")):
        return "Enter a valid date." if "__date" in field else "Enter a valid date/time."
    if field == "uuid":
        return "Enter a valid UUID."
    if field == "pk__in":
        if kind == "value_error":
            return str(error.get("ctx", {}).get("error", "Enter a comma-separated list of integers."))
        return "Enter a comma-separated list of integers."
    if kind.startswith("bool"):
        return "Enter a valid boolean: true or false."
    if kind.startswith("int") or kind in ("less_than_equal", "greater_than_equal"):
        if kind == "less_than_equal":
            return f"Ensure this value is less than or equal to {MAX_BIGINT}."
        if kind == "greater_than_equal":
            return f"Ensure this value is greater than or equal to {-MAX_BIGINT - 1}."
        return "A valid integer is required."
    if kind == "string_too_long":
        return f"Ensure this field has no more than {MAX_TEXT} characters."
    return str(error.get("msg", "Invalid value."))


def _choice_message(value: object) -> str:
    shown = value if isinstance(value, str) else json.dumps(value, default=str)
    return f"Select a valid choice. {shown} is not one of the available choices."


# --- the query ------------------------------------------------------------------------------------------


def _ci(column: Any, value: str) -> ColumnElement[bool]:
    """Case-insensitive equality that an expression index on lower(column) serves."""
    result: ColumnElement[bool] = func.lower(column) == func.lower(literal(value))
    return result


_OPS: Final[Mapping[str, Any]] = {
    "": operator.eq,
    "__gt": operator.gt,
    "__gte": operator.ge,
    "__lt": operator.lt,
    "__lte": operator.le,
}


def _compared(column: Any, prefix: str, filters: RequestFilters) -> list[ColumnElement[bool]]:
    """The `prefix`, `prefix__gt`, … filters that are set, as comparisons of `column` (see `_OPS`)."""
    return [
        op(column, value)
        for suffix, op in _OPS.items()
        if (value := getattr(filters, f"{prefix}{suffix}")) is not None
    ]


def _day_bounds(day: date) -> tuple[datetime, datetime | None]:
    """The UTC day as [start, end); end is None for date.max (nothing comes after it)."""
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, None if day == date.max else start + timedelta(days=1)


def _date_conditions(column: Any, prefix: str, filters: RequestFilters) -> list[ColumnElement[bool]]:
    """Range predicates on the raw column (index-friendly: the column is never cast to a date)."""
    out = _compared(column, prefix, filters)
    day: date | None = getattr(filters, f"{prefix}__date")
    if day is not None:
        start, end = _day_bounds(day)
        out.append(column >= start)
        if end is not None:
            out.append(column < end)
    # Day lookups compare whole UTC days: `__date__gt=D` means "from the start of D+1 on".
    for suffix, (after_day, op) in {
        "__date__gt": (True, operator.ge),
        "__date__gte": (False, operator.ge),
        "__date__lt": (False, operator.lt),
        "__date__lte": (True, operator.lt),
    }.items():
        day = getattr(filters, f"{prefix}{suffix}")
        if day is None:
            continue
        start, end = _day_bounds(day)
        bound = end if after_day else start
        if bound is None:  # the last representable day: nothing is after it, everything is before it
            out.append(false() if op is operator.ge else column.is_not(None))
        else:
            out.append(op(column, bound))
    return out


# Filters that compare one column with the value as given (`_set_filters`), by the filter's name.
_EQUAL: Final[Mapping[str, Any]] = {
    "cancellation_type": CancellationRequest.cancellation_type,
    "status": CancellationRequest.status,
    "channel": CancellationRequest.channel_id,
    "order": CancellationRequest.order_id,
    "order_item": CancellationRequest.order_item_id,
    "reason": CancellationRequest.reason_id,
    "description": CancellationRequest.description,
    "quantity": CancellationRequest.quantity,
}
_ORDER_IEXACT: Final[Mapping[str, Any]] = {
    "order_number": Order.number,
    "easy_return__tracking_number__iexact": Order.tracking_number,
    "order__shipping_option_slug__iexact": Order.shipping_option_slug,
}
_CUSTOMER_IEXACT: Final[Mapping[str, Any]] = {
    "order__customer__first_name__iexact": Customer.first_name,
    "order__customer__last_name__iexact": Customer.last_name,
    "order__customer__email__iexact": Customer.email,
}


def _set_filters(
    filters: RequestFilters, compare: Callable[[Any, Any], ColumnElement[bool]], columns: Mapping[str, Any]
) -> list[ColumnElement[bool]]:
    """`compare(column, value)` for each filter named in `columns` that is set, in that order."""
    return [
        compare(column, value)
        for name, column in columns.items()
        if (value := getattr(filters, name)) is not None
    ]


def filter_requests(
    stmt: Select[Any], filters: RequestFilters, *, channel_id: int | None = None
) -> Select[Any]:
    """Add `filters` (and a channel scope) to a SELECT whose FROM includes `cancellation_requests`."""
    cr = CancellationRequest
    where: list[ColumnElement[bool]] = []
    if channel_id is not None:
        where.append(cr.channel_id == channel_id)
    where += _date_conditions(cr.created_date, "created_date", filters)
    where += _date_conditions(cr.modified_date, "modified_date", filters)
    f = filters
    if f.uuid is not None:
        where.append(cr.uuid == f.uuid)
    where += _compared(cr.id, "pk", f)
    if f.pk__in is not None:
        where.append(cr.id.in_(f.pk__in) if f.pk__in else false())
    where += _set_filters(f, operator.eq, _EQUAL)
    if f.iban is not None:
        where.append(cr.iban == "".join(f.iban.split()).upper())
    where += _set_filters(f, _ci, {"holder_name": cr.holder_name})
    if f.fully_refund_as_loyalty_money is not None:
        where.append(cr.fully_refund_as_loyalty_money.is_(f.fully_refund_as_loyalty_money))
    if f.easy_return__code__iexact is not None or f.easy_return is not None:
        where.append(false())  # no easy-return records exist (module docstring)

    # The order and its customer: one semi-join, only when asked for.
    order_where = _set_filters(f, _ci, _ORDER_IEXACT)
    if f.currency is not None:
        order_where.append(Order.currency.in_(_CURRENCY_TWINS.get(f.currency, (f.currency,))))
    customer_where = _set_filters(f, _ci, _CUSTOMER_IEXACT)
    if customer_where:
        order_where.append(Order.customer_id.in_(select(Customer.id).where(*customer_where)))
    if order_where:
        where.append(cr.order_id.in_(select(Order.id).where(*order_where)))

    if f.sku is not None:
        where.append(cr.order_item_id.in_(select(OrderItem.id).where(_ci(OrderItem.sku, f.sku))))

    plan_where: list[ColumnElement[bool]] = []
    if f.cancellation_plan_status is not None:
        plan_where.append(CancellationPlan.status == f.cancellation_plan_status)
    if f.escalated is True:
        plan_where.append(CancellationPlan.escalated_at.is_not(None))
    if plan_where:
        where.append(cr.id.in_(select(CancellationPlan.request_id).where(*plan_where)))
    if f.escalated is False:
        where.append(
            cr.id.not_in(
                select(CancellationPlan.request_id).where(CancellationPlan.escalated_at.is_not(None))
            )
        )
    return stmt.where(and_(*where)) if where else stmt


# --- pages ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Page:
    """One page of requests, newest first. `count_is_estimate`: `count` came from the planner."""

    count: int
    results: Sequence[CancellationRequest]
    page: int
    limit: int
    has_next: bool
    count_is_estimate: bool = False

    @property
    def has_previous(self) -> bool:
        return self.page > 1


def count_requests(
    session: Session,
    filters: RequestFilters,
    *,
    channel_id: int | None = None,
    exact_up_to: int | None = None,
) -> tuple[int, bool]:
    """(count, is_estimate): exact up to `exact_up_to` rows, else the planner's estimate. With no
    filter but the status, the exact count of the tally rows (`services.tallies`), whatever the size."""
    if channel_id is None and set(filters.model_dump(exclude_none=True)) <= {"status"}:
        counted = tallies.counts(session, "requests")
        return (counted.get(filters.status.value, 0) if filters.status else sum(counted.values())), False
    return count_matching(
        session,
        filter_requests(select(CancellationRequest.id), filters, channel_id=channel_id),
        exact_up_to=exact_up_to,
    )


def count_matching(session: Session, ids: Select[Any], *, exact_up_to: int | None = None) -> tuple[int, bool]:
    """(count, is_estimate) of the rows `ids` selects: exact up to `exact_up_to` (default
    EXACT_COUNT_LIMIT, read at call time), else the planner's."""
    if exact_up_to is None:
        exact_up_to = EXACT_COUNT_LIMIT
    bounded = session.scalar(select(func.count()).select_from(ids.limit(exact_up_to + 1).subquery()))
    exact = int(bounded or 0)
    if exact <= exact_up_to:
        return exact, False
    return max(_estimate(session, ids), exact), True


def page_window(
    session: Session,
    ids: Select[Any],
    key: Any,
    *,
    page: int,
    limit: int,
    after: int | None = None,
    before: int | None = None,
) -> tuple[list[int], bool]:
    """(ids of one page, newest first; has_next) of `ids` ordered by `key` descending.

    `after` / `before` (a request id, from the links of the neighbouring page) seek the index on `key`
    instead of skipping `(page - 1) * limit` rows, so following `next` is as fast on page 50,000 as on
    page 2. Without them the skipped rows are walked in that index only (index-only when nothing else
    filters); the caller reads full rows for the page itself.
    """
    if before is not None:
        # The page before: the `limit` nearest ids above `before`, read upwards.
        found = list(session.scalars(ids.where(key > before).order_by(key.asc()).limit(limit)))[::-1]
        return found, bool(session.scalar(select(ids.where(key <= before).exists())))
    window = ids.where(key < after) if after is not None else ids.offset((page - 1) * limit)
    found = list(session.scalars(window.order_by(key.desc()).limit(limit + 1)))
    return found[:limit], len(found) > limit


def _date_window(
    session: Session,
    ids: Select[Any],
    date_key: Any,
    *,
    page: int,
    limit: int,
    after: int | None = None,
    before: int | None = None,
) -> tuple[list[int], bool]:
    """`page_window` ordered by (`date_key`, id) descending. The cursors stay request ids: the seek
    starts at that request's (date, id), read first; a cursor that names no request starts at the top."""
    cr = CancellationRequest
    keyed = ids.add_columns(date_key)
    cursor = after if after is not None else before
    at = session.scalar(select(date_key).where(cr.id == cursor)) if cursor is not None else None
    if before is not None and at is not None:
        above = or_(date_key > at, and_(date_key == at, cr.id > before))
        upwards = keyed.where(date_key >= at, above).order_by(date_key.asc(), cr.id.asc()).limit(limit)
        found = [row[0] for row in session.execute(upwards)][::-1]
        below = or_(date_key < at, and_(date_key == at, cr.id <= before))
        return found, bool(session.scalar(select(ids.where(date_key <= at, below).exists())))
    if after is not None and at is not None:
        window = keyed.where(date_key <= at, or_(date_key < at, and_(date_key == at, cr.id < after)))
    else:
        window = keyed.offset((page - 1) * limit)
    found = [
        row[0] for row in session.execute(window.order_by(date_key.desc(), cr.id.desc()).limit(limit + 1))
    ]
    return found[:limit], len(found) > limit


def status_counts(
    session: Session, matching: Select[Any], *, exact_up_to: int
) -> tuple[dict[str, tuple[int, bool]], tuple[int, bool]]:
    """({status: (count, is_estimate)}, (total, is_estimate)) of the requests `matching` selects (a SELECT
    of `cancellation_requests.id` under filters), for status tabs.

    One scan of at most `exact_up_to + 1` matching rows counts every status at once: exact when the
    filters match no more. Past that, each status is the planner's estimate: a count per status would
    walk each status's rows looking for the filter's, slowest exactly where the pair is rare. When the
    planner expects far more matches than the bound, the scan is skipped."""
    guess = _estimate(session, matching)
    if guess > 4 * exact_up_to:  # the scan would end past its bound anyway: go straight to the estimates
        return _status_estimates(session, matching), (guess, True)
    sample = matching.with_only_columns(CancellationRequest.status).limit(exact_up_to + 1).subquery()
    counted: dict[str, int] = {}
    for status, n in session.execute(select(sample.c.status, func.count()).group_by(sample.c.status)):
        counted[str(getattr(status, "value", status))] = int(n)
    total = sum(counted.values())
    if total <= exact_up_to:
        return {s.value: (counted.get(s.value, 0), False) for s in RequestStatus}, (total, False)
    return _status_estimates(session, matching), (max(guess, total), True)


def _status_estimates(session: Session, matching: Select[Any]) -> dict[str, tuple[int, bool]]:
    return {
        s.value: (_estimate(session, matching.where(CancellationRequest.status == s)), True)
        for s in RequestStatus
    }


def status_tabs(
    session: Session, filters: RequestFilters, *, tag: str | None = None, exact_up_to: int
) -> tuple[dict[str, tuple[int, bool]], tuple[int, bool]]:
    """`status_counts` of the requests under `filters` but their status (and carrying `tag`): exact from
    the tally rows when nothing else filters."""
    from cancelflow.services import tags

    others = filters.model_copy(update={"status": None})
    if tag is None and others.is_empty:
        counted = tallies.counts(session, "requests")
        return {s.value: (counted.get(s.value, 0), False) for s in RequestStatus}, (
            sum(counted.values()),
            False,
        )
    matching = (
        tags.tagged_ids(session, others, [tag])
        if tag
        else filter_requests(select(CancellationRequest.id), others)
    )
    return status_counts(session, matching, exact_up_to=exact_up_to)


def _estimate(session: Session, stmt: Select[Any]) -> int:
    connection = session.connection()
    compiled = stmt.compile(dialect=connection.dialect, compile_kwargs={"render_postcompile": True})
    row = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", compiled.params).scalar()
    plan = row if isinstance(row, list) else json.loads(str(row))
    return int(plan[0]["Plan"]["Plan Rows"])


def date_order(filters: RequestFilters) -> Any | None:
    """The column a list under `filters` is best read newest-first by: `created_date` when a created-date
    bound is set, else `modified_date` when a modified-date bound is, else None (the id).

    Under a date bound the id index is the wrong road: "created until a year ago" walks every newer id
    before the first match. Read by the bounded column, the index starts at the bound. Ids and creation
    times run together, so the order a reader sees is the same "newest first"."""
    set_ = filters.model_dump(exclude_none=True)
    for prefix, column in (
        ("created_date", CancellationRequest.created_date),
        ("modified_date", CancellationRequest.modified_date),
    ):
        if any(name == prefix or name.startswith(f"{prefix}__") for name in set_):
            return column
    return None


def list_requests(
    session: Session,
    filters: RequestFilters,
    page: int = 1,
    limit: int = DEFAULT_LIMIT,
    *,
    channel_id: int | None = None,
    after: int | None = None,
    before: int | None = None,
    by_date: bool = False,
    known_count: tuple[int, bool] | None = None,
) -> Page:
    """One page of matching requests, `ORDER BY id DESC` (keyset rules: `page_window`); with `by_date`
    and a date bound among `filters`, newest first by that date (`date_order`), ties by id."""
    matching = filter_requests(select(CancellationRequest.id), filters, channel_id=channel_id)
    return read_page(
        session,
        matching,
        CancellationRequest.id,
        page=page,
        limit=limit,
        after=after,
        before=before,
        date_key=date_order(filters) if by_date else None,
        known_count=known_count,
    )


def read_page(
    session: Session,
    ids: Select[Any],
    key: Any,
    *,
    page: int,
    limit: int,
    after: int | None = None,
    before: int | None = None,
    date_key: Any | None = None,
    known_count: tuple[int, bool] | None = None,
) -> Page:
    """The `Page` of requests whose ids `ids` selects, newest first by `key` (or by `date_key`, then
    id), with its count (`known_count` when the caller has counted them already)."""
    if date_key is None:
        page_ids, has_next = page_window(
            session, ids, key, page=page, limit=limit, after=after, before=before
        )
        order: tuple[Any, ...] = (CancellationRequest.id.desc(),)
    else:
        page_ids, has_next = _date_window(
            session, ids, date_key, page=page, limit=limit, after=after, before=before
        )
        order = (date_key.desc(), CancellationRequest.id.desc())
    rows = (
        list(
            session.scalars(
                select(CancellationRequest).where(CancellationRequest.id.in_(page_ids)).order_by(*order)
            )
        )
        if page_ids
        else []
    )
    if page == 1 and not has_next:
        count, estimated = len(rows), False  # the whole result is on this page: no count query needed
    elif known_count is not None:
        count, estimated = known_count
    else:
        count, estimated = count_matching(session, ids)
    return Page(
        count=count, results=rows, page=page, limit=limit, has_next=has_next, count_is_estimate=estimated
    )


__all__ = [
    "ALIASES",
    "CHOICES",
    "CURRENCIES",
    "DEFAULT_LIMIT",
    "EXACT_COUNT_LIMIT",
    "Page",
    "RequestFilters",
    "count_matching",
    "count_requests",
    "filter_requests",
    "list_requests",
    "page_window",
    "read_page",
]
