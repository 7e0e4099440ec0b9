"""IBAN checks (schwifty) and masking."""

from __future__ import annotations

import pytest

from cancelflow.config.logging import mask_text
from cancelflow.services import iban


@pytest.mark.parametrize(
    "value",
    [
        "DE89370400440532013000",
        "de89 3704 0044 0532 0130 00",
        "TR330006100519786457841326",
        "GB29NWBK60161331926819",
    ],
)
def test_valid(value: str) -> None:
    assert iban.validate(value) is None


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("DE89370400440532013001", "checksum"),
        ("DE8937040044053201300", "length"),
        ("XX89370400440532013000", "country"),
        ("", "length"),
        ("DE89-3704-0044", "characters"),
    ],
)
def test_invalid(value: str, why: str) -> None:
    reason = iban.validate(value)
    assert reason is not None, why


def test_mask_keeps_country_and_last_four() -> None:
    assert iban.mask("DE89 3704 0044 0532 0130 00") == "DE****************3000"
    assert iban.mask(None) is None


def test_log_masking_hides_ibans_and_emails() -> None:
    text = mask_text("refund to DE89370400440532013000 for bob.norman@hostmail.com")
    assert "DE89370400440532013000" not in text
    assert "bob.norman@" not in text
    assert text.endswith("b***@hostmail.com")
