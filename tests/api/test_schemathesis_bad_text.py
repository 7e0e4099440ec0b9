"""schemathesis over the operations of `/api/schema/` that took NUL to the database, with bad text in each case.

schemathesis' own string alphabet may draw NUL (`allow_x00`, on by default) but never a lone surrogate
(its codecs exclude category Cs), and a NUL rarely lands in the one field that reaches the database.
The `flatmap_case` hook below puts one (NUL or, in a JSON body, a lone surrogate) into one generated
text value of each case: a body leaf, a query parameter or a path parameter. The answer must be no server
error, conform to the schema, and be a 4xx naming the request invalid (Akinon 400, Shopify 422).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    status_code_conformance,
)

from cancelflow import textcheck
from cancelflow.api.app import create_app
from tests.factories import token_key
from tests.harness import repeatable_examples

# Generated per operation at run time: runs in `make test`'s second, single-process pytest (see conftest).
pytestmark = pytest.mark.schema_fuzz

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance]

APP = create_app()  # settings only: no database is touched until a request is made
# The operations the defect was found on: tags, webhooks, login, the fulfillment-order replies. The tag
# lists (`filter_by_tags`, 50 query parameters each) cost more to generate than all of these together;
# tests/api/test_bad_text.py walks every operation of the schema, those included.
OPERATIONS = (
    r"/(add_tags?|remove_tags?|bulk_add_tags|bulk_remove_tags)/$"
    r"|^/api/v1/(webhooks|auth/login)/$"
    r"|/cancellation_request(/accept|/reject)?\.json$"
)
schema = schemathesis.openapi.from_asgi("/api/schema/", APP).include(path_regex=OPERATIONS)

Slot = tuple[str, tuple[str | int, ...]]  # (container, path inside it)


def _leaves(value: Any, at: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    if isinstance(value, str):
        yield at
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*at, index))


def _replace(value: Any, path: tuple[str | int, ...], new: str) -> Any:
    if not path:
        return new
    value = copy.copy(value)
    value[path[0]] = _replace(value[path[0]], path[1:], new)
    return value


def _bad(chars: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(lambda a, c, b: a + c + b, st.text(max_size=4), chars, st.text(max_size=4))


NUL = st.just("\x00")
BODY_BAD = _bad(st.one_of(NUL, st.characters(categories=["Cs"])))
URL_BAD = _bad(NUL)  # a query string or path carries bytes: a lone surrogate has none


def flatmap_case(ctx: Any, case: Any) -> Any:
    slots: list[Slot] = (
        [("body", p) for p in _leaves(case.body)] if isinstance(case.body, dict | list) else []
    )
    slots += [("query", p) for p in _leaves(case.query or {})]
    slots += [("path_parameters", p) for p in _leaves(case.path_parameters or {})]
    if not slots:
        return st.just(case)

    def inject(slot: Slot, body_value: str, url_value: str) -> Any:
        container, path = slot
        new = _replace(getattr(case, container), path, body_value if container == "body" else url_value)
        # Not `setattr`: that would have schemathesis re-validate the case's metadata, and its validator
        # cannot encode a lone surrogate. The bad value is the point of the case, not a schema question.
        object.__setattr__(case, container, new)
        return case

    return st.builds(inject, st.sampled_from(slots), BODY_BAD, URL_BAD)


@pytest.fixture(scope="module")
def headers(database: str) -> dict[str, str]:
    key = token_key("staff")
    return {"Authorization": f"Token {key}", "X-Shopify-Access-Token": key}


@schema.hooks.apply(flatmap_case)
@schema.parametrize()
@repeatable_examples(3)
def test_text_that_cannot_be_stored_is_never_a_server_error(case: Any, headers: dict[str, str]) -> None:
    response = case.call_and_validate(headers=headers, checks=CHECKS)
    injected = textcheck.find([case.body, case.query, case.path_parameters])
    if injected and response.status_code != 404:  # 404: a path that names nothing, refused as such
        assert response.status_code in (400, 422), response.text
