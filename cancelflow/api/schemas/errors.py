"""Error bodies as the OpenAPI document shows them (`api.errors` builds them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, RootModel


class ShopifyError(BaseModel):
    """Shopify Admin REST error body."""

    errors: str | dict[str, list[str]] = Field(
        description='A message (`"Not Found"`) or messages per field (`{"assignment_status": ["..."]}`).'
    )


class AkinonDetail(BaseModel):
    """Akinon (DRF) error body for 401, 403, 404, 409."""

    detail: str
    code: str | None = None


class AkinonValidationError(RootModel[dict[str, list[str] | str]]):
    """Akinon (DRF) 400 body: `{"<field>": ["msg", ...], "code": "..."}` or
    `{"non_field_errors": ["msg"], "code": "..."}`, or `{"detail": "...", "code": "parse_error"}`."""

    model_config = ConfigDict(
        json_schema_extra={"example": {"orders.0.items": ["This field is required."], "code": "invalid"}}
    )
