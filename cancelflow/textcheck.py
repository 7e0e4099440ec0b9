"""Which text cancelflow accepts from outside: any string PostgreSQL can store and UTF-8 can encode.

PostgreSQL's `text` and `jsonb` refuse NUL (U+0000), and a lone surrogate (U+D800..U+DFFF, which a JSON
`\\ud800` escape or an undecodable command-line byte produces) has no UTF-8 encoding at all. Such a string
is refused where it enters, naming the field, with Django REST framework's messages:

* HTTP, every route: `api.textcheck.refuse_bad_text` (body, query, path parameters, headers);
* the `cancellations.submit` message: `services.intake.parse`;
* the order import (HTTP and `cancelflow import FILE`): `services.importer.parse`;
* command-line arguments and prompts: `cli.textcheck`.

Text that is only recorded, never refused (a remote's error body), goes through `storable()`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from cancelflow.errors import Invalid

NUL_MESSAGE: Final = "Null characters are not allowed."
MAX_REPORTED: Final = 100  # fields named in one error: a huge bad payload gets a bounded answer


@dataclass(frozen=True, slots=True)
class BadText:
    field: str
    message: str


def problem(value: str) -> str | None:
    """Why `value` cannot be accepted, or None."""
    if "\x00" in value:
        return NUL_MESSAGE
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # only surrogates fail to encode
        return f"Surrogate characters are not allowed: U+{ord(value[exc.start]):X}."
    return None


def storable(value: str) -> str:
    """`value` with NUL and lone surrogates written as backslash escapes: safe to store and to log."""
    if problem(value) is None:
        return value
    return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def find(data: object, field: str = "") -> list[BadText]:
    """Every string in a JSON-like value (keys too) that cannot be accepted, by dotted field path."""
    found: list[BadText] = []
    for bad in _walk(data, field):
        found.append(bad)
        if len(found) >= MAX_REPORTED:
            break
    return found


def _walk(data: object, field: str) -> Iterator[BadText]:
    if isinstance(data, str):
        message = problem(data)
        if message is not None:
            yield BadText(field, message)
    elif isinstance(data, Mapping):
        for key, value in data.items():
            name = str(key)
            path = f"{field}.{storable(name)}" if field else storable(name)
            key_problem = problem(name)
            if key_problem is not None:
                yield BadText(path, key_problem)
            yield from _walk(value, path)
    elif isinstance(data, list | tuple):
        for index, value in enumerate(data):
            yield from _walk(value, f"{field}.{index}" if field else str(index))


def field_errors(found: list[BadText], *, non_field: str = "non_field_errors") -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for bad in found:
        errors.setdefault(bad.field or non_field, []).append(bad.message)
    return errors


def refuse(data: object, *, message: str, code: str = "invalid", field: str = "") -> None:
    """Raise `Invalid` naming every field of `data` that holds text that cannot be accepted."""
    found = find(data, field)
    if found:
        raise Invalid(message, field_errors=field_errors(found), code=code)
