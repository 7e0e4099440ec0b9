"""Shopify's GraphQL Admin API: the fulfillment-order cancellation subset."""
