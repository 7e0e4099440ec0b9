"""What the console tests share: staff users made by the real user service, and signing in over HTTP."""

from __future__ import annotations

import re
import uuid

import httpx
from fastapi.testclient import TestClient

from cancelflow.db import transaction
from cancelflow.services import users

PASSWORD = "correct horse battery"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_LOGIN_TOKEN = re.compile(r'name="login_token" value="([^"]+)"')


def staff_user(*permissions: str, password: str = PASSWORD) -> str:
    name = f"staff-{uuid.uuid4().hex[:10]}"
    with transaction() as session:
        users.create_user(session, username=name, password=password, permissions=permissions)
    return name


def sign_in(client: TestClient | httpx.Client, username: str, password: str = PASSWORD) -> httpx.Response:
    """Post the sign-in form as a browser would (its token from the form, its cookie kept)."""
    form = client.get("/console/login")
    match = _LOGIN_TOKEN.search(form.text)
    assert match is not None, form.text
    return client.post(
        "/console/login",
        data={"username": username, "password": password, "login_token": match[1]},
        follow_redirects=False,
    )


def csrf_of(page: httpx.Response) -> str:
    match = _CSRF.search(page.text)
    assert match is not None, page.text
    return match[1]
