"""Structured logs: JSON lines through structlog, the stdlib's records rendered the same way.

Personal data never reaches a log line: every value is masked recursively (`mask_value`): values under
personal keys (`iban`, `holder_name`, `name`, `email`, …) are replaced, and any text left is searched for
IBANs in any spelling (any case, spaced or dashed), e-mail addresses and `key: value` / `key=value` pairs
with a personal key (the reprs of task arguments and message bodies). Records of other libraries (Celery's
"Task … received", "… succeeded" with their `data`, "Received unregistered task" with the message body)
pass the same masking in `PersonalDataFilter` before any handler formats them.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Final

import structlog

from cancelflow.config.settings import Settings

if TYPE_CHECKING:
    from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED: Final = "<redacted>"
# Keys whose values are personal data wherever they appear (log fields, nested dicts, reprs, bodies).
PERSONAL_KEYS: Final = frozenset(
    {
        "iban",
        "holder_name",
        "account_holder",
        "name",
        "first_name",
        "last_name",
        "full_name",
        "customer_name",
        "email",
        "phone",
        "description",
        "address1",
        "address2",
    }
)
# `name` is also how Celery names a task (`cancellations.submit`) in its log data: such a value stays.
_TASK_NAME = re.compile(r"[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)+")

_UUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
# An IBAN candidate: country letters, check digits, then 11-30 letters or digits, single spaces or dashes
# allowed between them. A UUID (task ids) is matched first and left alone.
_CANDIDATES = re.compile(
    # Not after "_": gateway ids such as `re_de01…` / `tr_…` are hex runs that can look like an IBAN.
    rf"(?<![0-9A-Za-z_])(?:(?P<uuid>{_UUID})|(?P<iban>[A-Za-z]{{2}}[0-9]{{2}}(?:[ \-]?[0-9A-Za-z]){{11,30}}))"
    r"(?![0-9A-Za-z])"
)
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_KEYS = "|".join(sorted(PERSONAL_KEYS, key=len, reverse=True))
# 'holder_name': 'Max', "email": "a@b.c", b'iban': b'…' (reprs and JSON), holder_name='Max' (keyword
# reprs, key=value renderers), quotes escaped or not.
_QUOTED_PAIR = re.compile(
    rf"""(?P<head>(?:(?P<kq>\\?['"])(?:{_KEYS})(?P=kq)\s*:\s*|(?<![\w.])(?:{_KEYS})=)b?)"""
    r"""(?P<vq>\\?['"])(?P<value>.*?)(?<!\\)(?P=vq)""",
    re.IGNORECASE,
)
# iban=DE89…, holder_name=Max+Mustermann (query strings, key=value renderers): up to a separator.
_BARE_PAIR = re.compile(rf"(?P<head>(?<![\w.])(?:{_KEYS})=)(?P<value>[^&\s,;'\")}}\]]+)", re.IGNORECASE)
# What each of the four patterns needs at least: a personal key (a quoted or a bare pair), "@" (an e-mail
# address), two letters and two digits where a word starts (an IBAN, where `_CANDIDATES` starts one). A text
# with none of them is returned as it is, unsearched: most of what a log line holds (levels, timestamps,
# logger and task names, task ids, numbers, quoted results).
_KEYS_LOWERED = re.compile(f"@|{_KEYS}")  # searched in the lowered text: case folding costs more
_IBAN_START = re.compile(r"(?<![0-9A-Za-z_])[A-Za-z]{2}[0-9]{2}")


def _may_hold_personal(value: str) -> bool:
    return _KEYS_LOWERED.search(value.lower()) is not None or _IBAN_START.search(value) is not None


@lru_cache(maxsize=256)
def _iban_length(country: str) -> int | None:
    from schwifty import registry
    from schwifty.exceptions import SchwiftyException

    try:
        return int(registry.get_iban_spec(country).iban_length)
    except (SchwiftyException, KeyError):  # not an IBAN country
        return None


def _mask_iban(match: re.Match[str]) -> str:
    text = match.group(0)
    if match.group("uuid"):
        return text
    length = _iban_length(text[:2].upper())
    if length is None:
        return text
    # The candidate may run on into the next word ("… 0130 00 for …"): mask the IBAN's own characters.
    kept, end = 0, 0
    for end, char in enumerate(text, 1):  # noqa: B007 - `end` is used after the loop
        if char.isalnum():
            kept += 1
            if kept == length:
                break
    iban, rest = text[:end], text[end:]
    compact = re.sub(r"[^0-9A-Za-z]", "", iban).upper()
    return compact[:2] + "****" + compact[-4:] + rest


def mask_text(value: str) -> str:
    """Hide IBANs (all but the country and the last four characters), the local part of e-mail
    addresses, and the values of personal `key: value` / `key=value` pairs."""
    if not _may_hold_personal(value):
        return value
    value = _QUOTED_PAIR.sub(lambda m: f"{m['head']}{m['vq']}{REDACTED}{m['vq']}", value)
    value = _BARE_PAIR.sub(lambda m: f"{m['head']}{REDACTED}", value)
    value = _CANDIDATES.sub(_mask_iban, value)
    return _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", value)


def _personal(key: object, value: object) -> bool:
    if not isinstance(key, str) or key.lower() not in PERSONAL_KEYS or value in (None, "", b""):
        return False
    return not (key.lower() == "name" and isinstance(value, str) and _TASK_NAME.fullmatch(value))


def mask_value(value: object, _depth: int = 0) -> object:
    """`value` with personal data masked, recursively through dicts, lists, tuples and sets."""
    if isinstance(value, str):
        return mask_text(value)
    if _depth > 20:
        return REDACTED if isinstance(value, Mapping | list | tuple | set | frozenset) else value
    if isinstance(value, Mapping):
        return {k: REDACTED if _personal(k, v) else mask_value(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        masked = [mask_value(v, _depth + 1) for v in value]
        return masked if isinstance(value, list) else type(value)(masked)
    if isinstance(value, bytes):
        return mask_text(value.decode("utf-8", "replace"))
    return value


def _mask_personal_data(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key, value in list(event_dict.items()):
        event_dict[key] = REDACTED if _personal(key, value) else mask_value(value)
    return event_dict


# Celery logs whole message bodies and headers for messages it cannot run (an unknown task name, a
# malformed message): for those the body is replaced by its size, whatever it holds.
_BODY_DUMPS: Final = (
    "Received unregistered task of type",
    "Received invalid task message",
    "Received and deleted unknown message",
    "Can't decode message body",
)


class PersonalDataFilter(logging.Filter):
    """Masks a stdlib record in place (message, arguments, `data` and other extras) before any handler
    formats it; records structlog made (their `msg` is the event dict) are masked by its processor."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict):
            return True
        message = record.getMessage() if record.args else str(record.msg)
        if any(marker in message for marker in _BODY_DUMPS):
            message = _withhold_bodies(record)
        record.msg, record.args = mask_text(message), None
        data = getattr(record, "data", None)
        if data is not None:
            record.data = mask_value(data)
        return True


def _withhold_bodies(record: logging.LogRecord) -> str:
    template = str(record.msg)
    args = record.args if isinstance(record.args, tuple) else ((record.args,) if record.args else ())
    if args:
        # The exception or task name is kept; the body, headers and delivery info give their size only.
        shown = [args[0], *(f"<withheld: {len(str(a))} characters>" for a in args[1:])]
        try:
            return template % tuple(shown)
        except (TypeError, ValueError):
            pass
    return template.split("\n", 1)[0][:200] + " <message body withheld>"


def configure_logging(settings: Settings) -> None:
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _mask_personal_data,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(PersonalDataFilter())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # Records of other libraries (Celery, uvicorn): the same chain, so their tracebacks are
            # rendered as text and masked too.
            foreign_pre_chain=[*shared[:-1], structlog.stdlib.ExtraAdder(), _mask_personal_data],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in ("httpx", "httpcore", "sqlalchemy.engine", "kombu", "amqp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
