"""What every response schema shares: validation from a row's attributes (`FromRow`), constants, JSON columns.

A field named as its attribute reads it; a field named otherwise says where it comes from (`validation_alias`).
"""

from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

MAX_ID: Final = 2**63 - 1


def _undocumented_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def constant(value: Any, description: str | None = None) -> Any:
    """A field cancelflow always answers with `value` (the seed has it, cancelflow keeps no data for it):
    not read from the row, and documented as the required field it is, without a default."""
    return Field(default=value, description=description, json_schema_extra=_undocumented_default)


class FromRow(BaseModel):
    """A response read from attributes; FastAPI validates it again by field name when it sends it."""

    model_config = ConfigDict(
        from_attributes=True, validate_by_name=True, json_schema_serialization_defaults_required=True
    )


def mapping(value: Any) -> Any:
    """A JSON column as a dict (null: empty)."""
    return {} if value is None else dict(value)
