"""The error hierarchy every layer shares. The API maps it once, per router, to its error body."""

from __future__ import annotations


class CancelflowError(Exception):
    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(CancelflowError):
    code = "not_found"


class Invalid(CancelflowError):
    """Bad input: HTTP 400 with field errors."""

    code = "invalid"

    def __init__(
        self, message: str, *, field_errors: dict[str, list[str]] | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.field_errors = field_errors or {}


class Conflict(CancelflowError):
    """The resource is busy or not ready (an idempotency key still in flight, an export still running): HTTP 409."""

    code = "conflict"


class InvalidTransition(CancelflowError):
    """A status change the state machine does not allow (`cancelflow.models.transitions` is the only judge).

    Akinon's "the action is not allowed" (HTTP 400 `{"non_field_errors": [...], "code": "invalid_transition"}`),
    Shopify's 422; nothing was changed. `machine`, `current` and `target` name the refused move when one was tried.
    """

    code = "invalid_transition"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        machine: str | None = None,
        current: str | None = None,
        target: str | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.machine = machine
        self.current = current
        self.target = target


class Forbidden(CancelflowError):
    code = "permission_denied"


class Refused(CancelflowError):
    """A task was handed an id it must not act on (a forged or misrouted message): nothing changes.

    `reason` is a short label for logs and the forged-task counter; `kind` what the id turned out to be.
    """

    code = "refused"
    reasons = ("bad_id", "unknown_id", "wrong_kind", "mismatch")

    def __init__(self, message: str, *, reason: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.kind = kind


class Gone(CancelflowError):
    """The resource existed and was removed on purpose (an expired export file): HTTP 410."""

    code = "gone"


class TooManyJobs(CancelflowError):
    """The caller already has as many background jobs queued or running as it may: HTTP 429.

    `retry_after`: seconds after which trying again is reasonable (the `Retry-After` header).
    """

    code = "too_many_jobs"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int = 30) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class TransientError(CancelflowError):
    """Worth retrying with backoff: a timeout, a connection error, a 5xx, a lock held elsewhere.

    `retry_after`: seconds the far side asked us to wait (its `Retry-After`); the retry waits at least that.
    """

    code = "transient"

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class PermanentError(CancelflowError):
    """Retrying cannot help: the step goes dead and the plan fails, with this reason."""

    code = "permanent"


class AlreadyHandled(CancelflowError):
    """Someone else did (or is doing) this work; the caller returns quietly."""

    code = "already_handled"


class Throttled(CancelflowError):
    """Too many attempts from this caller or at this account: HTTP 429 with `Retry-After`."""

    code = "throttled"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigurationError(RuntimeError):
    """The process cannot find or reach what it is configured to use (the CLI says so in one line, exit 2)."""
