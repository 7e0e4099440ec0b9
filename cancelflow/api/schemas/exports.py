"""Bodies of the export routes (`api.exports`)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from cancelflow.models import ExportFormat, JobStatus


class ExportJobOut(BaseModel):
    id: uuid.UUID
    format: ExportFormat
    status: JobStatus
    total: int = Field(description="Rows the export has (when the job was created; exact once done).")
    done: int = Field(description="Rows written so far.")
    filters: dict[str, object] = Field(description="The list filters the export applies.")
    download_url: str | None = Field(description="Where to get the file, once `status` is `done`.")
    error: str | None
    created_date: datetime
    modified_date: datetime
    finished_at: datetime | None
