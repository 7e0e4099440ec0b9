"""Task arguments as monitoring shows them: no IBANs, names or e-mail addresses.

Celery copies a repr of every task's arguments into the message headers (`argsrepr`, `kwargsrepr`), into
the `task-sent` and `task-received` events (which Flower displays and keeps), into the worker's
"received" and "succeeded" log lines (their `data`), into `inspect active/reserved` answers, and into
failure logs. Our own tasks take ids only; the storefront's `cancellations.submit` message carries an
IBAN, a holder name and perhaps an e-mail address by contract. So:

* every message this app publishes (API, workers, CLI) gets a redacted repr (`MaskingAMQP`);
* the worker never trusts the reprs a message brings: a producer (a storefront's own Celery client)
  chooses them, or sends none. `MaskedRequest` recomputes both from the decoded arguments, redacted
  (`redacted_repr`), before anything uses them: the `task-received` event, the log lines (in the pool
  process too: the request dict it gets carries the recomputed reprs), `inspect` answers; and masks the
  exception, traceback and result texts of the events it sends later;
* messages no task accepts (an unknown or misspelled task name, a malformed body) never reach a Request:
  their log lines are masked by `config.logging.PersonalDataFilter`, which withholds the body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from celery import signals
from celery.app.amqp import AMQP
from celery.utils.saferepr import saferepr
from celery.worker.request import Request

from cancelflow.config.logging import REDACTED, mask_text, mask_value

if TYPE_CHECKING:
    from celery import Celery
    from celery.app.amqp import task_message
    from celery.worker.request import _InfoDict

# Celery's defaults for the header reprs (`AMQP.argsrepr_maxsize`, `kwargsrepr_maxsize`).
ARGSREPR_MAXSIZE: Final = 1024
KWARGSREPR_MAXSIZE: Final = 1024
_EVENT_TEXTS: Final = ("exception", "traceback", "result", "reason", "args", "kwargs")

__all__ = ["REDACTED", "MaskedRequest", "MaskingAMQP", "redacted_repr"]


def redacted_repr(value: object, maxsize: int) -> str:
    """A repr of task arguments with personal values replaced, at any depth, and what is left masked."""
    return mask_text(saferepr(mask_value(value), maxsize))


class MaskingAMQP(AMQP):
    """The app's message factory: argument reprs are always redacted, whatever the caller passed."""

    def as_task_v2(
        self,
        task_id: str,
        name: str,
        args: tuple[object, ...] | None = None,
        kwargs: dict[str, object] | None = None,
        *rest: Any,
        **options: Any,
    ) -> task_message:
        options["argsrepr"] = redacted_repr(args if args is not None else (), self.argsrepr_maxsize)
        options["kwargsrepr"] = redacted_repr(kwargs if kwargs is not None else {}, self.kwargsrepr_maxsize)
        return super().as_task_v2(task_id, name, args, kwargs, *rest, **options)


class MaskedRequest(Request):
    """A received task whose argument reprs are recomputed, redacted, before any event or log uses them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # After Request.__init__ the arguments are decoded (`args`, `kwargs`); the header reprs are the
        # producer's and are dropped.
        # JSON-decoded arguments: `saferepr` and the masking cannot fail on them.
        argsrepr = redacted_repr(self.args, ARGSREPR_MAXSIZE)
        kwargsrepr = redacted_repr(self.kwargs, KWARGSREPR_MAXSIZE)
        self._argsrepr, self._kwargsrepr = argsrepr, kwargsrepr
        # The pool process logs "succeeded"/"failed" from the request dict it is sent: the same reprs.
        self.request_dict["argsrepr"] = argsrepr
        self.request_dict["kwargsrepr"] = kwargsrepr

    def send_event(self, type: str, **fields: object) -> None:
        for key in _EVENT_TEXTS:
            text = fields.get(key)
            if isinstance(text, str):
                fields[key] = mask_text(text)
        super().send_event(type, **fields)

    def info(self, safe: bool = False) -> _InfoDict:
        """`inspect active/reserved/scheduled` (Flower's worker pages): the redacted reprs, always."""
        return super().info(safe=True)


@signals.worker_init.connect
def _mask_received_arguments(sender: object = None, **_: object) -> None:
    """Before the consumer starts: every task's incoming messages become `MaskedRequest`s."""
    app: Celery | None = getattr(sender, "app", None)
    if app is None:
        return
    for task in app.tasks.values():
        task.Request = f"{__name__}:MaskedRequest"
