"""IBAN checks at intake, with schwifty (country format and ISO 7064 checksum)."""

from __future__ import annotations

from schwifty import IBAN
from schwifty.exceptions import SchwiftyException


def normalise(value: str) -> str:
    return "".join(value.split()).upper()


def validate(value: str) -> str | None:
    """Return the reason the IBAN is invalid, or None when it is valid."""
    try:
        IBAN(normalise(value))
    except SchwiftyException as exc:
        return str(exc) or type(exc).__name__
    return None


def mask(value: str | None) -> str | None:
    """Show the country and the last four characters only."""
    if not value:
        return value
    compact = normalise(value)
    if len(compact) <= 6:
        return "*" * len(compact)
    return compact[:2] + "*" * (len(compact) - 6) + compact[-4:]
