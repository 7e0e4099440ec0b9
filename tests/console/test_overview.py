"""The console's overview page without a browser: the figures of `services.overview` rendered as tables,
the 7-day chart as an inline SVG with an accessible name, and no page without a session."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from cancelflow.api.app import create_app
from cancelflow.console.overview import chart, daily
from cancelflow.db import transaction
from cancelflow.models.enums import RequestStatus
from cancelflow.services import overview
from cancelflow.services.overview import HourBucket
from tests.conftest import restored_logging
from tests.console.support import sign_in, staff_user
from tests.factories import new_request


@pytest.fixture(scope="module")
def console(database: str) -> Iterator[TestClient]:
    with restored_logging(), TestClient(create_app()) as client:
        assert sign_in(client, staff_user()).status_code == 303
        yield client


def test_the_page_renders_the_figures_and_an_accessible_chart(console: TestClient) -> None:
    new_request()
    with transaction() as session:
        figures = overview.overview(session)
    page = console.get("/console/overview")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    text = page.text
    waiting = figures.requests[RequestStatus.waiting]
    assert waiting >= 1
    assert re.search(rf'status=waiting">waiting</a></th><td>{waiting}</td>', text)
    # Today's row of the daily table counts the request just made.
    today = figures.hourly[-1]
    day = [b for b in figures.hourly if b.hour.date() == today.hour.date()]
    created_today = sum(b.created for b in day)
    assert created_today >= 1
    assert f'<th scope="row">{today.hour.date().isoformat()}</th><td>{created_today}</td>' in text
    hour = f"{today.hour.strftime('%Y-%m-%d %H')}:00"
    assert f'<th scope="row">{hour}</th><td>{today.created}</td><td>{today.completed}</td>' in text
    # The chart: inline SVG named by its title and description, with both series and the count axis.
    svg = re.search(r"<svg [^>]*>.*?</svg>", text, re.S)
    assert svg is not None
    assert 'role="img"' in svg[0]
    assert 'aria-labelledby="chart-title chart-desc"' in svg[0]
    assert re.search(r'<title id="chart-title">Requests created and completed per hour', svg[0])
    assert svg[0].count("<polyline") == 2
    points = re.search(r'class="created"[^>]*points="([^"]+)"', svg[0])
    assert points is not None
    assert len(points[1].split()) == overview.HOURS
    # The money table shows what the service read, or says there was none.
    if figures.money_today:
        for (target, code), amount in figures.money_today.items():
            assert f"<td>{target.value}</td><td>{code}</td><td>{amount}</td>" in text
    else:
        assert "No money moved today." in text
    assert 'href="/console/overview" aria-current="page"' in text


def test_no_session_is_sent_to_sign_in(database: str) -> None:
    with restored_logging(), TestClient(create_app()) as client:
        answer = client.get("/console/overview", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/login?next=%2Fconsole%2Foverview"


def test_the_chart_scales_to_the_highest_hour_and_marks_each_midnight() -> None:
    start = datetime(2026, 3, 1, 22, tzinfo=UTC)
    hours = [HourBucket(start + timedelta(hours=i), created=i % 3, completed=0) for i in range(5)]
    drawn = chart(hours)
    created = [tuple(map(float, p.split(","))) for p in drawn.created.split()]
    assert [x for x, _ in created] == sorted(x for x, _ in created)
    assert (created[0][0], created[-1][0]) == (drawn.left, drawn.right)
    # 0 sits on the base line, the highest hour (2) on the top of the plot.
    assert [y for _, y in created] == [
        drawn.bottom,
        drawn.bottom - (drawn.bottom - drawn.top) / 2,
        drawn.top,
        drawn.bottom,
        drawn.bottom - (drawn.bottom - drawn.top) / 2,
    ]
    assert {float(y) for _, y in (p.split(",") for p in drawn.completed.split())} == {drawn.bottom}
    assert [(t.position, t.label) for t in drawn.x_ticks] == [(created[2][0], "Mar 02")]
    assert [t.label for t in drawn.y_ticks] == ["0", "1", "2"]
    assert [day.created for day in daily(hours)] == [1, 3]
