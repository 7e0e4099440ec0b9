"""Users: log in for a token (`POST /api/v1/auth/login/`), `GET /api/v1/active_user/`, and the CLI."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from cancelflow.cli.main import app as cli
from cancelflow.db import transaction
from cancelflow.services import users

LOGIN = "/api/v1/auth/login/"
ME = "/api/v1/active_user/"
runner = CliRunner()


def new_user(*permissions: str, password: str = "correct horse") -> str:
    name = f"user-{uuid.uuid4().hex[:10]}"
    with transaction() as session:
        users.create_user(session, username=name, password=password, permissions=permissions)
    return name


def login(client: TestClient, username: str, password: str = "correct horse") -> dict[str, str]:
    response = client.post(LOGIN, json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Token {response.json()['key']}"}


def test_login_then_active_user(client: TestClient) -> None:
    name = new_user("view_iban")
    headers = login(client, name)
    me = client.get(ME, headers=headers)
    assert me.status_code == 200
    body = me.json()
    assert (body["username"], body["is_staff"], body["permissions"]) == (name, True, ["view_iban"])
    assert body["pk"] is not None
    assert body["last_login"] is not None
    # Each login is a new token; the first one keeps working.
    second = login(client, name)
    assert second != headers
    assert client.get(ME, headers=headers).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"username": "nobody-here", "password": "correct horse"},
        {"username": "__existing__", "password": "wrong password"},
        {"username": "__existing__", "password": "x" * 4000},
    ],
)
def test_bad_credentials_are_400(client: TestClient, body: dict[str, str]) -> None:
    if body["username"] == "__existing__":
        body = {**body, "username": new_user()}
    response = client.post(LOGIN, json=body)
    assert response.status_code == 400
    assert response.json() == {
        "non_field_errors": ["Unable to log in with provided credentials."],
        "code": "authorization",
    }


def test_a_non_staff_user_gets_no_token(client: TestClient) -> None:
    name = f"user-{uuid.uuid4().hex[:10]}"
    with transaction() as session:
        users.create_user(session, username=name, password="correct horse", is_staff=False)
    response = client.post(LOGIN, json={"username": name, "password": "correct horse"})
    assert response.status_code == 400
    assert response.json() == {  # the same answer as a wrong password: no hint the password was right
        "non_field_errors": ["Unable to log in with provided credentials."],
        "code": "authorization",
    }


def test_missing_fields_are_400(client: TestClient) -> None:
    response = client.post(LOGIN, json={"username": "x"})
    assert response.status_code == 400
    assert response.json()["password"] == ["This field is required."]


def test_active_user_needs_a_token(client: TestClient) -> None:
    response = client.get(ME)
    assert response.status_code == 401
    assert set(response.json()) == {"detail", "code"}


def test_password_change_revokes_tokens(client: TestClient) -> None:
    name = new_user()
    headers = login(client, name)
    with transaction() as session:
        users.set_password(session, name, "another password")
    assert client.get(ME, headers=headers).status_code == 401
    assert client.post(LOGIN, json={"username": name, "password": "correct horse"}).status_code == 400
    login(client, name, "another password")


def test_view_iban_comes_from_the_user(client: TestClient) -> None:
    plain = login(client, new_user())
    assert client.get(ME, headers=plain).json()["permissions"] == []
    name = new_user()
    headers = login(client, name)
    with transaction() as session:
        users.set_permissions(session, name, ["view_iban"])
    assert client.get(ME, headers=headers).json()["permissions"] == ["view_iban"]


def test_password_hashes_are_salted_and_checked() -> None:
    first, second = users.hash_password("secret-1"), users.hash_password("secret-1")
    assert first != second
    assert users.check_password("secret-1", first)
    assert not users.check_password("secret-2", first)
    assert not users.check_password("secret-1", "not$a$hash")


class TestCli:
    def test_create_list_and_set_password(self, client: TestClient) -> None:
        name = f"cli-{uuid.uuid4().hex[:8]}"
        created = runner.invoke(
            cli, ["users", "create", name, "--password", "cli password", "--permission", "view_iban"]
        )
        assert created.exit_code == 0, created.output
        listed = runner.invoke(cli, ["users", "list"])
        assert name in listed.output
        headers = login(client, name, "cli password")
        assert client.get(ME, headers=headers).json()["permissions"] == ["view_iban"]
        changed = runner.invoke(cli, ["users", "set-password", name], input="new cli pass\nnew cli pass\n")
        assert changed.exit_code == 0, changed.output
        login(client, name, "new cli pass")

    def test_refuses_duplicates_short_passwords_and_unknown_permissions(self) -> None:
        name = new_user()
        duplicate = runner.invoke(cli, ["users", "create", name, "--password", "long enough"])
        assert duplicate.exit_code == 1
        short = runner.invoke(cli, ["users", "create", f"u-{uuid.uuid4().hex[:6]}", "--password", "short"])
        assert short.exit_code == 1
        unknown = runner.invoke(
            cli,
            [
                "users",
                "create",
                f"u-{uuid.uuid4().hex[:6]}",
                "--password",
                "long enough",
                "--permission",
                "x",
            ],
        )
        assert unknown.exit_code == 1
