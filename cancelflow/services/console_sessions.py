"""Console sessions: a staff user signed in to the console with the same credentials and throttle as
`POST /api/v1/auth/login/` (`users.authenticate`).

The browser keeps a random key in a cookie; only its SHA-256 is stored, with the session's CSRF token. A
session ends when the user signs out, after `CANCELFLOW_CONSOLE_SESSION_IDLE` seconds without a request,
or when the user's password changes or the user is deactivated (`users`). API tokens play no part here.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cancelflow.models import ConsoleSession, User
from cancelflow.services import users
from cancelflow.services.clock import now

# A session's last use is written at most this often, so reading pages does not write a row each time.
TOUCH_EVERY: Final = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class SignedIn:
    """The session of a request and its user."""

    session: ConsoleSession
    user: User

    @property
    def can_view_iban(self) -> bool:
        return "view_iban" in self.user.permissions

    @property
    def actor(self) -> str:
        return f"staff (user:{self.user.id})"

    def csrf_matches(self, sent: str | None) -> bool:
        """The CSRF token sent with a state-changing request, compared in constant time."""
        return sent is not None and hmac.compare_digest(sent.encode(), self.session.csrf_token.encode())


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def sign_in(session: Session, username: str, password: str, *, client: str) -> tuple[str, SignedIn]:
    """Check the credentials (`users.authenticate`: throttled, `Invalid` on any failure) and open a session;
    returns (the cookie's key, the session)."""
    user = users.authenticate(session, username, password, client=client)
    key = secrets.token_urlsafe(32)
    row = ConsoleSession(
        key_hash=_hash(key), user_id=user.id, csrf_token=secrets.token_urlsafe(32), last_seen_at=now()
    )
    session.add(row)
    user.last_login = now()
    session.flush()
    return key, SignedIn(row, user)


def resume(session: Session, key: str | None, *, idle: timedelta, touch: bool = True) -> SignedIn | None:
    """The live session of a cookie's key, or None (unknown, idle too long, user inactive or not staff).
    An idle session is deleted; a live one's last use is moved forward unless `touch` is false (a page
    refreshing itself, which must not keep a session alive)."""
    if not key or len(key) > 200:
        return None
    row = session.scalars(select(ConsoleSession).where(ConsoleSession.key_hash == _hash(key))).one_or_none()
    if row is None:
        return None
    moment = now()
    user = session.get(User, row.user_id)
    if moment - row.last_seen_at > idle or user is None or not user.is_active or not user.is_staff:
        session.delete(row)
        session.flush()
        return None
    if touch and moment - row.last_seen_at > TOUCH_EVERY:
        row.last_seen_at = moment
        session.flush()
    return SignedIn(row, user)


def sign_out(session: Session, key: str | None) -> None:
    if key:
        session.execute(delete(ConsoleSession).where(ConsoleSession.key_hash == _hash(key)))
        session.flush()
