"""Statements sent alone (`db.statements_alone`): the token lookup and the idempotency key's claim run without
BEGIN and COMMIT round trips, and still keep their transactions' meaning."""

from __future__ import annotations

import uuid

import psycopg2
import psycopg2.extensions
from sqlalchemy import select, text

from cancelflow.config import get_settings
from cancelflow.db import (
    OneConnectionSession,
    get_engine,
    new_session,
    statements_alone,
    transaction,
    unit_on,
)
from cancelflow.models import IdempotencyKey
from cancelflow.services import idempotency, tokens
from tests.factories import api_token


def driver_status(session: OneConnectionSession) -> int:
    raw = session.connection().connection.dbapi_connection
    assert raw is not None
    return int(raw.info.transaction_status)


def keys_named(key: str) -> int:
    with transaction() as session:
        return len(session.scalars(select(IdempotencyKey.id).where(IdempotencyKey.key == key)).all())


def test_a_read_alone_leaves_no_transaction_open() -> None:
    token, key = api_token("storefront")
    session = OneConnectionSession(get_engine(None))
    try:
        with statements_alone(session) as alone:
            found = tokens.authenticate(session, key)
            assert alone
            # No BEGIN was sent: the connection is not inside a transaction after the read.
            assert driver_status(session) == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        assert found is not None
        assert found.id == token.id
        session.execute(text("SELECT 1"))  # afterwards the session opens transactions as usual
        assert driver_status(session) == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    finally:
        session.close()


def test_the_claim_commits_by_itself_without_changing_the_session() -> None:
    token, _ = api_token("storefront")
    key = uuid.uuid4().hex
    session = OneConnectionSession(get_engine(None))
    try:
        with unit_on(session):
            claim = idempotency.claim_key(session, token_id=token.id, key=key, scope="s", digest="d")
            assert claim.state == "owned"
            # Committed already: another connection sees it while this session's unit is still open.
            assert keys_named(key) == 1
            assert driver_status(session) == psycopg2.extensions.TRANSACTION_STATUS_IDLE
        # `SET LOCAL` ended with the claim's own transaction.
        assert session.scalar(text("SHOW synchronous_commit")) == "on"
        session.rollback()
        assert keys_named(key) == 1
        # The same key again: read under its lock, in a transaction.
        with unit_on(session):
            again = idempotency.claim_key(session, token_id=token.id, key=key, scope="s", digest="d")
        assert (again.state, again.key_id) == ("in_flight", claim.key_id)
    finally:
        session.close()


def test_inside_an_open_transaction_the_claim_joins_it() -> None:
    token, _ = api_token("storefront")
    key = uuid.uuid4().hex
    with new_session() as session:
        session.execute(text("SELECT 1"))  # a transaction is open
        with statements_alone(session) as alone:
            assert not alone
        claim = idempotency.claim_key(session, token_id=token.id, key=key, scope="s", digest="d")
        assert claim.state == "owned"
        session.rollback()
    assert keys_named(key) == 0


def test_a_connection_the_server_ended_is_replaced_at_checkout() -> None:
    engine = get_engine(None)
    with engine.connect() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    # The same connection is handed out next (LIFO) as long as it lives.
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() == pid
    admin = psycopg2.connect(get_settings().require_database_url())  # not from the pool: it would be `pid`
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))  # waits until it has exited
            assert cursor.fetchone() == (True,)
    finally:
        admin.close()
    # No ping: the pool sees the closed socket and opens a new connection; the caller sees no error.
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid
