"""The data behind every chart, as tables: what the dashboard draws and what the exports download.

One function per chart returns a :class:`Table` (column names and rows), so a chart and its CSV
and JSON downloads can never disagree.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.insights import service
from civicsignals.insights.models import EmergingIssue
from civicsignals.insights.service import Filters

BREAKDOWNS = {
    "topics": "topic",
    "channels": "channel",
    "kinds": "kind",
    "languages": "language",
    "areas": "area",
    "modes": "mode",
}
CHARTS: dict[str, str] = {
    "volume": "signals per period, active and passive",
    "over-time": "signals per period and value of one dimension (split=topic, channel, kind, language, area)",
    "topics": "signals per topic",
    "subtopics": "signals per topic and subtopic",
    "channels": "signals per channel",
    "kinds": "signals per kind",
    "languages": "signals per language",
    "areas": "signals per area",
    "modes": "active and passive signals",
    "topic-language": "signals per topic and language",
    "departments": "cases per department: open, SLA compliance, resolution time, satisfaction",
    "satisfaction": "satisfaction per topic",
    "emerging": "emerging issues in the period",
    "signals": "the redacted signals behind the numbers (at most 10 000)",
}
SIGNALS_EXPORT_LIMIT = 10_000


@dataclass
class Table:
    chart: str
    columns: list[str]
    rows: list[list[Any]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


async def emerging_issues(session: AsyncSession, tenant: str, start: date, end: date) -> list[EmergingIssue]:
    result = await session.exec(
        select(EmergingIssue)
        .where(
            col(EmergingIssue.tenant) == tenant,
            col(EmergingIssue.day) >= start,
            col(EmergingIssue.day) <= end,
        )
        .order_by(col(EmergingIssue.day).desc(), col(EmergingIssue.score).desc())
    )
    return list(result.all())


async def table(
    session: AsyncSession,
    tenant: str,
    chart: str,
    filters: Filters,
    *,
    interval: str = "day",
    split: str = "topic",
) -> Table:
    """The rows of one chart; ``chart`` must be a key of :data:`CHARTS`."""
    if chart == "over-time":
        points = await service.trend(session, tenant, filters, interval=interval, group_by=split)
        return Table(chart, ["period", split, "count"], [[p.isoformat(), g, n] for p, g, n in points])
    if chart == "volume":
        points = await service.trend(session, tenant, filters, interval=interval, group_by="mode")
        return Table(chart, ["period", "mode", "count"], [[p.isoformat(), g, n] for p, g, n in points])
    if chart in BREAKDOWNS:
        dimension = BREAKDOWNS[chart]
        rows = await service.breakdown(session, tenant, filters, dimension, limit=1000)
        return Table(chart, [dimension, "count"], [[value, n] for value, n in rows])
    if chart == "subtopics":
        cells = await service.cross(session, tenant, filters, "topic", "subtopic")
        cells.sort(key=lambda c: (c[0], -c[2], c[1]))
        return Table(chart, ["topic", "subtopic", "count"], [list(c) for c in cells])
    if chart == "topic-language":
        cells = await service.cross(session, tenant, filters, "topic", "language")
        cells.sort(key=lambda c: (c[0], c[1]))
        return Table(chart, ["topic", "language", "count"], [list(c) for c in cells])
    if chart == "departments":
        departments = await service.departments(session, tenant, filters)
        columns = list(service.DEPARTMENT_COLUMNS)
        return Table(chart, columns, [[row.get(c) for c in columns] for row in departments])
    if chart == "satisfaction":
        by_topic = await service.satisfaction_by_topic(session, tenant, filters)
        columns = ["topic", "feedback", "mean_score", "satisfied_share"]
        return Table(chart, columns, [[row[c] for c in columns] for row in by_topic])
    if chart == "emerging":
        issues = await emerging_issues(session, tenant, filters.start, filters.end)
        columns = [
            "day",
            "series",
            "topic",
            "subtopic",
            "area",
            "observed",
            "expected",
            "p_value",
            "baseline",
        ]
        return Table(
            chart,
            columns,
            [
                [
                    i.day.isoformat(),
                    i.series,
                    i.topic,
                    i.subtopic,
                    i.area,
                    i.observed,
                    i.expected,
                    i.p_value,
                    i.baseline,
                ]
                for i in issues
            ],
        )
    if chart == "signals":
        items, _ = await service.signals(session, tenant, filters, limit=SIGNALS_EXPORT_LIMIT)
        columns = [
            "signal_id",
            "received_at",
            "topic",
            "subtopic",
            "channel",
            "kind",
            "language",
            "area",
            "mode",
            "text",
        ]
        return Table(
            chart,
            columns,
            [
                [
                    item["received_at"].isoformat() if c == "received_at" and item[c] else item[c]
                    for c in columns
                ]
                for item in items
            ],
        )
    raise KeyError(chart)


def _cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run as a formula (text starting with = + - @)."""
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def to_csv(data: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(data.columns)
    for row in data.rows:
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue()


def to_json(data: Table, **context: Any) -> str:
    return json.dumps(
        {"chart": data.chart, **context, "columns": data.columns, "rows": data.records()}, default=str
    )


def transparency_table(rows: list[service.TransparencyRow]) -> Table:
    columns = [
        "topic",
        "reported",
        "closed",
        "median_days_to_resolve",
        "satisfied_share",
        "mean_score",
        "notes",
    ]
    return Table(
        "transparency",
        columns,
        [
            [r.topic, r.reported, r.closed, r.median_days, r.satisfied_share, r.mean_score, r.notes]
            for r in rows
        ],
    )
