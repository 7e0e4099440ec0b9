"""Sandbox payment gateway: refunds and bank transfers behind Stripe-style idempotency keys.

cancelflow's payment and bank connectors retry on timeouts and 5xx, so the one property this sandbox
must get right is the one a real gateway guarantees: a movement is executed at most once per
``Idempotency-Key``, however many times (and however concurrently) the request is repeated.

* First request with a key: the key is *reserved* (marked in flight) on receipt, the optional injected
  delay elapses, the movement is recorded, 201.
* Same key and same body again: 200 with the very same object and ``Idempotent-Replayed: true``.
* Same key, different body: 422 -- the caller has a bug, not a retry.
* Same key while the first request is still being processed: 409, so two racing retries can never both
  execute.

Failures are injected at runtime (``POST /_admin/config``) or from the command line, and the tests and
the demo inspect what actually happened through ``GET /refunds``, ``GET /transfers`` and
``GET /_admin/calls``. With ``--state-file`` the honoured keys survive a restart, as they would at a
real gateway.

Run it with ``python -m cancelflow.sandbox.gateway --host 127.0.0.1 --port 8102``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)
from starlette.concurrency import run_in_threadpool

from cancelflow.sandbox.serving import add_reset_and_health, command_line, parse, serve

logger = logging.getLogger(__name__)

MovementKind = Literal["refund", "transfer"]

_ID_PREFIX: dict[MovementKind, str] = {"refund": "re", "transfer": "tr"}
# Stripe's limit; a longer key is almost certainly a serialised object passed by mistake.
_MAX_KEY_LENGTH = 255
_STATE_FORMAT_VERSION = 1
_KEY_DOC = "Required. Repeating a request with the same key never executes the movement twice."


# --------------------------------------------------------------------------------------------------
# Request and configuration models
# --------------------------------------------------------------------------------------------------


def _parse_amount(value: object) -> Decimal:
    # Money crosses the wire as a decimal string: a JSON number would have gone through a binary
    # float somewhere on the way, which is exactly the class of bug this sandbox should surface.
    if not isinstance(value, str):
        raise ValueError('amount must be a decimal string such as "12.50"')
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"amount {value!r} is not a decimal number") from None
    if not amount.is_finite():
        raise ValueError("amount must be a finite number")
    if amount <= 0:
        raise ValueError("amount must be greater than zero")
    return amount


Amount = Annotated[
    Decimal,
    BeforeValidator(_parse_amount),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?$", "examples": ["12.50"]}),
]
Currency = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z]{3}$"),
    AfterValidator(str.upper),
]
NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class RefundRequest(BaseModel):
    """A refund to the payment the order was originally paid with."""

    model_config = ConfigDict(extra="ignore")

    payment_reference: NonEmpty
    amount: Amount
    currency: Currency


class TransferRequest(BaseModel):
    """A bank transfer, used when the original payment cannot be refunded (e.g. cash on delivery)."""

    model_config = ConfigDict(extra="ignore")

    iban: NonEmpty
    holder_name: NonEmpty
    amount: Amount
    currency: Currency


_REQUEST_MODELS: dict[MovementKind, type[RefundRequest] | type[TransferRequest]] = {
    "refund": RefundRequest,
    "transfer": TransferRequest,
}


class GatewayConfig(BaseModel):
    """Failure injection. All zero means a perfectly healthy gateway."""

    model_config = ConfigDict(extra="forbid")

    fail_first_n: int = Field(default=0, ge=0, description="503 for the first N attempts of every key")
    fail_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="probability of a random 503")
    delay_seconds: float = Field(default=0.0, ge=0.0, description="processing time, key held in flight")


class GatewayConfigUpdate(BaseModel):
    """Partial update of :class:`GatewayConfig`; omitted fields keep their current value."""

    model_config = ConfigDict(extra="forbid")

    fail_first_n: int | None = Field(default=None, ge=0)
    fail_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    delay_seconds: float | None = Field(default=None, ge=0.0)


# --------------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------------


def mask_iban(iban: str) -> str:
    """``DE89370400440532013000`` -> ``******************3000``: enough to tell accounts apart in logs."""
    compact = "".join(iban.split())
    visible = 4 if len(compact) > 4 else 0
    return "*" * (len(compact) - visible) + compact[len(compact) - visible :]


@dataclass(frozen=True)
class Outcome:
    """What the HTTP layer should answer; produced by :meth:`GatewayState.submit`."""

    status_code: int
    body: dict[str, object]
    replayed: bool = False
    retry_after: int | None = None  # seconds, sent as Retry-After


@dataclass
class _Record:
    fingerprint: dict[str, str]
    movement: dict[str, Any]


@dataclass
class _Reservation:
    fingerprint: dict[str, str]
    generation: int
    done_by: float = 0.0  # time.monotonic() at which the reserving request should be done


@dataclass
class GatewayState:
    """Everything the gateway knows, guarded by one lock.

    Sync endpoints run in uvicorn's thread pool, so requests with the same key really do race; every
    read-modify-write of the maps below happens under ``_lock``. The lock is never held while sleeping.
    """

    state_file: Path | None = None
    config: GatewayConfig = field(default_factory=GatewayConfig)
    rng: random.Random = field(default_factory=random.Random)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _records: dict[str, _Record] = field(default_factory=dict, init=False)
    _in_flight: dict[str, _Reservation] = field(default_factory=dict, init=False)
    _calls: Counter[str] = field(default_factory=Counter, init=False)
    _attempts: Counter[str] = field(default_factory=Counter, init=False)
    # Bumped by reset(): a request reserved before a reset must not resurrect wiped state.
    _generation: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.state_file is not None:
            self._load()

    # ---- persistence -----------------------------------------------------------------------------

    def _load(self) -> None:
        assert self.state_file is not None
        if not self.state_file.exists():
            return
        self._truncate_torn_tail(self.state_file)
        with self.state_file.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    fingerprint = {str(k): str(v) for k, v in entry["request"].items()}
                    movement = dict(entry["movement"])
                    key = str(movement["idempotency_key"])
                except (ValueError, KeyError, TypeError, AttributeError):
                    # Only hand edits get here (torn tails are cut above); keep serving what is readable.
                    logger.warning("state file %s line %d unreadable; skipped", self.state_file, lineno)
                    continue
                self._records.setdefault(key, _Record(fingerprint, movement))
        logger.info("loaded %d movements from %s", len(self._records), self.state_file)

    @staticmethod
    def _truncate_torn_tail(path: Path) -> None:
        # A crash mid-append leaves a last line without its newline. Its movement was never acknowledged,
        # so it is dropped -- and it must be cut off, or the next append would be glued onto it.
        with path.open("r+b") as fh:
            data = fh.read()
            if not data or data.endswith(b"\n"):
                return
            keep = data.rfind(b"\n") + 1
            logger.warning("state file %s ends in a torn line; dropped %d bytes", path, len(data) - keep)
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())

    def _append(self, record: _Record) -> None:
        if self.state_file is None:
            return
        line = json.dumps(
            {"v": _STATE_FORMAT_VERSION, "request": record.fingerprint, "movement": record.movement},
            separators=(",", ":"),
        )
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        with self.state_file.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            # The 201 must not be sent before the key is durable, or a crash right after would let a
            # retry execute the movement a second time.
            os.fsync(fh.fileno())

    # ---- the idempotent write path -------------------------------------------------------------

    def submit(self, kind: MovementKind, key: str, raw_body: bytes) -> Outcome:
        """Process one ``POST /refunds`` or ``POST /transfers`` whose key has already been checked."""
        with self._lock:
            self._calls[key] += 1

        try:
            request = _REQUEST_MODELS[kind].model_validate_json(raw_body)
        except ValidationError as exc:
            # include_input=False: the input may hold an IBAN or a holder name.
            details = exc.errors(include_url=False, include_context=False, include_input=False)
            self._log(kind, key, "invalid body", None)
            return Outcome(422, {"error": "invalid request body", "details": details})

        fingerprint = _fingerprint(kind, request)
        iban = request.iban if isinstance(request, TransferRequest) else None

        with self._lock:
            config = self.config
            self._attempts[key] += 1
            attempt = self._attempts[key]
            # Failures are injected at the front door, before the key is looked at, so an injected
            # 503 never reserves or records anything.
            if attempt <= config.fail_first_n:
                self._log(kind, key, f"injected 503 (attempt {attempt} of first {config.fail_first_n})", iban)
                return Outcome(503, {"error": "temporarily unavailable"})
            if config.fail_rate > 0 and self.rng.random() < config.fail_rate:
                self._log(kind, key, "injected random 503", iban)
                return Outcome(503, {"error": "temporarily unavailable"})

            if key in self._in_flight:
                self._log(kind, key, "409 in flight", iban)
                # Come back when the first request should be done: its processing time, at least 1 s.
                return Outcome(
                    409, {"error": "in flight"}, retry_after=max(1, math.ceil(config.delay_seconds))
                )

            existing = self._records.get(key)
            if existing is not None:
                if existing.fingerprint != fingerprint:
                    self._log(kind, key, "422 key reused with a different body", iban)
                    return Outcome(422, {"error": "idempotency key reused with a different body"})
                self._log(kind, key, f"200 replayed {existing.movement['id']}", iban)
                return Outcome(200, existing.movement, replayed=True)

            reservation = _Reservation(fingerprint, self._generation, time.monotonic() + config.delay_seconds)
            self._in_flight[key] = reservation

        try:
            if config.delay_seconds > 0:
                time.sleep(config.delay_seconds)
            movement = _movement(kind, key, request)
            record = _Record(fingerprint, movement)
            with self._lock:
                if reservation.generation != self._generation:
                    self._log(kind, key, f"201 {movement['id']} discarded by a concurrent reset", iban)
                    return Outcome(201, movement)
                try:
                    self._append(record)
                except OSError:
                    logger.exception("could not persist %s for key %s", kind, key)
                    return Outcome(500, {"error": "could not persist movement"})
                self._records[key] = record
            self._log(kind, key, f"201 created {movement['id']}", iban)
            return Outcome(201, movement)
        finally:
            with self._lock:
                # Only drop our own reservation: after a reset another request may hold the key.
                if self._in_flight.get(key) is reservation:
                    del self._in_flight[key]

    @staticmethod
    def _log(kind: MovementKind, key: str, outcome: str, iban: str | None) -> None:
        if iban is None:
            logger.info("%s key=%s outcome=%s", kind, key, outcome)
        else:
            logger.info("%s key=%s iban=%s outcome=%s", kind, key, mask_iban(iban), outcome)

    # ---- inspection and administration ---------------------------------------------------------

    def movements(self, kind: MovementKind) -> list[dict[str, Any]]:
        with self._lock:
            return [r.movement for r in self._records.values() if r.movement["object"] == kind]

    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def in_flight(self) -> list[str]:
        """Keys reserved by a request that has not finished yet."""
        with self._lock:
            return list(self._in_flight)

    def get_config(self) -> GatewayConfig:
        with self._lock:
            return self.config

    def update_config(self, update: GatewayConfigUpdate) -> GatewayConfig:
        with self._lock:
            self.config = self.config.model_copy(update=update.model_dump(exclude_none=True))
            logger.info("config set to %s", self.config.model_dump())
            return self.config

    def reset(self) -> None:
        with self._lock:
            self._records.clear()
            self._in_flight.clear()
            self._calls.clear()
            self._attempts.clear()
            self.config = GatewayConfig()
            self._generation += 1
            if self.state_file is not None and self.state_file.exists():
                self.state_file.write_text("", encoding="utf-8")
        logger.info("state and config reset")


def _fingerprint(kind: MovementKind, request: RefundRequest | TransferRequest) -> dict[str, str]:
    # Compare meaning, not spelling: "12.5" and "12.50" are the same amount, so a client that
    # re-serialises its retry differently is still replayed rather than refused.
    values = request.model_dump()
    fingerprint: dict[str, str] = {"kind": kind}
    for name, value in sorted(values.items()):
        fingerprint[name] = format(value.normalize(), "f") if isinstance(value, Decimal) else str(value)
    return fingerprint


def _movement(kind: MovementKind, key: str, request: RefundRequest | TransferRequest) -> dict[str, Any]:
    fields = request.model_dump(exclude={"amount", "currency"})
    return {
        "id": f"{_ID_PREFIX[kind]}_{secrets.token_hex(12)}",
        "object": kind,
        "status": "succeeded",
        "amount": format(request.amount, "f"),
        "currency": request.currency,
        **fields,
        "idempotency_key": key,
        "created_at": datetime.now(UTC).isoformat(),
    }


# --------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------


def _body_schema(model: type[BaseModel]) -> dict[str, object]:
    # The write endpoints read the raw body themselves (the key must be checked first, and validation
    # errors must not echo the IBAN back), so the body schema is declared for the docs explicitly.
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        },
    }


def create_app(
    state_file: Path | None = None,
    *,
    config: GatewayConfig | None = None,
    rng: random.Random | None = None,
) -> FastAPI:
    """Build the gateway. ``state_file`` makes honoured keys survive restarts; ``config`` is the
    initial failure injection; ``rng`` makes ``fail_rate`` reproducible."""
    state = GatewayState(
        state_file=state_file,
        config=config or GatewayConfig(),
        rng=rng or random.Random(),
    )
    app = FastAPI(
        title="cancelflow sandbox payment gateway",
        description="Refunds and bank transfers with Stripe-style idempotency keys and failure injection.",
    )
    app.state.gateway = state

    async def _write(kind: MovementKind, request: Request, key: str | None) -> JSONResponse:
        if key is None or not key.strip():
            logger.info("%s rejected: missing Idempotency-Key header", kind)
            return JSONResponse({"error": "the Idempotency-Key header is required"}, status_code=400)
        if len(key) > _MAX_KEY_LENGTH:
            logger.info("%s rejected: Idempotency-Key longer than %d characters", kind, _MAX_KEY_LENGTH)
            return JSONResponse(
                {"error": f"the Idempotency-Key header is longer than {_MAX_KEY_LENGTH} characters"},
                status_code=400,
            )
        raw = await request.body()
        # submit() sleeps for the injected delay; in a worker thread that blocks only this request, and
        # concurrent requests for the same key are answered 409 meanwhile.
        outcome = await run_in_threadpool(state.submit, kind, key, raw)
        headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
        if outcome.retry_after is not None:
            headers["Retry-After"] = str(outcome.retry_after)
        return JSONResponse(outcome.body, status_code=outcome.status_code, headers=headers)

    @app.post("/refunds", status_code=201, openapi_extra=_body_schema(RefundRequest))
    async def create_refund(
        request: Request,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", description=_KEY_DOC)] = None,
    ) -> JSONResponse:
        return await _write("refund", request, idempotency_key)

    @app.post("/transfers", status_code=201, openapi_extra=_body_schema(TransferRequest))
    async def create_transfer(
        request: Request,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", description=_KEY_DOC)] = None,
    ) -> JSONResponse:
        return await _write("transfer", request, idempotency_key)

    @app.get("/refunds")
    def list_refunds() -> dict[str, list[dict[str, Any]]]:
        return {"data": state.movements("refund")}

    @app.get("/transfers")
    def list_transfers() -> dict[str, list[dict[str, Any]]]:
        return {"data": state.movements("transfer")}

    @app.get("/_admin/config")
    def get_config() -> GatewayConfig:
        return state.get_config()

    @app.post("/_admin/config")
    def set_config(update: GatewayConfigUpdate) -> GatewayConfig:
        return state.update_config(update)

    @app.get("/_admin/calls")
    def get_calls() -> dict[str, int]:
        return state.calls()

    add_reset_and_health(app, state.reset)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = command_line(
        "python -m cancelflow.sandbox.gateway", "Sandbox payment gateway for cancelflow.", port=8102
    )
    parser.add_argument("--state-file", type=Path, default=None, help="JSON-lines file of honoured keys")
    parser.add_argument("--fail-first-n", type=int, default=0, help="503 for the first N attempts per key")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="probability (0..1) of a random 503")
    parser.add_argument("--delay-seconds", type=float, default=0.0, help="processing delay per new request")
    parser.add_argument("--seed", type=int, default=None, help="seed for --fail-rate, for reproducible runs")
    args = parse(parser, argv)

    try:
        config = GatewayConfig(
            fail_first_n=args.fail_first_n, fail_rate=args.fail_rate, delay_seconds=args.delay_seconds
        )
    except ValidationError as exc:
        parser.error(str(exc))

    serve(args, lambda: create_app(args.state_file, config=config, rng=random.Random(args.seed)))


if __name__ == "__main__":
    main()
