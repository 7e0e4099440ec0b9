"""A failed SQL statement's error text is logged and stored (a step's `last_error`, an export or bulk
job's `error`): it quotes the statement but never the values bound to it (IBANs, holder names)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from cancelflow.db import transaction
from tests.factories import VALID_IBAN

HOLDER = "Maximiliane Geheimnisträger"


def test_statement_errors_do_not_quote_bound_values(database: str) -> None:
    with pytest.raises(DBAPIError) as info, transaction() as session:
        session.execute(
            text("SELECT 1 / :zero WHERE :iban <> :holder"),
            {"zero": 0, "iban": VALID_IBAN, "holder": HOLDER},
        )
    shown = f"{type(info.value).__name__}: {info.value}"
    assert "division by zero" in shown
    assert VALID_IBAN not in shown
    assert HOLDER not in shown
