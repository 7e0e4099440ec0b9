"""Task arguments as monitoring shows them: no IBANs, names or e-mail addresses.

Celery copies a repr of every task's arguments into the message headers and into the `task-sent` and
`task-received` events, which Flower displays and keeps. Our own tasks take ids only; the storefront's
`cancellations.submit` message carries an IBAN and a holder name by contract. So:

* every message this app publishes (API, workers, CLI) gets a redacted repr: personal fields replaced,
  and anything left that looks like an IBAN or an e-mail address masked;
* the worker masks the repr of messages from other producers (a storefront's own Celery client) before
  it reaches the `task-received` event. It only has the producer's repr text there, so IBANs and e-mail
  addresses are masked but a name in free text is not: producers should pass `kwargsrepr` themselves.
"""

from __future__ import annotations

from typing import Any, Final

from celery import signals
from celery.app.amqp import AMQP
from celery.utils.saferepr import saferepr
from celery.worker.request import Request

from cancelflow.config.logging import mask_text

PERSONAL_FIELDS: Final = frozenset({"iban", "holder_name", "description", "email", "name", "phone"})
REDACTED: Final = "<redacted>"


def redacted_repr(value: Any, maxsize: int) -> str:
    if isinstance(value, dict):
        value = {k: REDACTED if k in PERSONAL_FIELDS and v else v for k, v in value.items()}
    return mask_text(saferepr(value, maxsize))


class MaskingAMQP(AMQP):
    """The app's message factory, with redacted argument reprs unless the caller gave its own."""

    def as_task_v2(
        self, task_id: str, name: str, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any
    ) -> Any:
        if options.get("argsrepr") is None:
            options["argsrepr"] = redacted_repr(args if args is not None else (), self.argsrepr_maxsize)
        if options.get("kwargsrepr") is None:
            options["kwargsrepr"] = redacted_repr(
                kwargs if kwargs is not None else {}, self.kwargsrepr_maxsize
            )
        return super().as_task_v2(task_id, name, args, kwargs, *rest, **options)


class MaskedRequest(Request):
    """A received task whose argument reprs are masked before any event or log line uses them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._argsrepr = mask_text(str(getattr(self, "_argsrepr", "") or ""))
        self._kwargsrepr = mask_text(str(getattr(self, "_kwargsrepr", "") or ""))


@signals.worker_init.connect
def _mask_received_arguments(sender: Any = None, **_: Any) -> None:
    """Before the consumer starts: every task's incoming messages become `MaskedRequest`s."""
    app = getattr(sender, "app", None)
    if app is None:
        return
    for task in app.tasks.values():
        if task.Request == Request.__module__ + ":Request" or task.Request is Request:
            task.Request = f"{__name__}:MaskedRequest"
