"""Bodies of the tag routes (`api.tags`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from cancelflow.models.tags import TAG_KEY_MAX_LENGTH

TagKey = Annotated[str, StringConstraints(min_length=1, max_length=TAG_KEY_MAX_LENGTH)]


class TagBody(BaseModel):
    key: TagKey = Field(description="Tag key to add to (or remove from) the object.", examples=["tag1"])


class TagsBody(BaseModel):
    keys: list[TagKey] = Field(min_length=1, description="List of tag keys.", examples=[["tag1", "tag2"]])


class BulkTagsBody(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": {"objects": [1, 2, 3], "keys": ["tag1"]}})

    objects: list[Annotated[int, Field(gt=0, le=2**63 - 1)]] = Field(
        min_length=1,
        description="List of cancellation request ids (`ids` is accepted as an alias). Unknown ids, "
        "and on the channel route ids of other channels, are skipped.",
    )
    keys: list[TagKey] = Field(min_length=1, description="List of tag keys.")

    @model_validator(mode="before")
    @classmethod
    def _ids_alias(cls, data: Any) -> Any:
        if isinstance(data, dict) and "objects" not in data and "ids" in data:
            data = {**data, "objects": data["ids"]}
            del data["ids"]
        return data
