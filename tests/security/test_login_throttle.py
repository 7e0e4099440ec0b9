"""Password guessing: attempts are counted per username and per client address (in the test Redis), and
over a limit the login answers 429 with `Retry-After` even for the right password."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from cancelflow.api.app import create_app
from cancelflow.config import get_settings
from cancelflow.db import transaction
from cancelflow.services import users
from tests.harness import free_port

LOGIN = "/api/v1/auth/login/"
PASSWORD = "correct horse"


def new_user() -> str:
    name = f"guess-{uuid.uuid4().hex[:10]}"
    with transaction() as session:
        users.create_user(session, username=name, password=PASSWORD)
    return name


@pytest.fixture
def client(database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr(get_settings(), "login_limit_per_username", "5 per 15 minutes")
    monkeypatch.setattr(get_settings(), "login_limit_per_address", "20 per minute")
    # A client address of its own, so no other test's attempts (nor an earlier run's) count here.
    address = f"198.51.100.{uuid.uuid4().int % 250 + 1}:{uuid.uuid4().hex[:6]}"
    with TestClient(create_app(), client=(address, 40000)) as test_client:
        yield test_client


def test_wrong_passwords_then_the_right_one_is_throttled(client: TestClient) -> None:
    # Given a user whose password an attacker guesses
    name = new_user()
    # When the guesses exhaust the username's allowance
    answers = [client.post(LOGIN, json={"username": name, "password": f"guess {i}"}) for i in range(5)]
    assert [a.status_code for a in answers] == [400] * 5
    right = client.post(LOGIN, json={"username": name, "password": PASSWORD})
    # Then even the right password is refused until the window moves on, and the caller is told when
    assert right.status_code == 429, right.text
    assert right.json() == {"detail": right.json()["detail"], "code": "throttled"}
    assert right.json()["detail"].startswith("Request was throttled.")
    assert 1 <= int(right.headers["Retry-After"]) <= 15 * 60


def test_an_unknown_username_is_throttled_like_a_known_one(client: TestClient) -> None:
    name = f"nobody-{uuid.uuid4().hex[:10]}"
    codes = [client.post(LOGIN, json={"username": name, "password": "x"}).status_code for _ in range(6)]
    assert codes == [400] * 5 + [429]


def test_a_success_clears_the_username_count(client: TestClient) -> None:
    name = new_user()
    for _ in range(3):
        for i in range(4):
            assert client.post(LOGIN, json={"username": name, "password": f"no {i}"}).status_code == 400
        assert client.post(LOGIN, json={"username": name, "password": PASSWORD}).status_code == 200


def test_one_address_guessing_many_usernames_is_throttled(client: TestClient) -> None:
    # Given 20 attempts from one address, each at another account (no username count fills up)
    codes = [
        client.post(LOGIN, json={"username": f"spray-{uuid.uuid4().hex[:8]}", "password": "x"}).status_code
        for _ in range(21)
    ]
    # Then the address's allowance ends it, for a real account with its right password too
    assert codes == [400] * 20 + [429]
    assert client.post(LOGIN, json={"username": new_user(), "password": PASSWORD}).status_code == 429


def test_a_throttled_attempt_runs_no_password_hash(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = new_user()
    for i in range(5):
        client.post(LOGIN, json={"username": name, "password": f"guess {i}"})
    calls: list[str] = []
    real = users.check_password

    def counted(password: str, stored: str) -> bool:
        calls.append(stored)
        return real(password, stored)

    monkeypatch.setattr(users, "check_password", counted)
    assert client.post(LOGIN, json={"username": name, "password": PASSWORD}).status_code == 429
    assert calls == []


def test_an_unreachable_counter_store_refuses_rather_than_lets_guesses_through() -> None:
    from cancelflow.errors import TransientError
    from cancelflow.services.throttle import Throttle, login_rules

    throttle = Throttle.from_uri(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(TransientError):
        throttle.attempt(login_rules()[0], "anyone")
