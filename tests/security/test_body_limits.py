"""Request bodies are bounded before they are read: a large body needs valid credentials, checked first.

The API runs under uvicorn on a real socket (in a thread of this process), so "before reading" is
observable: a request that declares 50 MB and sends ten bytes is answered at once; a server that read the
body first would wait for the other 50 MB and the read below would time out instead.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.api.test_tags import make_requests, tags_in_db, unique
from tests.factories import token_key
from tests.harness import serving

BASE = "/api/v1/cancellation_requests/"
FIFTY_MB = 50 * 1024 * 1024
ONE_MB = 1024 * 1024  # over the unauthenticated cap (64 KiB), under the authenticated one (8 MiB)
READ_TIMEOUT = 20.0  # far longer than an immediate answer; a server waiting for the body never answers


@pytest.fixture(scope="module")
def server(database: str) -> Iterator[str]:
    from cancelflow.api.app import create_app

    with serving(create_app(), lifespan="off") as address:
        yield address


@pytest.fixture(scope="module")
def token(database: str) -> str:
    return token_key("staff")


def raw_request(address: str, head: str, body_sent: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `head` and only `body_sent`, then read the answer (the declared body is never completed)."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=READ_TIMEOUT) as sock:
        sock.sendall(head.encode() + b"\r\n" + body_sent)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed without an answer: {data!r}"
            data += chunk
        header_block, _, rest = data.partition(b"\r\n\r\n")
        lines = header_block.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status, headers, rest


def head(path: str, length: int, *extra: str) -> str:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *extra,
    ]
    return "\r\n".join(lines) + "\r\n"


class TestBeforeReading:
    @pytest.mark.parametrize(
        "credentials",
        [(), ("Authorization: Token not-a-real-token",), ("X-Shopify-Access-Token: nope",)],
        ids=["no-token", "wrong-token", "wrong-shopify-token"],
    )
    def test_a_large_body_without_valid_credentials_is_413_unread(
        self, server: str, credentials: tuple[str, ...]
    ) -> None:
        status, headers, body = raw_request(server, head(BASE, ONE_MB, *credentials), b'{"order_it')
        assert status == 413
        assert headers["connection"] == "close"
        assert json.loads(body) == {
            "detail": "Request body too large: at most 65536 bytes without valid credentials.",
            "code": "request_too_large",
        }

    def test_shopify_paths_answer_in_their_dialect(self, server: str) -> None:
        path = "/admin/api/2024-01/fulfillment_orders/1/cancellation_request.json"
        status, _, body = raw_request(server, head(path, ONE_MB), b"{")
        assert status == 413
        assert json.loads(body) == {
            "errors": "Request body too large: at most 65536 bytes without valid credentials."
        }

    def test_fifty_megabytes_are_refused_unread_without_a_lookup(self, server: str) -> None:
        status, _, body = raw_request(server, head(BASE, FIFTY_MB), b"{")
        assert status == 413
        assert json.loads(body) == {
            "detail": "Request body too large: at most 8388608 bytes.",
            "code": "request_too_large",
        }

    def test_even_a_valid_token_may_not_declare_more_than_the_cap(self, server: str, token: str) -> None:
        status, _, body = raw_request(server, head(BASE, FIFTY_MB, f"Authorization: Token {token}"), b"{")
        assert status == 413
        assert json.loads(body) == {
            "detail": "Request body too large: at most 8388608 bytes.",
            "code": "request_too_large",
        }

    def test_a_valid_token_may_send_a_body_above_the_unauthenticated_cap(
        self, server: str, token: str
    ) -> None:
        (rid,) = make_requests(1)
        key = unique()
        padding = "x" * 100_000  # the body is 100 KB: over the unauthenticated cap, under the other
        body = json.dumps({"keys": [key], "padding": padding}).encode()
        response = httpx.post(
            f"http://{server}{BASE}{rid}/add_tags/",
            content=body,
            headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
            timeout=READ_TIMEOUT,
        )
        assert response.status_code == 204, response.text
        assert tags_in_db(rid) == [key]

    def test_small_bodies_pass_without_a_lookup(self, server: str) -> None:
        response = httpx.post(f"http://{server}{BASE}1/add_tags/", json={"keys": ["x"]}, timeout=READ_TIMEOUT)
        assert response.status_code == 401  # the route's own answer: the body was small enough to read


class TestStreamed:
    """No Content-Length: the body is counted as it is read and cut off at the cap."""

    @staticmethod
    def chunks(total: int, size: int = 16 * 1024) -> Iterator[bytes]:
        yield b'{"keys": ["'
        sent = 0
        while sent < total:
            yield b"a" * size
            sent += size
        yield b'"]}'

    def test_a_chunked_body_over_the_unauthenticated_cap_is_413(self, server: str) -> None:
        (rid,) = make_requests(1)
        response = httpx.post(
            f"http://{server}{BASE}{rid}/add_tags/",
            content=self.chunks(1024 * 1024),
            headers={"Content-Type": "application/json"},
            timeout=READ_TIMEOUT,
        )
        assert response.status_code == 413, response.text
        assert response.json()["code"] == "request_too_large"
        assert tags_in_db(rid) == []

    def test_a_chunked_body_over_the_cap_is_413_with_a_token_too(
        self, server: str, token: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from cancelflow.config import get_settings

        monkeypatch.setattr(get_settings(), "body_max_bytes", 128 * 1024)
        (rid,) = make_requests(1)
        response = httpx.post(
            f"http://{server}{BASE}{rid}/add_tags/",
            content=self.chunks(1024 * 1024),
            headers={"Content-Type": "application/json", "Authorization": f"Token {token}"},
            timeout=READ_TIMEOUT,
        )
        assert response.status_code == 413, response.text
        assert response.json() == {
            "detail": "Request body too large: at most 131072 bytes.",
            "code": "request_too_large",
        }
        assert tags_in_db(rid) == []

    def test_a_small_chunked_body_is_read_normally(self, server: str, token: str) -> None:
        (rid,) = make_requests(1)
        key = unique()
        body = json.dumps({"keys": [key]}).encode()
        response = httpx.post(
            f"http://{server}{BASE}{rid}/add_tags/",
            content=iter([body[:5], body[5:]]),
            headers={"Content-Type": "application/json", "Authorization": f"Token {token}"},
            timeout=READ_TIMEOUT,
        )
        assert response.status_code == 204, response.text
        assert tags_in_db(rid) == [key]
