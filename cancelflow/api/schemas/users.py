"""Bodies of the login and current-user routes (`api.users`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints


class LoginIn(BaseModel):
    model_config = ConfigDict(
        extra="ignore", json_schema_extra={"example": {"username": "alice", "password": "s3cret-pass"}}
    )

    username: Annotated[str, StringConstraints(min_length=1, max_length=1000)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class LoginOut(BaseModel):
    key: str = Field(description="The API key; send it as `Authorization: Token <key>`.")


class ActiveUserOut(BaseModel):
    pk: int | None = Field(
        description="The user's id; null for a token made with `cancelflow tokens create`."
    )
    username: str = Field(description="The user's name, or the token's name when no user is behind it.")
    first_name: str
    last_name: str
    email: str
    is_staff: bool
    is_active: bool
    permissions: list[str]
    token_kind: str
    channel: int | None
    last_login: datetime | None
