"""How long the sweeps wait before re-sending a row whose message was sent but not yet consumed."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import ColumnElement, Interval, func, literal
from sqlalchemy.orm import InstrumentedAttribute

from cancelflow.config import get_settings

# A re-sent message is given at most this many redelivery graces before the next re-send.
REDELIVERY_BACKOFF_CAP: Final = 8


def redelivery_wait(
    unchanged_since: InstrumentedAttribute[datetime], stamp: datetime
) -> ColumnElement[timedelta]:
    """SQL: how long a re-sent row waits before the sweep re-sends it again.

    The grace, or as long as the row has already gone unchanged (capped at REDELIVERY_BACKOFF_CAP graces),
    whichever is longer. The sweeps run however deep the queues are, so a message that is only late behind
    a deep queue must not be re-sent every grace (each copy would deepen the queue it waits in); a lost one
    is still re-sent, at growing intervals.
    """
    grace = get_settings().redelivery_grace
    waited = func.least(literal(stamp) - unchanged_since, literal(grace * REDELIVERY_BACKOFF_CAP, Interval()))
    return func.greatest(literal(grace, Interval()), waited, type_=Interval())
