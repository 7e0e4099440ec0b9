"""Connectors to the outside: fulfillment services, the payment gateway, the bank, loyalty.

Each is a Protocol with an HTTP implementation; `load()` picks the one settings name, so a real
gateway or service plugs in by configuration.
"""

from __future__ import annotations

import importlib
from typing import Any


def load(path: str) -> Any:
    """Import `module:Attribute` and return it (a class or a factory)."""
    module_name, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"connector path {path!r} must look like 'package.module:ClassName'")
    return getattr(importlib.import_module(module_name), attr)


_instances: dict[str, Any] = {}


def connector(path: str) -> Any:
    """One instance per configured connector path and process (connection pools are reused)."""
    if path not in _instances:
        _instances[path] = load(path)()
    return _instances[path]
