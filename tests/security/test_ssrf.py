"""Server-side request forgery through webhook URLs and fulfillment-service callback URLs.

The attack: a staff token (webhooks) or an importer (callback URLs) names loopback, a private address, the
metadata service or the database's port in one of its many spellings; the worker then POSTs there and the
stored error shows the first bytes of the answer, and differs by port state (a port scanner). Each test
below makes the attempt against the real API, the real database and real sockets, and checks that the
destination is refused at registration and again at connect time (a name that resolves elsewhere later),
that a stored error is a short reason, and that every kind of port looks alike.
"""

from __future__ import annotations

import secrets
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cancelflow.config import get_settings
from cancelflow.errors import Invalid, PermanentError, TransientError
from cancelflow.integrations import outbound
from cancelflow.integrations.fulfillment import HttpNotifier
from cancelflow.models import (
    CancellationRequest,
    FulfillmentService,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSubscription,
)
from cancelflow.services import approval, intake
from cancelflow.services.webhooks import delivery as webhook_delivery
from cancelflow.services.webhooks import subscriptions as webhook_subscriptions
from tests.conftest import DATABASE_URL
from tests.factories import load, next_id, order_payload, reference_payload, service_payload

PG_PORT = urlsplit(DATABASE_URL).port or 5432
PUBLIC_IP = "93.184.215.14"  # a global unicast address: accepted without any DNS lookup

# Loopback, private, link-local (metadata), unspecified, multicast, shared and IPv6 forms of them, in
# spellings a resolver accepts.
FORBIDDEN_URLS = [
    f"http://127.0.0.1:{PG_PORT}/",
    f"http://0x7f000001:{PG_PORT}/",
    "http://2130706433/hook",
    "http://localhost/hook",
    "http://LOCALHOST./hook",
    "http://127.1/hook",
    "http://0177.0.0.1/hook",
    "http://0/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:7f00:1]/hook",
    "http://[64:ff9b::7f00:1]/hook",
    "http://[2002:7f00:1::]/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[fe80::1]/hook",
    "http://10.0.0.5/hook",
    "http://172.16.0.1/hook",
    "http://192.168.1.1/hook",
    "http://100.64.0.1/hook",
    "http://224.0.0.1/hook",
    "http://240.0.0.1/hook",
]
CREDENTIAL_URLS = [
    f"http://user:password@{PUBLIC_IP}/hook",
    f"https://user@{PUBLIC_IP}/hook",
    f"http://:password@{PUBLIC_IP}/hook",
]


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture
def allow(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set CANCELFLOW_OUTBOUND_ALLOW for this process; starts with none (the production default)."""

    def set_allow(value: str) -> None:
        monkeypatch.setenv("CANCELFLOW_OUTBOUND_ALLOW", value)
        get_settings.cache_clear()

    set_allow("")
    yield set_allow
    monkeypatch.undo()
    get_settings.cache_clear()


def new_channel() -> int:
    channel = next_id()
    load({"channels": [{"id": channel, "name": f"SSRF {channel}"}]})
    return channel


@pytest.fixture
def channel(database: str) -> int:
    return new_channel()


class Receiver:
    """An HTTP server on loopback that answers `status` with `body` and remembers every request."""

    def __init__(self, status: int = 204, body: bytes = b"", tls: ssl.SSLContext | None = None) -> None:
        self.status, self.body = status, body
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.paths.append(self.path)
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(receiver.body)))
                self.end_headers()
                self.wfile.write(receiver.body)

            def do_GET(self) -> None:
                self.do_POST()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the paths list is the log

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver(status=500, body=b"SECRET-INTERNAL-BODY postgres password=hunter2")
    try:
        yield running
    finally:
        running.close()


class RawServer:
    """A TCP port that is open but speaks no HTTP: it closes at once, sends a banner, or never answers."""

    def __init__(self, behaviour: str) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.behaviour = behaviour
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by close()
            if self.behaviour == "banner":
                conn.sendall(b"SSH-2.0-OpenSSH_9.6 internal-host-42\r\n")
                conn.close()
            elif self.behaviour == "close":
                conn.close()
            else:  # "silent": hold the connection open and say nothing
                self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(session: Session, channel: int) -> CancellationRequest:
    order = order_payload(channel=channel)
    from cancelflow.services.importer import import_payload

    import_payload(session, {**reference_payload(), "orders": [order]})
    return intake.submit(
        session,
        {"client_request_id": secrets.token_hex(8), "order_item": order["items"][0]["id"], "reason": 1},
    ).request


def _deliver_once(session: Session, urls: list[str], channel: int) -> list[WebhookAttempt]:
    """Subscribe each URL, approve one request so that each gets a delivery, deliver each once."""
    subscriptions = [
        webhook_subscriptions.create_subscription(
            session, url=url, events=["request.approved"], channel_id=channel
        )
        for url in urls
    ]
    request = _request(session, channel)
    approval.approve(session, request, actor="test")
    attempts = []
    for subscription in subscriptions:
        [delivery] = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.subscription_id == subscription.id)
        ).all()
        webhook_delivery.deliver(session, delivery.id)  # the real guarded client, as in the worker
        [attempt] = session.scalars(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery.id)
        ).all()
        attempts.append(attempt)
    return attempts


# --- registration -----------------------------------------------------------------------------------------


class TestRegistration:
    @pytest.mark.parametrize("url", FORBIDDEN_URLS)
    def test_webhook_to_an_internal_destination_is_refused(
        self, client: TestClient, staff: dict[str, str], allow: Callable[[str], None], url: str
    ) -> None:
        before = self._subscriptions(url)
        response = client.post("/api/v1/webhooks/", json={"url": url, "events": ["*"]}, headers=staff)
        assert response.status_code == 400, response.text
        assert "url" in response.json()
        assert self._subscriptions(url) == before

    @pytest.mark.parametrize("url", FORBIDDEN_URLS)
    def test_callback_url_to_an_internal_destination_is_refused(
        self, client: TestClient, staff: dict[str, str], allow: Callable[[str], None], url: str
    ) -> None:
        service = service_payload(callback_url=url)
        response = client.post("/api/v1/orders/", json={"fulfillment_services": [service]}, headers=staff)
        assert response.status_code == 400, response.text
        assert "fulfillment_services.0.callback_url" in response.json()
        assert self._service(service["id"]) is None

    @pytest.mark.parametrize("url", CREDENTIAL_URLS)
    def test_urls_with_credentials_are_refused(
        self, client: TestClient, staff: dict[str, str], allow: Callable[[str], None], url: str
    ) -> None:
        allow(PUBLIC_IP)  # the address is fine: only the credentials are wrong
        response = client.post("/api/v1/webhooks/", json={"url": url, "events": ["*"]}, headers=staff)
        assert response.status_code == 400, response.text
        assert "credentials" in " ".join(response.json()["url"])
        service = service_payload(callback_url=url)
        response = client.post("/api/v1/orders/", json={"fulfillment_services": [service]}, headers=staff)
        assert response.status_code == 400, response.text
        assert "credentials" in " ".join(response.json()["fulfillment_services.0.callback_url"])

    def test_public_destination_is_accepted_and_listed_without_query_secrets(
        self, client: TestClient, staff: dict[str, str], allow: Callable[[str], None], channel: int
    ) -> None:
        url = f"http://{PUBLIC_IP}/hook?token=tok-{secrets.token_hex(6)}&v=2"
        created = client.post(
            "/api/v1/webhooks/", json={"url": url, "events": ["*"], "channel": channel}, headers=staff
        )
        assert created.status_code == 201, created.text
        listed = client.get("/api/v1/webhooks/", headers=staff).json()["results"]
        [mine] = [s for s in listed if s["id"] == created.json()["id"]]
        assert mine["url"] == f"http://{PUBLIC_IP}/hook?token=***&v=***"
        assert "tok-" not in str(listed)

    @pytest.mark.parametrize(
        ("stored", "listed"),
        [
            ("https://hooks.example/in", "https://hooks.example/in"),
            ("https://user:pw@hooks.example/in", "https://***@hooks.example/in"),
            ("https://hooks.example/in?key=s3cr3t&x=", "https://hooks.example/in?key=***&x=***"),
            ("https://hooks.example/in#s3cr3t", "https://hooks.example/in#***"),
        ],
    )
    def test_listing_masks_secrets_in_stored_urls(self, stored: str, listed: str) -> None:
        assert webhook_subscriptions.display_url(stored) == listed

    def test_allowlist_opens_exactly_what_it_names(
        self, client: TestClient, staff: dict[str, str], allow: Callable[[str], None], channel: int
    ) -> None:
        allow("127.0.0.1:8101,10.20.0.0/16")
        for url, code in [
            ("http://127.0.0.1:8101/svc", 201),
            ("http://localhost:8101/svc", 201),  # the name resolves to the allowed address and port
            ("http://10.20.3.4/hook", 201),
            ("http://127.0.0.1:8102/svc", 400),  # another port
            (f"http://127.0.0.1:{PG_PORT}/", 400),
            ("http://10.21.0.1/hook", 400),
        ]:
            response = client.post(
                "/api/v1/webhooks/", json={"url": url, "events": ["*"], "channel": channel}, headers=staff
            )
            assert response.status_code == code, (url, response.text)

    def test_demo_command_allows_only_the_callback_base_it_is_given(
        self, allow: Callable[[str], None]
    ) -> None:
        from typer.testing import CliRunner

        from cancelflow.cli.main import app

        # The operator's own --callback-base is accepted (the worker still needs it allowlisted) ...
        loaded = CliRunner().invoke(
            app, ["demo", "--orders", "1", "--callback-base", "http://127.0.0.1:8101"]
        )
        assert loaded.exit_code == 0, loaded.output
        # ... and allows nothing else: an import pointing elsewhere on loopback is still refused.
        with pytest.raises(Invalid) as refused:
            load({"fulfillment_services": [service_payload(callback_url="http://127.0.0.1:8102/x")]})
        assert "fulfillment_services.0.callback_url" in refused.value.field_errors

    def test_demo_into_a_running_stack_keeps_its_stored_callbacks(
        self, allow: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from typer.testing import CliRunner

        from cancelflow.cli.main import app

        # Given sandbox services stored on a loopback port (a `make run` stack's, chosen at its start) ...
        loaded = CliRunner().invoke(
            app, ["demo", "--orders", "1", "--callback-base", "http://127.0.0.1:8103"]
        )
        assert loaded.exit_code == 0, loaded.output
        # ... when the demo is loaded again from a shell whose settings name another sandbox port
        monkeypatch.setenv("CANCELFLOW_SANDBOX_FULFILLMENT_PORT", "8104")
        get_settings.cache_clear()
        again = CliRunner().invoke(app, ["demo", "--orders", "1"])
        # Then the stored services keep their callbacks and the import accepts them
        assert again.exit_code == 0, again.output
        # ... while nothing else on loopback is opened
        with pytest.raises(Invalid) as refused:
            load({"fulfillment_services": [service_payload(callback_url="http://127.0.0.1:8104/x")]})
        assert "fulfillment_services.0.callback_url" in refused.value.field_errors

    @staticmethod
    def _subscriptions(url: str) -> int:
        from cancelflow.db import transaction

        with transaction() as session:
            return int(
                session.scalar(
                    select(func.count())
                    .select_from(WebhookSubscription)
                    .where(WebhookSubscription.url == url)
                )
                or 0
            )

    @staticmethod
    def _service(service_id: int) -> FulfillmentService | None:
        from cancelflow.db import transaction

        with transaction() as session:
            return session.get(FulfillmentService, service_id)


class TestSubscriptionCap:
    def test_a_channel_holds_at_most_the_configured_number(
        self,
        client: TestClient,
        staff: dict[str, str],
        allow: Callable[[str], None],
        channel: int,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("CANCELFLOW_WEBHOOK_MAX_SUBSCRIPTIONS_PER_CHANNEL", "3")
        allow("")
        body = {"url": f"http://{PUBLIC_IP}/hook", "events": ["*"], "channel": channel}
        created = [client.post("/api/v1/webhooks/", json=body, headers=staff) for _ in range(3)]
        assert [r.status_code for r in created] == [201, 201, 201]
        refused = client.post("/api/v1/webhooks/", json=body, headers=staff)
        assert refused.status_code == 400, refused.text
        assert "at most 3" in " ".join(refused.json()["channel"])
        # Removing one makes room again; another channel has its own allowance.
        assert client.delete(f"/api/v1/webhooks/{created[0].json()['id']}/", headers=staff).status_code == 204
        assert client.post("/api/v1/webhooks/", json=body, headers=staff).status_code == 201
        other = {**body, "channel": new_channel()}
        assert client.post("/api/v1/webhooks/", json=other, headers=staff).status_code == 201

    def test_concurrent_creates_cannot_pass_the_cap_together(
        self, allow: Callable[[str], None], channel: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from cancelflow.db import transaction

        monkeypatch.setenv("CANCELFLOW_WEBHOOK_MAX_SUBSCRIPTIONS_PER_CHANNEL", "1")
        allow("")
        barrier = threading.Barrier(4)
        outcomes: list[str] = []

        def create() -> None:
            barrier.wait()
            try:
                with transaction() as session:
                    webhook_subscriptions.create_subscription(
                        session, url=f"http://{PUBLIC_IP}/hook", events=["*"], channel_id=channel
                    )
                outcomes.append("created")
            except Invalid:
                outcomes.append("refused")

        threads = [threading.Thread(target=create) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["created", "refused", "refused", "refused"]


# --- connect time -----------------------------------------------------------------------------------------


class TestConnectTime:
    def test_a_name_that_resolves_to_loopback_after_registration_is_not_reached(
        self,
        session: Session,
        allow: Callable[[str], None],
        receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Given a name that resolves to a public address when registered, then to loopback (DNS rebinding)
        real = socket.getaddrinfo
        answers = iter([PUBLIC_IP])

        def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host == "rebind.test":
                return real(next(answers, "127.0.0.1"), port, *args, **kwargs)
            return real(host, port, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", rebinding)
        # When a delivery goes out to it
        [attempt] = _deliver_once(session, [f"http://rebind.test:{receiver.port}/hook"], new_channel())
        # Then the worker does not connect, and the delivery is dead with a plain reason
        assert receiver.paths == []
        assert (attempt.status_code, attempt.error, attempt.outcome.value) == (
            None,
            "destination not allowed",
            "dead",
        )

    def test_the_same_delivery_goes_out_when_the_operator_allows_it(
        self, session: Session, allow: Callable[[str], None], receiver: Receiver
    ) -> None:
        # The control for the test above: only the policy stands between the worker and the receiver.
        receiver.status, receiver.body = 204, b""
        allow(f"127.0.0.1:{receiver.port}")
        [attempt] = _deliver_once(session, [f"http://localhost:{receiver.port}/hook"], new_channel())
        assert receiver.paths == ["/hook"]
        assert (attempt.status_code, attempt.outcome.value) == (204, "delivered")

    @pytest.mark.parametrize(
        "url",
        [
            "http://localhost:{port}/hook",
            "http://0x7f000001:{port}/hook",
            "http://2130706433:{port}/hook",
            "http://[::ffff:127.0.0.1]:{port}/hook",
        ],
    )
    def test_stored_rows_pointing_inside_are_refused_by_the_worker(
        self, session: Session, allow: Callable[[str], None], receiver: Receiver, url: str
    ) -> None:
        # Given subscriptions stored while loopback was allowed (or before the check existed)
        allow("127.0.0.1,::ffff:127.0.0.1")
        channel = new_channel()
        subscription = webhook_subscriptions.create_subscription(
            session, url=url.format(port=receiver.port), events=["request.approved"], channel_id=channel
        )
        request = _request(session, channel)
        approval.approve(session, request, actor="test")
        [delivery] = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.subscription_id == subscription.id)
        ).all()
        # When the worker delivers under the default policy
        allow("")
        assert webhook_delivery.deliver(session, delivery.id) == "dead"
        # Then nothing reached the receiver
        assert receiver.paths == []
        assert delivery.last_error == "destination not allowed"

    def test_metadata_service_is_refused_at_connect_time(self, allow: Callable[[str], None]) -> None:
        with outbound.guarded_client(timeout=2) as client, pytest.raises(outbound.DestinationNotAllowed):
            client.get("http://169.254.169.254/latest/meta-data/")
        with outbound.guarded_client(timeout=2) as client, pytest.raises(outbound.DestinationNotAllowed):
            client.get("http://[fd00:ec2::254]/latest/meta-data/")

    def test_environment_proxies_do_not_bypass_the_check(
        self, allow: Callable[[str], None], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A proxy from the environment would connect on our behalf, to anything.
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{receiver.port}")
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{receiver.port}")
        with outbound.guarded_client(timeout=2) as client, pytest.raises(outbound.DestinationNotAllowed):
            client.get(f"http://localhost:{PG_PORT}/")
        assert receiver.paths == []


class TestTls:
    def test_https_to_an_allowed_name_keeps_sni_and_certificate_checks(
        self, allow: Callable[[str], None], tmp_path: Path
    ) -> None:
        # Given an HTTPS server on loopback with a certificate for "localhost" only
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        seen_sni: list[str | None] = []
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_context.load_cert_chain(cert, key)
        server_context.sni_callback = lambda sock, name, ctx: seen_sni.append(name)  # type: ignore[assignment,misc,func-returns-value]
        tls = Receiver(status=200, body=b"ok", tls=server_context)
        try:
            trust = ssl.create_default_context(cafile=str(cert))
            allow(f"127.0.0.1:{tls.port}")
            # When the guarded client calls it by name (it connects to the checked 127.0.0.1)
            with outbound.guarded_client(timeout=5, verify=trust) as client:
                response = client.get(f"https://localhost:{tls.port}/hook")
            # Then TLS sent the name (SNI) and verified the certificate against it
            assert response.status_code == 200
            assert seen_sni == ["localhost"]
            # And the address the name resolves to changes no certificate rule
            with (
                outbound.guarded_client(timeout=5, verify=trust) as client,
                pytest.raises(httpx.ConnectError),
            ):
                client.get(f"https://127.0.0.1:{tls.port}/hook")  # the certificate is not for this name
            allow("")
            with (
                outbound.guarded_client(timeout=5, verify=trust) as client,
                pytest.raises(outbound.DestinationNotAllowed),
            ):
                client.get(f"https://localhost:{tls.port}/hook")
        finally:
            tls.close()


# --- what is stored ---------------------------------------------------------------------------------------


class TestStoredReasons:
    def test_webhook_attempts_store_a_status_never_the_body_and_ports_look_alike(
        self,
        session: Session,
        allow: Callable[[str], None],
        receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # Given every port state an attacker would tell apart, all allowed so that connections are made
        monkeypatch.setenv("CANCELFLOW_HTTP_TIMEOUT", "1")
        allow("127.0.0.1")
        servers = [RawServer("close"), RawServer("banner"), RawServer("silent")]
        try:
            urls = [
                f"http://127.0.0.1:{receiver.port}/hook",  # an HTTP server answering 500 with a secret body
                f"http://127.0.0.1:{closed_port()}/hook",  # closed
                f"http://127.0.0.1:{PG_PORT}/hook",  # PostgreSQL
                *(f"http://127.0.0.1:{s.port}/hook" for s in servers),  # open: closes, banner, silent
            ]
            attempts = _deliver_once(session, urls, new_channel())
        finally:
            for server in servers:
                server.close()
        # Then the HTTP answer is kept as its status only, and every non-answer is the same "unreachable"
        assert [(a.status_code, a.error) for a in attempts] == [
            (500, "http 500"),
            *[(None, "unreachable")] * 5,
        ]
        deliveries = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.id.in_([a.delivery_id for a in attempts]))
        ).all()
        stored = " ".join(f"{d.last_error}" for d in deliveries)
        assert "SECRET" not in stored
        assert "SSH" not in stored

    def test_callback_notifications_store_a_status_never_the_body_and_ports_look_alike(
        self, allow: Callable[[str], None], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("CANCELFLOW_HTTP_TIMEOUT", "1")
        allow("127.0.0.1")
        servers = [RawServer("close"), RawServer("banner"), RawServer("silent")]
        notifier = HttpNotifier()
        messages = []
        try:
            for port in [receiver.port, closed_port(), PG_PORT, *(s.port for s in servers)]:
                with pytest.raises(TransientError) as raised:
                    notifier.notify(callback_url=f"http://127.0.0.1:{port}/svc", secret="s", kind="K")
                messages.append(raised.value.message)
        finally:
            for server in servers:
                server.close()
        assert receiver.paths == ["/svc/fulfillment_order_notification"]
        assert messages == [
            "fulfillment notification: http 500",
            *["fulfillment notification: unreachable"] * 5,
        ]
        # And a destination outside the policy is refused before any connection, for good
        allow("")
        with pytest.raises(PermanentError) as refused:
            HttpNotifier().notify(callback_url=f"http://localhost:{receiver.port}/svc", secret="s", kind="K")
        assert refused.value.message == "fulfillment notification: destination not allowed"
        assert receiver.paths == ["/svc/fulfillment_order_notification"]
