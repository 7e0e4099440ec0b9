"""IBAN checks at intake, with schwifty (country format and ISO 7064 checksum).

The reason an IBAN is refused is one of a few fixed sentences chosen by schwifty's exception class, never
schwifty's own text: that text quotes the IBAN (or its BBAN), and the reason is stored in
`rejection_message` and shown to storefronts, API clients and logs.
"""

from __future__ import annotations

import re
from typing import Final

from schwifty import IBAN
from schwifty import exceptions as iban_errors

_CHARACTERS: Final = re.compile(r"[A-Z0-9]*")

# Most specific first: the first class an exception is an instance of names the reason.
REASONS: Final[tuple[tuple[type[Exception], str], ...]] = (
    (iban_errors.InvalidCountryCode, "unknown country code"),
    (iban_errors.InvalidLength, "wrong length for its country"),
    (iban_errors.InvalidChecksumDigits, "wrong check digits"),
    (iban_errors.InvalidBankCode, "the bank code does not match its country's format"),
    (iban_errors.InvalidBranchCode, "the branch code does not match its country's format"),
    (iban_errors.InvalidAccountCode, "the account number fails its national check"),
    (iban_errors.InvalidBBANChecksum, "the account number fails its national check"),
    (iban_errors.InvalidStructure, "does not match its country's format"),
)
INVALID_CHARACTERS: Final = "only letters, digits and spaces are allowed"
INVALID: Final = "not a valid IBAN"


def normalise(value: str) -> str:
    return "".join(value.split()).upper()


def reason_for(exc: BaseException) -> str:
    """The fixed reason for a schwifty exception (never its text, which quotes the input)."""
    for cls, reason in REASONS:
        if isinstance(exc, cls):
            return reason
    return INVALID


def validate(value: str) -> str | None:
    """Return the reason the IBAN is invalid (one of the fixed sentences above), or None when valid."""
    compact = normalise(value)
    if not compact:
        return INVALID
    if not _CHARACTERS.fullmatch(compact):
        return INVALID_CHARACTERS
    try:
        IBAN(compact)
    except (ValueError, IndexError) as exc:  # SchwiftyException is a ValueError; a short BBAN may index out
        return reason_for(exc)
    return None


def mask(value: str | None) -> str | None:
    """Show the country and the last four characters only."""
    if not value:
        return value
    compact = normalise(value)
    if len(compact) <= 6:
        return "*" * len(compact)
    return compact[:2] + "*" * (len(compact) - 6) + compact[-4:]
