"""API tokens: made, checked and revoked here. Keys are random; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from cancelflow.errors import Invalid
from cancelflow.models import ApiToken, FulfillmentService
from cancelflow.models.enums import TokenKind
from cancelflow.services.clock import now


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return secrets.token_hex(20)


def _service_id(session: Session, handle: str | None) -> int | None:
    if handle is None:
        return None
    service_id = session.scalars(
        select(FulfillmentService.id).where(FulfillmentService.handle == handle)
    ).first()
    if service_id is None:
        raise Invalid(f"unknown fulfillment service {handle!r}", code="unknown_fulfillment_service")
    return service_id


def ensure_token(
    session: Session,
    *,
    name: str,
    kind: str | TokenKind,
    key: str,
    fulfillment_service_handle: str | None = None,
    channel_id: int | None = None,
    permissions: Iterable[str] = (),
) -> ApiToken:
    """Create the named token with this key, or bring an existing one of that name to it."""
    token_kind = TokenKind(kind)
    if token_kind == TokenKind.fulfillment_service and fulfillment_service_handle is None:
        raise Invalid("a fulfillment-service token needs the service's handle", code="missing_service")
    service_id = _service_id(session, fulfillment_service_handle)
    token = session.scalars(select(ApiToken).where(ApiToken.name == name)).one_or_none()
    if token is None:
        token = ApiToken(name=name)
        session.add(token)
    token.kind = token_kind
    token.key_hash = hash_key(key)
    token.key_prefix = key[:8]
    token.fulfillment_service_id = service_id
    token.channel_id = channel_id
    token.permissions = sorted(set(permissions))
    token.revoked_at = None
    session.flush()
    return token


def create_token(
    session: Session,
    *,
    name: str,
    kind: str | TokenKind,
    fulfillment_service_handle: str | None = None,
    channel_id: int | None = None,
    permissions: Iterable[str] = (),
) -> tuple[ApiToken, str]:
    """Make a new token; the key is returned once and never stored."""
    if session.scalars(select(ApiToken.id).where(ApiToken.name == name)).first() is not None:
        raise Invalid(f"a token named {name!r} exists", code="duplicate_token")
    key = new_key()
    token = ensure_token(
        session,
        name=name,
        kind=kind,
        key=key,
        fulfillment_service_handle=fulfillment_service_handle,
        channel_id=channel_id,
        permissions=permissions,
    )
    return token, key


# Built once: every authenticated request runs it.
_BY_KEY_HASH = select(ApiToken).where(ApiToken.key_hash == bindparam("key_hash"))


def authenticate(session: Session, key: str) -> ApiToken | None:
    if not key or len(key) > 200:
        return None
    token = session.scalars(_BY_KEY_HASH, {"key_hash": hash_key(key)}).one_or_none()
    if token is None or token.revoked_at is not None:
        return None
    return token


def revoke(session: Session, name: str) -> bool:
    token = session.scalars(select(ApiToken).where(ApiToken.name == name)).one_or_none()
    if token is None or token.revoked_at is not None:
        return False
    token.revoked_at = now()
    return True
