"""The Admin API versions served over GraphQL: Shopify's quarterly releases from 2024-01, and unstable."""

from __future__ import annotations

from typing import Final

VERSIONS: Final = (
    "2024-01",
    "2024-04",
    "2024-07",
    "2024-10",
    "2025-01",
    "2025-04",
    "2025-07",
    "2025-10",
    "2026-01",
    "2026-04",
    "2026-07",
    "2026-10",
    "2027-01",
    "unstable",
)


def since(version: str, first: str) -> bool:
    """`version` is `first` or later (`unstable` is later than every dated version)."""
    return version == "unstable" or version >= first
