"""Log lines: JSON, personal data masked, tracebacks rendered, for our loggers and other libraries'."""

from __future__ import annotations

import io
import json
import logging

import structlog


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_another_librarys_error_keeps_its_traceback_and_is_masked(
    json_logs: io.StringIO,
) -> None:
    try:
        raise ZeroDivisionError("refund to DE89370400440532013000 failed")
    except ZeroDivisionError:
        logging.getLogger("celery.worker").critical("Unrecoverable error", exc_info=True)
    (line,) = lines(json_logs)
    assert (line["event"], line["level"], line["logger"]) == (
        "Unrecoverable error",
        "critical",
        "celery.worker",
    )
    exception = str(line["exception"])
    assert exception.startswith("Traceback (most recent call last):")
    assert "ZeroDivisionError: refund to DE****3000 failed" in exception
    assert "exc_info" not in line


def test_our_errors_keep_their_traceback_and_bound_context(json_logs: io.StringIO) -> None:
    log = structlog.get_logger("cancelflow.test")
    structlog.contextvars.bind_contextvars(step_id=7)
    try:
        try:
            raise ValueError("mail bob@example.com")
        except ValueError:
            log.exception("step raised an unexpected error")
    finally:
        structlog.contextvars.clear_contextvars()
    (line,) = lines(json_logs)
    assert line["step_id"] == 7
    assert "ValueError: mail b***@example.com" in str(line["exception"])
