"""Property-based HTTP tests from the OpenAPI schema (`/api/schema/`), with schemathesis.

Bounded for the suite: 10 generated examples per operation, derandomised (a fixed seed), no shrinking.
Every response must be no server error and conform to the schema (status code, content type, headers
and body). The operations are the Akinon cancellation-request resource (global and channel), login and
active user.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cancelflow.api.app import create_app
from tests.factories import VALID_IBAN, load, order_payload, service_payload, token_headers
from tests.harness import repeatable_examples

# Generated per operation at run time: runs in `make test`'s second, single-process pytest (see conftest).
pytestmark = pytest.mark.schema_fuzz

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
OPERATIONS = r"^/api/v1/(cancellation_requests/|channel/\{channel_id\}/cancellation_requests/|auth/login/|active_user/)"


@pytest.fixture(scope="module")
def staff_headers(database: str) -> dict[str, str]:
    return token_headers("staff", permissions=["view_iban"])


@pytest.fixture(scope="module")
def seeded(staff_headers: dict[str, str]) -> None:
    """A few requests (low ids in a fresh database), so that generated ids sometimes hit a real one."""
    service = service_payload()
    orders = [
        order_payload(service_handle=service["handle"], method="bank_transfer", quantity=50) for _ in range(2)
    ]
    load({"fulfillment_services": [service], "orders": orders})
    with TestClient(APP) as client:
        for order in orders:
            for _ in range(3):
                response = client.post(
                    "/api/v1/cancellation_requests/",
                    headers=staff_headers,
                    json={
                        "order_item": order["items"][0]["id"],
                        "reason": 1,
                        "quantity": 1,
                        "iban": VALID_IBAN,
                        "holder_name": "Bob",
                    },
                )
                assert response.status_code == 201, response.text


# Built at import (the app reads only settings, which tests/conftest.py has set; no database is touched
# until a request is made). schemathesis' `from_fixture` does not work with this pytest.
APP = create_app()
schema = schemathesis.openapi.from_asgi("/api/schema/", APP).include(path_regex=OPERATIONS)


@schema.parametrize()
@repeatable_examples(10)
def test_api_conforms_to_its_schema(case: Any, staff_headers: dict[str, str], seeded: None) -> None:
    case.call_and_validate(headers=staff_headers, checks=CHECKS)
