"""Money steps: one task per refund target, each moving money at most once per idempotency key."""

from __future__ import annotations

from cancelflow.services import settlement
from cancelflow.worker.app import celery_app
from cancelflow.worker.base import DbTask


@celery_app.task(
    name="payments.refund", base=DbTask, bind=True, step_handler=staticmethod(settlement.money_step)
)
def refund(self: DbTask, step_id: int) -> str:
    """Refund to the original card payment through the payment gateway."""
    return self.run_step(step_id)


@celery_app.task(
    name="payments.bank_transfer", base=DbTask, bind=True, step_handler=staticmethod(settlement.money_step)
)
def bank_transfer(self: DbTask, step_id: int) -> str:
    """Transfer the refund to the customer's IBAN."""
    return self.run_step(step_id)


@celery_app.task(
    name="loyalty.credit", base=DbTask, bind=True, step_handler=staticmethod(settlement.money_step)
)
def loyalty_credit(self: DbTask, step_id: int) -> str:
    """Credit the refund to the customer's loyalty ledger."""
    return self.run_step(step_id)
