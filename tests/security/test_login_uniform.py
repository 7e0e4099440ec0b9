"""Every way a login fails answers the same body and runs exactly one password hash of the same cost, so
neither the answer nor its time tells an attacker whether the account exists, is inactive, is not staff,
or whether the password was merely too long to be checked."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cancelflow.api.app import create_app
from cancelflow.db import transaction
from cancelflow.services import users

LOGIN = "/api/v1/auth/login/"
PASSWORD = "correct horse"
FAILED = {"non_field_errors": ["Unable to log in with provided credentials."], "code": "authorization"}


@pytest.fixture(scope="module")
def client(database: str) -> Iterator[TestClient]:
    with TestClient(create_app(), client=(f"203.0.113.{uuid.uuid4().int % 250 + 1}", 1)) as test_client:
        yield test_client


def _user(*, staff: bool = True, active: bool = True) -> str:
    name = f"uniform-{uuid.uuid4().hex[:10]}"
    with transaction() as session:
        users.create_user(session, username=name, password=PASSWORD, is_staff=staff)
        if not active:
            users.deactivate(session, name)
    return name


CASES: dict[str, Callable[[], dict[str, str]]] = {
    "unknown user": lambda: {"username": f"nobody-{uuid.uuid4().hex[:8]}", "password": PASSWORD},
    "unknown user, over-long password": lambda: {
        "username": f"nobody-{uuid.uuid4().hex[:8]}",
        "password": "x" * 1500,
    },
    "over-long username": lambda: {"username": "u" * 400, "password": PASSWORD},
    "wrong password": lambda: {"username": _user(), "password": "wrong password"},
    "over-long password": lambda: {"username": _user(), "password": "x" * 1025},
    "inactive user": lambda: {"username": _user(active=False), "password": PASSWORD},
    "user without staff access": lambda: {"username": _user(staff=False), "password": PASSWORD},
}


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    real = hashlib.scrypt

    def counting(password: bytes, **kwargs: Any) -> bytes:
        calls.append(kwargs)
        return real(password, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    return calls


@pytest.mark.parametrize("case", CASES)
def test_every_failure_runs_one_hash_and_says_the_same(
    client: TestClient, scrypt_calls: list[dict[str, Any]], case: str
) -> None:
    body = CASES[case]()
    scrypt_calls.clear()  # creating the user hashed its password
    response = client.post(LOGIN, json=body)
    assert (response.status_code, response.json()) == (400, FAILED)
    assert len(scrypt_calls) == 1
    # the same work factor as a real check
    assert (scrypt_calls[0]["n"], scrypt_calls[0]["r"], scrypt_calls[0]["p"]) == (
        users.SCRYPT_N,
        users.SCRYPT_R,
        users.SCRYPT_P,
    )


def test_the_right_password_runs_one_hash_too(client: TestClient, scrypt_calls: list[dict[str, Any]]) -> None:
    name = _user()
    scrypt_calls.clear()
    assert client.post(LOGIN, json={"username": name, "password": PASSWORD}).status_code == 200
    assert len(scrypt_calls) == 1
