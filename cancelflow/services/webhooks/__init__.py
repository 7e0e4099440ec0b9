"""Outbound webhooks to storefronts, through a transactional outbox (DESIGN rule 9).

`subscriptions`: who listens to which events, and pausing a receiver that keeps failing.
`outbox`: the `WebhookDelivery` rows written in the transaction of the change they report.
`delivery`: trying a row, the order and timers of its retries, the sweep, redelivery by hand.
The signed HTTP request itself is `cancelflow.integrations.webhooks`.
"""
