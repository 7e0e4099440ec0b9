"""The payment gateway URL follows the sandbox gateway's port unless it is configured."""

from __future__ import annotations

import pytest

from cancelflow.config.settings import Settings


def test_the_gateway_url_follows_the_sandbox_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CANCELFLOW_PAYMENT_GATEWAY_URL", raising=False)
    monkeypatch.setenv("CANCELFLOW_SANDBOX_GATEWAY_PORT", "9123")
    assert Settings(database_url="postgresql://x/y", broker_url="redis://z").payment_gateway_url == (
        "http://127.0.0.1:9123"
    )


def test_a_configured_gateway_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANCELFLOW_SANDBOX_GATEWAY_PORT", "9123")
    monkeypatch.setenv("CANCELFLOW_PAYMENT_GATEWAY_URL", "https://gateway.example")
    settings = Settings(database_url="postgresql://x/y", broker_url="redis://z")
    assert settings.payment_gateway_url == "https://gateway.example"
