"""Idempotency keys: a retried call with the same key and body answers the stored response again.

The protocol, for any interface that takes a key (the REST `Idempotency-Key` header today): claim the key
in its own committed transaction; a key already answered replays the stored response; the same key with
another body is refused (`KeyReused`); a key whose first call is still running is a `Conflict`; a key whose
call failed before a response was stored is released, so a retry runs again. A key left by a process that
died (or by a database that restarted under it) is taken over after `IN_FLIGHT_GRACE`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from cancelflow.db import statements_alone
from cancelflow.errors import Conflict
from cancelflow.models import IdempotencyKey
from cancelflow.services.clock import now

# A key whose request has not finished after this long is taken to belong to a process that died.
IN_FLIGHT_GRACE: Final = timedelta(seconds=60)

Transaction = Callable[[], AbstractContextManager[Session]]


class KeyReused(Conflict):
    """The key was already used with another body: nothing runs."""

    code = "idempotency_key_reused"


@dataclass(frozen=True, slots=True)
class KeyClaim:
    """The outcome of presenting a key."""

    state: Literal["owned", "replay", "mismatch", "in_flight"]
    key_id: int
    status: int | None = None
    body: dict[str, object] | None = None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: dict[str, object] | None


@dataclass(frozen=True, slots=True)
class KeyedCall:
    """One call under a key (or under none). `replay` is the stored response when the key was answered
    before: send it and do nothing else. Otherwise do the work and `complete` in its transaction."""

    key_id: int | None = None
    replay: Response | None = None

    def complete(self, session: Session, *, status: int, body: dict[str, object]) -> None:
        """Store the response with the work, in the same transaction."""
        if self.key_id is not None:
            complete_key(session, self.key_id, status=status, body=body)


@contextmanager
def keyed(
    transaction: Transaction,
    *,
    token_id: int,
    key: str | None,
    scope: str,
    body: Mapping[str, Any],
    default_status: int,
    name: str = "Idempotency key",
) -> Iterator[KeyedCall]:
    """Run one call under `key` (None: no key, the call simply runs).

    Raises `KeyReused` (another body) or `Conflict` (still in progress) before the call runs; `name` is
    what the key is called in those messages. A call that raises releases the key.
    """
    if key is None:
        yield KeyedCall()
        return
    digest = request_hash(scope, body)
    with transaction() as session:
        claim = claim_key(session, token_id=token_id, key=key, scope=scope, digest=digest)
    if claim.state == "replay":
        yield KeyedCall(claim.key_id, Response(claim.status or default_status, claim.body))
        return
    if claim.state == "mismatch":
        raise KeyReused(f"{name} {key!r} was already used with another request body.")
    if claim.state == "in_flight":
        raise Conflict(
            f"A request with {name} {key!r} is still in progress; retry later.",
            code="idempotency_key_in_flight",
        )
    call = KeyedCall(claim.key_id)
    try:
        yield call
    except BaseException:
        with transaction() as session:
            release_key(session, claim.key_id)
        raise


def request_hash(scope: str, body: Mapping[str, Any]) -> str:
    canonical = json.dumps({"scope": scope, "body": body}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


# Built once (every keyed call runs both): the parameters are bound at execution.
_CLAIM = (
    insert(IdempotencyKey)
    .values(
        token_id=bindparam("claim_token_id"),
        key=bindparam("claim_key"),
        scope=bindparam("claim_scope"),
        request_hash=bindparam("claim_digest"),
    )
    .on_conflict_do_nothing(index_elements=[IdempotencyKey.token_id, IdempotencyKey.key])
    .returning(IdempotencyKey.id)
)
# The claim as one round trip, its own transaction: sent alone (`db.statements_alone`) in one string with
# `SET LOCAL synchronous_commit TO OFF`, so it neither waits for BEGIN and COMMIT round trips nor for its WAL
# to reach the disk. Losing an unflushed claim in a database crash loses nothing the protocol needs: the
# work it guards commits later, synchronously, which flushes the claim's WAL first; if the crash comes
# before that, the work was never committed and a retry must run again (as after a release). Other
# sessions see the claim at once either way, so a concurrent twin still gets its 409.
_CLAIM_ALONE: Final = "SET LOCAL synchronous_commit TO OFF; " + str(
    _CLAIM.compile(dialect=postgresql.dialect())  # type: ignore[no-untyped-call]
)
_COMPLETE = (
    update(IdempotencyKey)
    .where(IdempotencyKey.id == bindparam("key_id"))
    .values(
        response_status=bindparam("status"),
        response_body=bindparam("body", type_=IdempotencyKey.__table__.c.response_body.type),
        completed_at=bindparam("at"),
    )
)


def claim_key(session: Session, *, token_id: int, key: str, scope: str, digest: str) -> KeyClaim:
    """Take the key for this request (commit before doing the work), or say why not.

    A new key is inserted and committed by one statement of its own (`_CLAIM_ALONE`) when the session has no
    transaction open, else inside the open one; a key seen before is read and judged under its row lock."""
    params = {"claim_token_id": token_id, "claim_key": key, "claim_scope": scope, "claim_digest": digest}
    with statements_alone(session) as alone:
        if alone:
            inserted = session.connection().exec_driver_sql(_CLAIM_ALONE, params).scalar()
        else:
            inserted = session.execute(_CLAIM, params).scalar()
    if inserted is not None:
        return KeyClaim("owned", inserted)
    row = session.scalars(
        select(IdempotencyKey)
        .where(IdempotencyKey.token_id == token_id, IdempotencyKey.key == key)
        .with_for_update()
    ).one()
    if row.request_hash != digest:
        return KeyClaim("mismatch", row.id)
    if row.response_status is None:
        restarted = session.scalar(select(func.pg_postmaster_start_time()))
        if row.created_date < now() - IN_FLIGHT_GRACE or (restarted and row.created_date < restarted):
            # Its process died mid-request, or the database restarted under it (its work was rolled
            # back, and it could not release the key): this request takes over.
            row.created_date = now()
            session.flush()
            return KeyClaim("owned", row.id)
        return KeyClaim("in_flight", row.id)
    return KeyClaim("replay", row.id, row.response_status, row.response_body)


def complete_key(session: Session, key_id: int, *, status: int, body: dict[str, object]) -> None:
    session.execute(_COMPLETE, {"key_id": key_id, "status": status, "body": body, "at": now()})


def release_key(session: Session, key_id: int) -> None:
    """The request failed before a response was stored: forget the key so a retry runs again."""
    session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.id == key_id, IdempotencyKey.response_status.is_(None))
    )
