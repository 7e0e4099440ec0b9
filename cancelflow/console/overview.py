"""The console's overview page: the figures of `services.overview` as tables, and the requests created and
completed per hour over the last 7 days as an SVG chart drawn here, on the server (no script: the page
works without JavaScript, and the chart's figures are also in a table for screen readers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from cancelflow.api.deps import DbSession
from cancelflow.console import web
from cancelflow.console.web import Staff, render
from cancelflow.services import overview as overview_service
from cancelflow.services.overview import HourBucket

router = APIRouter(prefix=web.PREFIX, include_in_schema=False)

# The chart's drawing area, in SVG user units (the image scales to the page's width).
WIDTH: Final = 720
HEIGHT: Final = 240
LEFT: Final = 44
RIGHT: Final = 12
TOP: Final = 12
BOTTOM: Final = 32


@dataclass(frozen=True, slots=True)
class Tick:
    position: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    left: int
    top: int
    right: int  # x of the plot's right edge
    bottom: int  # y of the plot's base line
    created: str  # polyline points
    completed: str
    x_ticks: Sequence[Tick]
    y_ticks: Sequence[Tick]


@dataclass(frozen=True, slots=True)
class DayTotal:
    day: date
    created: int
    completed: int


def chart(hours: Sequence[HourBucket]) -> Chart:
    """Two polylines over `hours` (the oldest first), scaled to the highest hourly figure, with a tick at
    each midnight (UTC) and at 0, half and the top of the count axis."""
    top_value = max([1, *(h.created for h in hours), *(h.completed for h in hours)])
    right, bottom = WIDTH - RIGHT, HEIGHT - BOTTOM
    step = (right - LEFT) / max(1, len(hours) - 1)

    def x(i: int) -> float:
        return round(LEFT + i * step, 1)

    def y(value: int) -> float:
        return round(bottom - (bottom - TOP) * value / top_value, 1)

    def points(values: Sequence[int]) -> str:
        return " ".join(f"{x(i)},{y(v)}" for i, v in enumerate(values))

    x_ticks = [Tick(x(i), h.hour.strftime("%b %d")) for i, h in enumerate(hours) if h.hour.hour == 0]
    y_values = sorted({0, top_value // 2, top_value})
    return Chart(
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        top=TOP,
        right=right,
        bottom=bottom,
        created=points([h.created for h in hours]),
        completed=points([h.completed for h in hours]),
        x_ticks=x_ticks,
        y_ticks=[Tick(y(v), str(v)) for v in y_values],
    )


def daily(hours: Sequence[HourBucket]) -> list[DayTotal]:
    """The hourly figures summed per day (UTC), the oldest day first."""
    totals: dict[date, tuple[int, int]] = {}
    for h in hours:
        created, completed = totals.get(h.hour.date(), (0, 0))
        totals[h.hour.date()] = (created + h.created, completed + h.completed)
    return [DayTotal(day, *figures) for day, figures in totals.items()]


@router.get("/overview", response_class=HTMLResponse)
def overview_page(request: Request, who: Staff, session: DbSession) -> Response:
    figures = overview_service.overview(session)
    waiting = figures.oldest_waiting
    context = {
        "title": "Overview",
        "who": who,
        "figures": figures,
        "waiting_hours": None if waiting is None else (figures.at - waiting.since).total_seconds() / 3600,
        "money": sorted(figures.money_today.items()),
        "chart": chart(figures.hourly),
        "days": daily(figures.hourly),
    }
    return render(request, "overview.html", context)
