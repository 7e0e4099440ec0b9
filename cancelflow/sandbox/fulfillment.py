"""Sandbox fulfillment service: a Shopify-style third-party warehouse that is notified, then pulls.

Shopify's fulfillment-service protocol never pushes the work itself: the shop POSTs a signed, almost
empty notification (``{"kind": "CANCELLATION_REQUEST"}``) to the service's callback URL, answers it at
once, and the service later *pulls* its assigned fulfillment orders with its access token and accepts or
rejects each cancellation request through the shop's API. cancelflow implements the shop side of that
protocol; this process implements the warehouse side so the whole loop runs locally.

Each configured service (a *handle*) has a policy that decides how it answers:

``accept``
    accept every cancellation request it pulls;
``reject``
    reject every one;
``accept_after``
    accept, but only after ``delay_seconds`` (a timer; the notification itself is answered at once);
``never``
    pull, then ignore -- the request stays open until cancelflow's reply deadline fires;
``fail_first``
    answer the first ``fail_first`` notifications with 500 (cancelflow must re-send them), then accept.

The configuration file is re-read on every notification, so a test can add or change services while the
process runs. Run it with
``python -m cancelflow.sandbox.fulfillment --host 127.0.0.1 --port 8101 --config PATH``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVarTuple

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from cancelflow.sandbox.serving import add_reset_and_health, command_line, parse, serve

logger = logging.getLogger(__name__)

Policy = Literal["accept", "reject", "accept_after", "never", "fail_first"]
Action = Literal["accepted", "rejected", "ignored", "failed"]
Decision = Literal["accept", "reject"]
Args = TypeVarTuple("Args")

SIGNATURE_HEADER = "X-Shopify-Hmac-Sha256"
TOKEN_HEADER = "X-Shopify-Access-Token"  # noqa: S105 -- a header name, not a secret
KNOWN_KINDS = frozenset({"CANCELLATION_REQUEST", "FULFILLMENT_REQUEST"})

_DEFAULT_MESSAGES: dict[Decision, str] = {"accept": "Accepted by sandbox", "reject": "Rejected by sandbox"}


ANSWERED_MEMORY = 100_000  # answered cancellation requests remembered, oldest forgotten first
PULL_LIMIT = 250  # fulfillment orders asked for per pull (the API's maximum page)
RETRY_AFTER_DEFAULT = 1.0  # seconds to wait on a 429 that names no Retry-After
RETRY_AFTER_MAX = 30.0


def _request_key(order: dict[str, Any]) -> str:
    """Which cancellation request of the order is pending: the newest one's `sent_at` ('' if none listed).

    A request asked again after a rejection is a new request, and is answered again.
    """
    stamps = [
        str(r.get("sent_at"))
        for r in order.get("merchant_requests") or []
        if isinstance(r, dict) and r.get("kind") == "cancellation_request"
    ]
    return stamps[-1] if stamps else ""


def _retry_after(response: httpx.Response) -> float:
    try:
        wait = float(response.headers.get("Retry-After", RETRY_AFTER_DEFAULT))
    except ValueError:
        wait = RETRY_AFTER_DEFAULT
    return min(max(wait, 0.05), RETRY_AFTER_MAX)


def sign(secret: str, body: bytes) -> str:
    """Shopify's webhook signature: base64 of HMAC-SHA256 over the raw body bytes."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify(secret: str, body: bytes, signature: str | None) -> bool:
    """Constant-time check of ``signature`` against the body; a missing signature never verifies."""
    if not signature:
        return False
    return hmac.compare_digest(sign(secret, body).encode("ascii"), signature.strip().encode("utf-8"))


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


class ServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, description="sent as X-Shopify-Access-Token when pulling/answering")
    secret: str = Field(min_length=1, description="HMAC secret the notifications are signed with")
    policy: Policy = "accept"
    delay_seconds: float = Field(default=0.0, ge=0.0, description="accept_after: wait before accepting")
    fail_first: int = Field(default=0, ge=0, description="answer the first N notifications with 500")
    message: str | None = Field(default=None, description="reply message; a default is used when unset")
    pull_interval_seconds: float = Field(
        default=0.1,
        ge=0.0,
        description="least time between the starts of two pulls: notifications meanwhile share the next one",
    )


class SandboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_base_url: str = "http://127.0.0.1:8000"
    api_version: str = "2021-07"
    services: dict[str, ServiceConfig] = Field(default_factory=dict)

    @property
    def admin_api(self) -> str:
        return f"{self.api_base_url.rstrip('/')}/admin/api/{self.api_version}"


def load_config(path: Path) -> SandboxConfig:
    """Read and validate the JSON configuration file (raises ``OSError`` or ``ValidationError``)."""
    return SandboxConfig.model_validate_json(path.read_bytes())


# --------------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogEntry:
    handle: str
    fulfillment_order_id: object  # as the API listed it; None when a pull failed
    action: Action
    status_code: int | None
    at: str


@dataclass
class _NotificationCounts:
    valid: int = 0
    failed_on_purpose: int = 0
    bad_signature: int = 0


@dataclass(frozen=True)
class Reply:
    status_code: int
    body: dict[str, object]


class FulfillmentSandbox:
    """State and background work of the sandbox, independent of the HTTP layer.

    Notifications are answered from the request; all pulling and answering happens on a worker pool (or,
    for ``accept_after``, on timers) so a slow or unreachable cancelflow API never delays the 200 that
    Shopify requires promptly.
    """

    def __init__(
        self,
        config_path: Path,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 10.0,
        max_retries: int = 3,
        retry_backoff: float = 0.25,
        max_workers: int = 8,
        max_throttled_retries: int = 60,
    ) -> None:
        self.config_path = config_path
        self.max_retries = max_retries
        self.max_throttled_retries = max_throttled_retries
        self.retry_backoff = retry_backoff
        # One client for all threads: httpx.Client is thread-safe and pools connections to cancelflow.
        self._client = httpx.Client(transport=transport, timeout=timeout)
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fulfillment-sandbox")
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._pending = 0
        self._timers: set[threading.Timer] = set()
        # (api, fulfillment order id, cancellation request) being answered, and those answered: a
        # warehouse answers each cancellation request once, however many pulls list it meanwhile.
        self._claimed: set[tuple[str, str, str]] = set()
        # One pull loop per service at a time: a notification during a pull asks that loop for one more
        # pull (with the newest configuration) instead of starting a second one.
        self._pulling: set[str] = set()
        self._pull_again: dict[str, tuple[ServiceConfig, SandboxConfig]] = {}
        self._last_pull: dict[str, float] = {}  # time.monotonic() a service's last pull started
        self._answered: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._counts: dict[str, _NotificationCounts] = {}
        self._failures_served: Counter[str] = Counter()
        self._log: list[LogEntry] = []

    # ---- notification intake ---------------------------------------------------------------------

    def receive(self, handle: str, raw_body: bytes, signature: str | None) -> Reply:
        """Handle one ``POST /{handle}/fulfillment_order_notification``."""
        try:
            config = load_config(self.config_path)
        except (OSError, ValidationError) as exc:
            logger.error("notification for %s: config %s unusable: %s", handle, self.config_path, exc)
            return Reply(500, {"error": "sandbox configuration unreadable"})

        service = config.services.get(handle)
        if service is None:
            logger.info("notification for unknown handle %r", handle)
            return Reply(404, {"error": f"unknown fulfillment service {handle!r}"})

        if not verify(service.secret, raw_body, signature):
            with self._lock:
                self._counts_for(handle).bad_signature += 1
            logger.warning("notification for %s: bad or missing %s", handle, SIGNATURE_HEADER)
            return Reply(401, {"error": "invalid signature"})

        try:
            payload = json.loads(raw_body)
            kind = payload["kind"]
        except (ValueError, KeyError, TypeError):
            logger.warning("notification for %s: body is not {'kind': ...}", handle)
            return Reply(400, {"error": "body must be a JSON object with a 'kind'"})
        if kind not in KNOWN_KINDS:
            logger.warning("notification for %s: unknown kind %r", handle, kind)
            return Reply(400, {"error": f"unknown kind {kind!r}"})

        with self._lock:
            counts = self._counts_for(handle)
            # Any policy may fail its first notifications; "fail_first" names the common case.
            if self._failures_served[handle] < service.fail_first:
                self._failures_served[handle] += 1
                counts.failed_on_purpose += 1
                served = self._failures_served[handle]
                fail = True
            else:
                counts.valid += 1
                fail = False
        if fail:
            logger.info(
                "notification for %s (%s): 500 on purpose (%d of %d)",
                handle,
                kind,
                served,
                service.fail_first,
            )
            return Reply(500, {"error": "failing on purpose"})

        if kind == "CANCELLATION_REQUEST":
            logger.info(
                "notification for %s: CANCELLATION_REQUEST, policy %s; pulling", handle, service.policy
            )
            self._request_pull(handle, service, config)
        else:
            # The sandbox models the cancellation half of the protocol only; fulfillment requests are
            # acknowledged (as a real service must) and left for cancelflow's own timers.
            logger.info("notification for %s: %s acknowledged, not acted on", handle, kind)
        return Reply(200, {"ok": True})

    def _counts_for(self, handle: str) -> _NotificationCounts:
        return self._counts.setdefault(handle, _NotificationCounts())

    # ---- background work -------------------------------------------------------------------------

    def _spawn(self, fn: Callable[[*Args], None], *args: *Args) -> None:
        with self._lock:
            self._pending += 1
        try:
            self._executor.submit(lambda: self._run(fn, *args))
        except RuntimeError:  # executor shut down: the app is stopping
            self._done()
            raise

    def _schedule(self, delay: float, fn: Callable[[*Args], None], *args: *Args) -> None:
        timer = threading.Timer(delay, self._run_timer)
        # The timer must know itself to deregister, so it is passed its own arguments after construction.
        timer.args = (timer, fn, *args)
        timer.daemon = True
        with self._lock:
            self._pending += 1
            self._timers.add(timer)
        timer.start()

    def _run_timer(self, timer: threading.Timer, fn: Callable[[*Args], None], *args: *Args) -> None:
        with self._lock:
            self._timers.discard(timer)
        self._run(fn, *args)

    def _run(self, fn: Callable[[*Args], None], *args: *Args) -> None:
        try:
            fn(*args)
        except Exception:  # a worker must survive anything; logger.exception says why
            logger.exception("background job %s failed", getattr(fn, "__name__", fn))
        finally:
            self._done()

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1
            if self._pending == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no pull, answer or timer is outstanding; ``False`` on timeout. For tests."""
        with self._lock:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def _request_pull(self, handle: str, service: ServiceConfig, config: SandboxConfig) -> None:
        with self._lock:
            if handle in self._pulling:
                self._pull_again[handle] = (service, config)
                return
            self._pulling.add(handle)
        try:
            self._spawn(self._pull_loop, handle, service, config)
        except RuntimeError:
            with self._lock:
                self._pulling.discard(handle)
            raise

    def _pull_loop(self, handle: str, service: ServiceConfig, config: SandboxConfig) -> None:
        """Pull every page and hand out the answers; once more if a notification came meanwhile. Pulls
        start at least `pull_interval_seconds` apart: a stream of notifications costs a pull per interval,
        not one each (each pull lists every order still waiting for its answer, and counts against the
        API's call bucket)."""
        try:
            while True:
                with self._lock:
                    last = self._last_pull.get(handle)
                wait = 0.0 if last is None else last + service.pull_interval_seconds - time.monotonic()
                if wait > 0 and self._closing.wait(wait):
                    with self._lock:
                        self._pulling.discard(handle)
                        self._pull_again.pop(handle, None)
                    return
                with self._lock:
                    # What came during the wait is covered by this pull (with the newest configuration).
                    newer = self._pull_again.pop(handle, None)
                    self._last_pull[handle] = time.monotonic()
                if newer is not None:
                    service, config = newer
                self._process_cancellations(handle, service, config)
                with self._lock:
                    again = self._pull_again.pop(handle, None)
                    if again is None or self._closing.is_set():
                        self._pulling.discard(handle)
                        return
                service, config = again
        except BaseException:
            with self._lock:
                self._pulling.discard(handle)
                self._pull_again.pop(handle, None)
            raise

    def _process_cancellations(self, handle: str, service: ServiceConfig, config: SandboxConfig) -> None:
        """Pull the fulfillment orders with a cancellation request, page by page (`since_id`), and answer
        each not yet answered or being answered, the answers in parallel on the pool."""
        since_id: object = None
        while True:
            orders = self._pull(handle, service, config, since_id)
            if orders is None:
                return
            self._answer_all(handle, service, config, orders)
            if len(orders) < PULL_LIMIT or self._closing.is_set():
                return
            since_id = orders[-1].get("id")

    def _answer_all(
        self, handle: str, service: ServiceConfig, config: SandboxConfig, orders: list[dict[str, Any]]
    ) -> None:
        for order in orders:
            fo_id = order.get("id")
            if (
                fo_id is None
                or order.get("request_status", "cancellation_requested") != "cancellation_requested"
            ):
                continue
            if service.policy == "never":
                logger.info("%s: ignoring cancellation request of fulfillment order %s", handle, fo_id)
                self._record(handle, fo_id, "ignored", None)
                continue
            claim = (config.admin_api, str(fo_id), _request_key(order))
            with self._lock:
                if claim in self._claimed or claim in self._answered:
                    logger.info(
                        "%s: fulfillment order %s already answered or being answered; skipped", handle, fo_id
                    )
                    continue
                self._claimed.add(claim)
            decision: Decision = "reject" if service.policy == "reject" else "accept"
            if service.policy == "accept_after" and service.delay_seconds > 0:
                logger.info(
                    "%s: will accept fulfillment order %s in %ss", handle, fo_id, service.delay_seconds
                )
                self._schedule(
                    service.delay_seconds, self._answer, handle, service, config, fo_id, decision, claim
                )
            else:
                self._spawn(self._answer, handle, service, config, fo_id, decision, claim)

    def _pull(
        self, handle: str, service: ServiceConfig, config: SandboxConfig, since_id: object = None
    ) -> list[dict[str, Any]] | None:
        url = f"{config.admin_api}/assigned_fulfillment_orders.json"
        params = {"assignment_status": "cancellation_requested", "limit": str(PULL_LIMIT)}
        if since_id is not None:
            params["since_id"] = str(since_id)
        try:
            response = self._send(
                "GET",
                url,
                service.token,
                params=params,
            )
        except httpx.HTTPError as exc:
            logger.warning("%s: pulling %s failed: %s", handle, url, exc)
            self._record(handle, None, "failed", None)
            return None
        if response.status_code != 200:
            logger.warning("%s: pulling %s answered %d", handle, url, response.status_code)
            self._record(handle, None, "failed", response.status_code)
            return None
        try:
            orders = response.json()["fulfillment_orders"]
            if not isinstance(orders, list) or not all(isinstance(o, dict) for o in orders):
                raise TypeError("fulfillment_orders is not a list of objects")
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("%s: unexpected pull response: %s", handle, exc)
            self._record(handle, None, "failed", response.status_code)
            return None
        logger.info("%s: pulled %d fulfillment order(s) with a cancellation request", handle, len(orders))
        return orders

    def _answer(
        self,
        handle: str,
        service: ServiceConfig,
        config: SandboxConfig,
        fo_id: object,
        decision: Decision,
        claim: tuple[str, str, str],
    ) -> None:
        answered = False
        url = f"{config.admin_api}/fulfillment_orders/{fo_id}/cancellation_request/{decision}.json"
        body = {"cancellation_request": {"message": service.message or _DEFAULT_MESSAGES[decision]}}
        try:
            try:
                response = self._send("POST", url, service.token, json_body=body)
            except httpx.HTTPError as exc:
                logger.warning("%s: %s of fulfillment order %s failed: %s", handle, decision, fo_id, exc)
                self._record(handle, fo_id, "failed", None)
                return
            if response.is_success:
                action: Action = "accepted" if decision == "accept" else "rejected"
                logger.info("%s: %s fulfillment order %s (%d)", handle, action, fo_id, response.status_code)
                self._record(handle, fo_id, action, response.status_code)
                answered = True
            elif response.status_code == 422:
                # Already answered (a duplicate notification raced us, or the order moved on): retrying
                # cannot change that.
                logger.info("%s: fulfillment order %s already answered (422); not retried", handle, fo_id)
                self._record(handle, fo_id, "failed", 422)
            else:
                logger.warning(
                    "%s: %s of fulfillment order %s answered %d",
                    handle,
                    decision,
                    fo_id,
                    response.status_code,
                )
                self._record(handle, fo_id, "failed", response.status_code)
        finally:
            with self._lock:
                self._claimed.discard(claim)
                if answered:
                    self._answered[claim] = None
                    while len(self._answered) > ANSWERED_MEMORY:
                        self._answered.popitem(last=False)

    def _send(
        self,
        method: str,
        url: str,
        token: str,
        *,
        params: dict[str, str] | None = None,
        json_body: object = None,
    ) -> httpx.Response:
        """One request, retried up to ``max_retries`` times on connection errors and 5xx, and up to
        ``max_throttled_retries`` times on 429 after the wait its ``Retry-After`` names.

        Returns the last response (possibly a 5xx once retries are exhausted) or raises the last
        ``httpx.HTTPError``. Other 4xx are returned at once: they will not get better.
        """
        headers = {TOKEN_HEADER: token, "Accept": "application/json"}
        attempt = throttled = 0
        while True:
            try:
                response = self._client.request(method, url, headers=headers, params=params, json=json_body)
            except httpx.TransportError as exc:
                if attempt >= self.max_retries or self._closing.is_set():
                    raise
                logger.info("%s %s: %s; retrying", method, url, exc)
            else:
                if response.status_code == 429 and throttled < self.max_throttled_retries:
                    # Throttled by the call bucket: a well-behaved app waits as told and tries again.
                    throttled += 1
                    wait = _retry_after(response)
                    logger.info("%s %s: throttled; retrying in %.1fs", method, url, wait)
                    if self._closing.wait(wait):
                        return response
                    continue
                if response.status_code < 500 or attempt >= self.max_retries or self._closing.is_set():
                    return response
                logger.info("%s %s: %d; retrying", method, url, response.status_code)
            # Event.wait instead of sleep: shutdown interrupts the backoff.
            self._closing.wait(self.retry_backoff * (2**attempt))
            attempt += 1

    def _record(self, handle: str, fo_id: object, action: Action, status_code: int | None) -> None:
        entry = LogEntry(handle, fo_id, action, status_code, datetime.now(UTC).isoformat())
        with self._lock:
            self._log.append(entry)

    # ---- inspection ------------------------------------------------------------------------------

    def log(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(entry) for entry in self._log]

    def notifications(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {handle: asdict(counts) for handle, counts in self._counts.items()}

    def reset(self) -> None:
        """Forget the log and counters (including fail_first progress); in-flight work continues."""
        with self._lock:
            self._log.clear()
            self._counts.clear()
            self._failures_served.clear()

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            timers = list(self._timers)
            self._timers.clear()
        for timer in timers:
            timer.cancel()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._client.close()


# --------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------


def create_app(
    config_path: Path,
    *,
    transport: httpx.BaseTransport | None = None,
    timeout: float = 10.0,
    retry_backoff: float = 0.25,
) -> FastAPI:
    """Build the sandbox. ``transport`` replaces the network for calls to the cancelflow API (tests)."""
    # Fail at start-up, not at the first notification, when the path or the file is wrong.
    load_config(config_path)
    sandbox = FulfillmentSandbox(
        config_path, transport=transport, timeout=timeout, retry_backoff=retry_backoff
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(sandbox.close)

    app = FastAPI(
        title="cancelflow sandbox fulfillment service",
        description="Shopify-style fulfillment service: signed notifications, then pull and answer.",
        lifespan=lifespan,
    )
    app.state.sandbox = sandbox

    @app.post("/{handle}/fulfillment_order_notification")
    async def notification(handle: str, request: Request) -> JSONResponse:
        # The signature covers the exact bytes received, so the body is read raw, never re-serialised.
        raw = await request.body()
        reply = await run_in_threadpool(sandbox.receive, handle, raw, request.headers.get(SIGNATURE_HEADER))
        return JSONResponse(reply.body, status_code=reply.status_code)

    @app.get("/_admin/log")
    def get_log() -> list[dict[str, Any]]:
        return sandbox.log()

    @app.get("/_admin/notifications")
    def get_notifications() -> dict[str, dict[str, int]]:
        return sandbox.notifications()

    add_reset_and_health(app, sandbox.reset)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = command_line(
        "python -m cancelflow.sandbox.fulfillment",
        "Sandbox Shopify-style fulfillment service for cancelflow.",
        port=8101,
    )
    parser.add_argument(
        "--config", type=Path, required=True, help="JSON config, re-read on every notification"
    )
    args = parse(parser, argv)

    def make_app() -> FastAPI:
        try:
            return create_app(args.config)
        except (OSError, ValidationError) as exc:
            parser.error(f"--config {args.config}: {exc}")

    serve(args, make_app)


if __name__ == "__main__":
    main()
