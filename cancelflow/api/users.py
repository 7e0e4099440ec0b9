"""Omnitron's login and current-user endpoints: `POST /api/v1/auth/login/` and `GET /api/v1/active_user/`.

A login answers `{"key": "<token>"}` (DRF's `obtain_auth_token`), to be sent as `Authorization: Token
<key>`. Every login makes a new token for the user (only hashes of keys are stored, so an earlier key
cannot be returned again); changing the password or deactivating the user revokes them all.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from cancelflow.api.auth import AkinonCaller
from cancelflow.api.deps import DbSession
from cancelflow.api.errors import AKINON_RESPONSES
from cancelflow.api.schemas.users import ActiveUserOut, LoginIn, LoginOut
from cancelflow.api.throttling import THROTTLED_RESPONSE
from cancelflow.db import transaction
from cancelflow.services import throttle, users

router = APIRouter(prefix="/api/v1", tags=["auth"], responses=AKINON_RESPONSES)


@router.post(
    "/auth/login/",
    response_model=LoginOut,
    summary="Log in for an API token",
    description=(
        'Check `{"username", "password"}` and answer `{"key"}`. Every failure (unknown user, wrong '
        "password, inactive user, user without staff access) is the same 400 "
        '`{"non_field_errors": ["Unable to log in with provided credentials."], "code": "authorization"}`. '
        "Attempts are limited per username (until one succeeds) and per client address: over a limit "
        "the answer is a 429 with `Retry-After`. No token is needed."
    ),
    responses={429: THROTTLED_RESPONSE},
)
async def login(body: LoginIn, request: Request) -> LoginOut:
    client = request.client.host if request.client is not None else "unknown"

    def work() -> str:
        with transaction() as session:
            return users.login(session, body.username, body.password, client=client)[1]

    return LoginOut(key=await throttle.run_login(work))


@router.get(
    "/active_user/",
    response_model=ActiveUserOut,
    summary="The user behind the token",
    description="The logged-in user of the `Authorization: Token` key (any token kind).",
)
def active_user(principal: AkinonCaller, session: DbSession) -> ActiveUserOut:
    token, user = users.user_of_token(session, principal.token_id)
    if user is None:
        return ActiveUserOut(
            pk=None,
            username=token.name,
            first_name="",
            last_name="",
            email="",
            is_staff=principal.is_staff,
            is_active=token.revoked_at is None,
            permissions=sorted(principal.permissions),
            token_kind=principal.kind.value,
            channel=principal.channel_id,
            last_login=None,
        )
    return ActiveUserOut(
        pk=user.id,
        username=user.username,
        first_name=user.first_name,
        last_name=user.last_name,
        email=user.email,
        is_staff=user.is_staff,
        is_active=user.is_active,
        permissions=sorted(principal.permissions),
        token_kind=principal.kind.value,
        channel=principal.channel_id,
        last_login=user.last_login,
    )
