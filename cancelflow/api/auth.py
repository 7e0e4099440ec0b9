"""Who is calling: API tokens in the two header styles the project speaks.

* Akinon / Omnitron, under `/api/v1/`: `Authorization: Token <key>`.
* Shopify Admin, under `/admin/api/`: `X-Shopify-Access-Token: <key>`.

Both resolve the key with `services.tokens.authenticate` to a `Principal`. The dependencies below are
what routers declare; the kind checks raise `Forbidden`, mapped to 403 in the path's dialect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader

from cancelflow.api.errors import SHOPIFY_UNAUTHORIZED, Unauthenticated
from cancelflow.db import new_session, statements_alone
from cancelflow.errors import Forbidden
from cancelflow.models.enums import TokenKind
from cancelflow.services import tokens


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: int
    kind: TokenKind
    fulfillment_service_id: int | None
    channel_id: int | None
    permissions: tuple[str, ...]
    # The logged-in user behind the token (POST /api/v1/auth/login/); None for CLI-made tokens.
    user_id: int | None = None

    @property
    def is_staff(self) -> bool:
        return self.kind == TokenKind.staff

    @property
    def is_fulfillment_service(self) -> bool:
        return self.kind == TokenKind.fulfillment_service

    @property
    def visible_service_id(self) -> int | None:
        """The service whose fulfillment orders this caller is limited to (None: staff, sees all)."""
        return self.fulfillment_service_id if self.is_fulfillment_service else None


akinon_token_header = APIKeyHeader(
    name="Authorization",
    scheme_name="Token",
    description="Akinon / Omnitron style, for `/api/v1/...`: `Authorization: Token <key>`.",
    auto_error=False,
)
shopify_token_header = APIKeyHeader(
    name="X-Shopify-Access-Token",
    scheme_name="ShopifyAccessToken",
    description="Shopify Admin style, for `/admin/api/...`: `X-Shopify-Access-Token: <key>`.",
    auto_error=False,
)


def lookup(key: str) -> Principal | None:
    """The principal behind `key`, or None for an unknown or revoked key."""
    # One round trip: the read is sent alone, without BEGIN and the ROLLBACK the pool sends when the
    # connection is given back.
    with new_session() as session, statements_alone(session):
        token = tokens.authenticate(session, key)
        if token is None:
            return None
        return Principal(
            token_id=token.id,
            kind=TokenKind(token.kind),
            fulfillment_service_id=token.fulfillment_service_id,
            channel_id=token.channel_id,
            permissions=tuple(token.permissions or ()),
            user_id=token.user_id,
        )


def akinon_principal(authorization: Annotated[str | None, Security(akinon_token_header)] = None) -> Principal:
    """`Authorization: Token <key>`, with DRF's TokenAuthentication messages."""
    parts = (authorization or "").split()
    if not parts or parts[0].lower() != "token":
        raise Unauthenticated("Authentication credentials were not provided.", code="not_authenticated")
    if len(parts) == 1:
        raise Unauthenticated("Invalid token header. No credentials provided.", code="authentication_failed")
    if len(parts) > 2:
        raise Unauthenticated(
            "Invalid token header. Token string should not contain spaces.", code="authentication_failed"
        )
    principal = lookup(parts[1])
    if principal is None:
        raise Unauthenticated("Invalid token.", code="authentication_failed")
    return principal


def shopify_principal(key: Annotated[str | None, Security(shopify_token_header)] = None) -> Principal:
    """`X-Shopify-Access-Token: <key>`; Shopify answers a missing and a wrong key alike."""
    if not key:
        raise Unauthenticated(SHOPIFY_UNAUTHORIZED, code="not_authenticated")
    principal = lookup(key.strip())
    if principal is None:
        raise Unauthenticated(SHOPIFY_UNAUTHORIZED, code="authentication_failed")
    return principal


_AKINON_DENIED = "You do not have permission to perform this action."


def akinon_staff(principal: Annotated[Principal, Depends(akinon_principal)]) -> Principal:
    if not principal.is_staff:
        raise Forbidden(_AKINON_DENIED)
    return principal


def shopify_staff(principal: Annotated[Principal, Depends(shopify_principal)]) -> Principal:
    """The merchant side (staff tokens): sends cancellation requests."""
    if not principal.is_staff:
        raise Forbidden("[API] This action requires a staff (merchant) access token.")
    return principal


def shopify_service(principal: Annotated[Principal, Depends(shopify_principal)]) -> Principal:
    """The fulfillment-service side: answers the requests about its own fulfillment orders."""
    if not principal.is_fulfillment_service or principal.fulfillment_service_id is None:
        raise Forbidden("[API] This action requires the assigned fulfillment service's access token.")
    return principal


def shopify_reader(principal: Annotated[Principal, Depends(shopify_principal)]) -> Principal:
    """Staff (every fulfillment order) or a fulfillment service (its own)."""
    if principal.is_staff:
        return principal
    return shopify_service(principal)


AkinonCaller = Annotated[Principal, Depends(akinon_principal)]
AkinonStaff = Annotated[Principal, Depends(akinon_staff)]
ShopifyStaff = Annotated[Principal, Depends(shopify_staff)]
ShopifyService = Annotated[Principal, Depends(shopify_service)]
ShopifyReader = Annotated[Principal, Depends(shopify_reader)]
