"""Connectors are made from the settings' paths and typed by their protocols."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cancelflow import integrations
from cancelflow.integrations.bank import HttpBankTransfer
from cancelflow.integrations.fulfillment import HttpNotifier
from cancelflow.integrations.payments import HttpPaymentGateway


class NotAGateway:
    """Configured by mistake: it has no `refund`."""

    def transfer(self) -> None: ...


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    settings = SimpleNamespace(
        payment_connector="cancelflow.integrations.payments:HttpPaymentGateway",
        bank_connector="cancelflow.integrations.bank:HttpBankTransfer",
        notifier_connector="cancelflow.integrations.fulfillment:HttpNotifier",
    )
    monkeypatch.setattr(integrations, "get_settings", lambda: settings)
    monkeypatch.setattr(integrations, "_instances", {})
    return settings


def test_each_accessor_returns_the_configured_implementation_once(configured: SimpleNamespace) -> None:
    gateway = integrations.payment_gateway()
    assert isinstance(gateway, HttpPaymentGateway)
    assert integrations.payment_gateway() is gateway  # one per process: its connection pool is reused
    assert isinstance(integrations.bank_transfer(), HttpBankTransfer)
    assert isinstance(integrations.notifier(), HttpNotifier)


def test_a_connector_without_its_protocols_methods_is_refused(configured: SimpleNamespace) -> None:
    configured.payment_connector = f"{__name__}:NotAGateway"
    with pytest.raises(TypeError, match="does not implement PaymentGateway"):
        integrations.payment_gateway()


@pytest.mark.parametrize(
    "path", ["cancelflow.integrations.payments", "cancelflow.integrations.http:MAX_RETRY_AFTER"]
)
def test_a_path_that_names_no_factory_is_refused(path: str) -> None:
    with pytest.raises((ValueError, TypeError)):
        integrations.load(path)
