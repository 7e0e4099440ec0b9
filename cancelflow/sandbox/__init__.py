"""Sandbox stand-ins for the external services cancelflow talks to.

Each module is a small FastAPI application run as its own process (``make run``, the demo and the
integration tests start them), so cancelflow exercises its real HTTP connectors against them:

* :mod:`cancelflow.sandbox.gateway` -- a payment gateway with Stripe-style idempotency keys
  (refunds to the original payment, bank transfers) and runtime failure injection.
* :mod:`cancelflow.sandbox.fulfillment` -- a Shopify-style third-party fulfillment service that is
  notified, then pulls its assigned fulfillment orders and accepts or rejects cancellation requests.

Production code must never import this package: the sandboxes are test doubles, not libraries.
"""
