"""One in-process world of steps (every kind in every status) shared by the security tests that need it."""

from __future__ import annotations

import pytest

from tests.factories import captured_sender
from tests.security.world import World, build


@pytest.fixture(scope="session")
def world(database: str) -> World:
    """Built once; tests must leave it as they found it (what they add, they add beside it)."""
    for sent in captured_sender():
        return build(sent)
    raise AssertionError("unreachable")
