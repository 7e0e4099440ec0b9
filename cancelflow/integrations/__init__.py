"""Connectors to the outside: fulfillment services, the payment gateway, the bank, loyalty.

Each is a Protocol with an HTTP implementation; settings name the implementation
(`CANCELFLOW_PAYMENT_CONNECTOR`, …), so a real gateway or service plugs in by configuration. The accessors
below return the configured connector typed by its protocol, and refuse one that does not implement it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from cancelflow.config import get_settings
from cancelflow.integrations.bank import BankTransfer
from cancelflow.integrations.fulfillment import Notifier
from cancelflow.integrations.payments import PaymentGateway


def load(path: str) -> Callable[[], object]:
    """Import `module:Attribute` and return it (a class or a factory taking no argument)."""
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"connector path {path!r} must look like 'package.module:ClassName'")
    factory = getattr(importlib.import_module(module_name), attr)
    if not callable(factory):
        raise TypeError(f"connector {path!r} is not a class or a factory")
    return cast(Callable[[], object], factory)


_instances: dict[str, object] = {}


def connector(path: str) -> object:
    """One instance per configured connector path and process (connection pools are reused)."""
    if path not in _instances:
        _instances[path] = load(path)()
    return _instances[path]


def _implementing(path: str, protocol: type[object]) -> object:
    """The connector `path` names, refused unless it implements `protocol`: a setting naming the wrong class
    fails loudly at its first use, not with an AttributeError mid-step. (The accessors cast to the protocol:
    a Protocol class cannot be passed where a type variable is bound to it.)"""
    instance = connector(path)
    if not isinstance(instance, protocol):
        raise TypeError(f"connector {path!r} does not implement {protocol.__name__}")
    return instance


def payment_gateway() -> PaymentGateway:
    return cast(PaymentGateway, _implementing(get_settings().payment_connector, PaymentGateway))


def bank_transfer() -> BankTransfer:
    return cast(BankTransfer, _implementing(get_settings().bank_connector, BankTransfer))


def notifier() -> Notifier:
    return cast(Notifier, _implementing(get_settings().notifier_connector, Notifier))


__all__ = ["bank_transfer", "connector", "load", "notifier", "payment_gateway"]
