"""Body of the health check (`api.health`)."""

from __future__ import annotations

from pydantic import BaseModel


class Health(BaseModel):
    ok: bool
    database: str
