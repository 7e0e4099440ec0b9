"""One in-process world of steps (every kind in every status) shared by the security tests that need it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cancelflow.services import jobs
from tests.security.world import World, build, captured_sender


@pytest.fixture(scope="session")
def world(database: str) -> World:
    """Built once; tests must leave it as they found it (what they add, they add beside it)."""
    for sent in captured_sender():
        return build(sent)
    raise AssertionError("unreachable")


@pytest.fixture
def sent(database: str) -> Iterator[list[jobs.Send]]:
    """Every after-commit send of the test, kept here instead of going to the broker."""
    yield from captured_sender()
