"""Bodies of the background-job routes (`api.bulk_jobs`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from cancelflow.api.schemas.common import FromRow
from cancelflow.models import JobStatus


class JobAccepted(BaseModel):
    """202 body: the job was queued; poll `url` until `status` is `done` or `failed`."""

    id: uuid.UUID
    url: str = Field(
        description="The job's progress resource: absolute under the configured public base URL, else a path."
    )


class BulkJobOut(FromRow):
    id: uuid.UUID
    kind: str = Field(description="`tags.bulk_add` or `tags.bulk_remove`.")
    status: JobStatus
    total: int = Field(description="Requests selected when the job was created.")
    done: int = Field(description="Requests handled so far (committed chunks).")
    keys: list[str] = Field(validation_alias="params")
    error: str | None
    created_date: datetime
    modified_date: datetime
    finished_at: datetime | None

    @field_validator("keys", mode="before")
    @classmethod
    def _keys_of_params(cls, value: Any) -> Any:
        """The job's `params` hold its keys (FastAPI's second validation passes the list itself)."""
        keys: Any = value.get("keys", []) if isinstance(value, dict) else value
        return [str(k) for k in keys]
