"""The list under a date bound reads newest first by that date, and the status tabs count in one scan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from cancelflow.db import transaction
from cancelflow.models import CancellationRequest
from cancelflow.models.enums import RequestStatus
from cancelflow.services import queries
from cancelflow.services.queries import RequestFilters
from tests.factories import new_request

# A year no other test writes: only this module's requests fall in it.
DAY0 = datetime(2003, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def dated() -> list[tuple[int, datetime]]:
    """Seven requests whose creation times do NOT follow their ids (as imported history may), and one
    rejected, so a list by date and a list by id differ."""
    ids = [new_request().id for _ in range(7)]
    offsets = [3, 0, 6, 1, 5, 2, 4]  # hours after DAY0, per id in id order
    stamps = [DAY0 + timedelta(hours=h) for h in offsets]
    with transaction() as session:
        for request_id, stamp in zip(ids, stamps, strict=True):
            session.execute(
                update(CancellationRequest)
                .where(CancellationRequest.id == request_id)
                .values(created_date=stamp)
            )
        session.execute(
            update(CancellationRequest)
            .where(CancellationRequest.id == ids[0])
            .values(status=RequestStatus.rejected)
        )
    return sorted(zip(ids, stamps, strict=True), key=lambda pair: (pair[1], pair[0]), reverse=True)


def _bounded(**extra: object) -> RequestFilters:
    return RequestFilters.parse(
        [("created_date__date__gte", "2003-03-01"), ("created_date__date__lte", "2003-03-01"), *extra.items()]
    )


def test_a_date_bound_lists_newest_first_by_that_date_and_its_cursors_walk_both_ways(
    dated: list[tuple[int, datetime]],
) -> None:
    expected = [request_id for request_id, _ in dated]
    filters = _bounded()
    with transaction() as session:
        assert queries.date_order(filters) is CancellationRequest.created_date
        by_id = queries.list_requests(session, filters, 1, 3)
        assert [r.id for r in by_id.results] == sorted(expected, reverse=True)[:3]  # the API's order is kept

        first = queries.list_requests(session, filters, 1, 3, by_date=True)
        assert [r.id for r in first.results] == expected[:3]
        assert first.has_next
        assert first.count == 7
        second = queries.list_requests(session, filters, 2, 3, after=first.results[-1].id, by_date=True)
        assert [r.id for r in second.results] == expected[3:6]
        third = queries.list_requests(session, filters, 3, 3, after=second.results[-1].id, by_date=True)
        assert [r.id for r in third.results] == expected[6:]
        assert not third.has_next
        back = queries.list_requests(session, filters, 2, 3, before=third.results[0].id, by_date=True)
        assert [r.id for r in back.results] == expected[3:6]
        assert back.has_next
        numbered = queries.list_requests(session, filters, 2, 3, by_date=True)  # no cursor: by number
        assert [r.id for r in numbered.results] == expected[3:6]


def test_status_tabs_are_exact_in_one_scan_and_estimates_past_the_bound(
    dated: list[tuple[int, datetime]],
) -> None:
    with transaction() as session:
        per_status, total = queries.status_tabs(session, _bounded(), exact_up_to=100)
        assert total == (7, False)
        assert per_status[RequestStatus.rejected.value] == (1, False)
        assert per_status[RequestStatus.waiting.value] == (6, False)
        assert per_status[RequestStatus.completed.value] == (0, False)
        assert set(per_status) == {s.value for s in RequestStatus}
        # The current tab does not narrow the others: a status filter is set aside for the counts.
        narrowed, _ = queries.status_tabs(session, _bounded(status="rejected"), exact_up_to=100)
        assert narrowed == per_status

        per_status, (count, estimated) = queries.status_tabs(session, _bounded(), exact_up_to=3)
        assert estimated
        assert count >= 4
        assert all(is_estimate for _, is_estimate in per_status.values())
