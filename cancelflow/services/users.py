"""Users who log in with a username and password for an API token (Omnitron's `auth/login/`).

Passwords are stored as scrypt hashes with a random salt. Each login makes a new staff token tied to the
user: only a hash of every key is stored, so an earlier key cannot be handed out again. The token carries
the user's permissions (kept in step when they change); an inactive user's tokens stop working.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from typing import Final

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from cancelflow.errors import Invalid, NotFound
from cancelflow.models import ApiToken, ConsoleSession, User
from cancelflow.models.enums import TokenKind
from cancelflow.services import tokens
from cancelflow.services.clock import now
from cancelflow.services.throttle import Throttle, get_throttle, login_rules

# scrypt cost: ~50 ms per check on a laptop core, 16 MiB of memory.
SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
MAX_PASSWORD: Final = 1024
KNOWN_PERMISSIONS: Final = frozenset({"view_iban"})
LOGIN_FAILED: Final = "Unable to log in with provided credentials."
# Checked against when the username is unknown or the password over-long, so every failure costs one hash.
_DUMMY_HASH: Final = "scrypt$16384$8$1$00000000000000000000000000000000$" + "0" * 128


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024 * 1024, dklen=64
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        algorithm, n, r, p, salt_hex, digest_hex = stored.split("$")
        if algorithm != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt_hex),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 1024 * 1024,
            dklen=len(digest_hex) // 2,
        )
    except ValueError:  # a malformed stored hash never matches
        return False
    return hmac.compare_digest(digest.hex(), digest_hex)


def _check_new_password(password: str) -> None:
    if len(password) < 8:
        raise Invalid(
            "password too short", field_errors={"password": ["Ensure this field has at least 8 characters."]}
        )
    if len(password) > MAX_PASSWORD:
        raise Invalid("password too long", field_errors={"password": ["Password is too long."]})


def _check_permissions(permissions: Iterable[str]) -> list[str]:
    chosen = sorted(set(permissions))
    unknown = [p for p in chosen if p not in KNOWN_PERMISSIONS]
    if unknown:
        raise Invalid(
            f"unknown permission(s): {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_PERMISSIONS))}",
            field_errors={"permissions": [f"Unknown permission {p!r}." for p in unknown]},
        )
    return chosen


def get_by_username(session: Session, username: str) -> User | None:
    return session.scalars(select(User).where(User.username == username)).one_or_none()


def create_user(
    session: Session,
    *,
    username: str,
    password: str,
    is_staff: bool = True,
    permissions: Iterable[str] = (),
    email: str = "",
    first_name: str = "",
    last_name: str = "",
) -> User:
    name = username.strip()
    if not name or len(name) > 150 or "\x00" in name:
        raise Invalid("invalid username", field_errors={"username": ["Enter a valid username."]})
    if get_by_username(session, name) is not None:
        raise Invalid(
            f"a user named {name!r} exists",
            field_errors={"username": ["A user with that username already exists."]},
            code="unique",
        )
    _check_new_password(password)
    user = User(
        username=name,
        password_hash=hash_password(password),
        is_staff=is_staff,
        is_active=True,
        permissions=_check_permissions(permissions),
        email=email,
        first_name=first_name,
        last_name=last_name,
    )
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, username: str, password: str) -> User:
    """Change the password; the user's existing tokens are revoked, so old sessions end."""
    user = get_by_username(session, username)
    if user is None:
        raise NotFound(f"no user named {username!r}")
    _check_new_password(password)
    user.password_hash = hash_password(password)
    _revoke_tokens(session, user)
    return user


def set_permissions(session: Session, username: str, permissions: Iterable[str]) -> User:
    user = get_by_username(session, username)
    if user is None:
        raise NotFound(f"no user named {username!r}")
    user.permissions = _check_permissions(permissions)
    session.execute(
        update(ApiToken).where(ApiToken.user_id == user.id).values(permissions=_token_permissions(user))
    )
    session.flush()
    return user


def _token_permissions(user: User) -> list[str]:
    # Permissions are a staff matter: a non-staff user's token carries none.
    return sorted(user.permissions) if user.is_staff else []


def authenticate(
    session: Session, username: str, password: str, *, client: str, throttle: Throttle | None = None
) -> User:
    """The staff user these credentials belong to, or `Invalid(LOGIN_FAILED)`; throttled first.

    Every failure (unknown user, wrong password, over-long password, inactive, no staff access) runs one
    password hash and says the same, so neither the answer nor its time tells them apart. Attempts are
    counted per client address and per username before the hash (`services.throttle`); a success clears
    the username's count.
    """
    throttle = throttle or get_throttle()
    per_username, per_address = login_rules()
    throttle.attempt(per_address, client)
    account = username.strip().casefold()
    throttle.attempt(per_username, account)
    user = get_by_username(session, username) if username and len(username) <= 150 else None
    if user is None or len(password) > MAX_PASSWORD:
        check_password(password[:MAX_PASSWORD], _DUMMY_HASH)
        raise Invalid(LOGIN_FAILED, code="authorization")
    # Every token a login makes is a staff token: a non-staff user must not get one.
    if not check_password(password, user.password_hash) or not user.is_active or not user.is_staff:
        raise Invalid(LOGIN_FAILED, code="authorization")
    throttle.reset(per_username, account)
    return user


def login(
    session: Session, username: str, password: str, *, client: str, throttle: Throttle | None = None
) -> tuple[User, str]:
    """Check the credentials (`authenticate`) and make a new token for the user; returns (user, key)."""
    user = authenticate(session, username, password, client=client, throttle=throttle)
    key = tokens.new_key()
    token = tokens.ensure_token(
        session,
        name=f"user:{user.username}:{secrets.token_hex(6)}",
        kind=TokenKind.staff,
        key=key,
        permissions=_token_permissions(user),
    )
    token.user_id = user.id
    user.last_login = now()
    session.flush()
    return user, key


def user_of_token(session: Session, token_id: int) -> tuple[ApiToken, User | None]:
    token = session.get_one(ApiToken, token_id)
    user = session.get(User, token.user_id) if token.user_id is not None else None
    return token, user


def deactivate(session: Session, username: str) -> User:
    """The user can no longer log in, and every token it holds is revoked now (sessions end at once)."""
    user = get_by_username(session, username)
    if user is None:
        raise NotFound(f"no user named {username!r}")
    user.is_active = False
    _revoke_tokens(session, user)
    return user


def _revoke_tokens(session: Session, user: User) -> None:
    """Revoke every live token of the user and end its console sessions."""
    session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user.id))
    session.execute(
        update(ApiToken)
        .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now())
    )
    session.flush()
