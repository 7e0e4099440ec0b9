"""Refuse text PostgreSQL cannot store, on every route, before auth, validation or a handler runs.

An app-wide dependency: it sees the route's decoded path parameters, every query parameter (declared
or read by hand, like the django-filter names), every header and the JSON body. A refusal is `Invalid`,
mapped by `api.errors` to the path's dialect (Akinon 400, Shopify 422), naming the field; nothing runs
after it, so nothing is stored.
"""

from __future__ import annotations

import contextlib
import json
import re

from fastapi import Request

from cancelflow import textcheck
from cancelflow.errors import Invalid

# A UTF-8 body can only decode to NUL or a lone surrogate through one of these JSON escapes (raw control
# bytes are not JSON): the rest is never parsed twice. UTF-16 and UTF-32 JSON, which `json.loads` also
# reads, can carry lone surrogates unescaped, so such a body is always looked at.
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
_ASCII_COMPATIBLE = frozenset({"utf-8", "utf-8-sig"})
MESSAGE = "text that cannot be stored"


async def refuse_bad_text(request: Request) -> None:
    found: list[textcheck.BadText] = []
    for name, value in request.path_params.items():
        if isinstance(value, str):
            found += textcheck.find(value, name)
    for name, value in request.query_params.multi_items():
        found += textcheck.find({name: value})
    for raw_name, raw_value in request.headers.raw:
        if b"\x00" in raw_value:  # header bytes are latin-1: NUL is the only character to refuse
            found.append(textcheck.BadText(raw_name.decode("latin-1"), textcheck.NUL_MESSAGE))
    body = await request.body()
    if body and (json.detect_encoding(body) not in _ASCII_COMPATIBLE or _SUSPECT_ESCAPE.search(body)):
        # Not JSON (or not UTF-8): the route's own parsing answers that.
        with contextlib.suppress(ValueError):
            found += textcheck.find(json.loads(body))
    if found:
        raise Invalid(MESSAGE, field_errors=textcheck.field_errors(found[: textcheck.MAX_REPORTED]))
