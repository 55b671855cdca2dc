"""Insights' API for staff and other systems: trends, emerging issues and exports (bearer keys)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from civicsignals.common.auth import Principal, scope_dependency
from civicsignals.common.problems import Problem
from civicsignals.insights import reports, service
from civicsignals.insights.flows import InsightsContext
from civicsignals.insights.models import (
    EmergingPublic,
    EmergingResponse,
    TrendPoint,
    TrendResponse,
)
from civicsignals.insights.service import Filters

Reader = Annotated[Principal, Depends(scope_dependency("insights:read"))]
router = APIRouter(tags=["insights"])

CODE = r"^[a-z0-9-]{1,64}$"
AREA = r"^[A-Za-z0-9 _.:-]{1,64}$"
LANGUAGE = r"^[a-z]{2,8}$"
MAX_DAYS = 3 * 366
Dimension = Literal["topic", "subtopic", "channel", "kind", "language", "area", "mode"]
Interval = Literal["day", "week", "month"]
Split = Literal["topic", "subtopic", "channel", "kind", "language", "area"]


def context(request: Request) -> InsightsContext:
    ctx: InsightsContext = request.app.state.insights
    return ctx


def read_filters(
    request: Request,
    start: Annotated[
        date | None, Query(alias="from", description="first day (local), default 90 days ago")
    ] = None,
    end: Annotated[
        date | None, Query(alias="to", description="last day (local, inclusive), default today")
    ] = None,
    topic: Annotated[str | None, Query(pattern=CODE)] = None,
    subtopic: Annotated[str | None, Query(pattern=CODE)] = None,
    channel: Annotated[str | None, Query(pattern=CODE)] = None,
    kind: Annotated[str | None, Query(pattern=CODE)] = None,
    language: Annotated[str | None, Query(pattern=LANGUAGE)] = None,
    area: Annotated[str | None, Query(pattern=AREA)] = None,
    mode: Annotated[Literal["active", "passive"] | None, Query()] = None,
) -> Filters:
    """The period and filters every chart, list and export takes."""
    today = context(request).today()
    end = end or today
    start = start or end - timedelta(days=89)
    if start > end:
        raise Problem(
            422,
            "the period ends before it starts",
            slug="invalid-request",
            errors=[{"pointer": "/from", "detail": "must not be after 'to'"}],
        )
    if (end - start).days >= MAX_DAYS:
        raise Problem(
            422,
            "the period is too long",
            slug="invalid-request",
            errors=[{"pointer": "/from", "detail": f"at most {MAX_DAYS} days before 'to'"}],
        )
    return Filters(
        start=start,
        end=end,
        topic=topic,
        subtopic=subtopic,
        channel=channel,
        kind=kind,
        language=language,
        area=area,
        mode=mode,
        zone=context(request).zone,
    )


FilterParams = Annotated[Filters, Depends(read_filters)]


@router.get("/v1/trends", response_model=TrendResponse, summary="Signals over time, optionally per dimension")
async def trends(
    request: Request,
    principal: Reader,
    filters: FilterParams,
    interval: Interval = "day",
    group_by: Dimension | None = None,
) -> TrendResponse:
    async with context(request).runtime.sessions() as session:
        points = await service.trend(session, principal.tenant, filters, interval=interval, group_by=group_by)
    return TrendResponse(
        tenant=principal.tenant,
        start=filters.start,
        end=filters.end,
        interval=interval,
        group_by=group_by,
        filters=filters.dimension_values(),
        points=[TrendPoint(period=p, group=g, count=n) for p, g, n in points],
        total=sum(n for _, _, n in points),
    )


@router.get("/v1/emerging", response_model=EmergingResponse, summary="Emerging issues, with their evidence")
async def emerging_list(
    request: Request,
    principal: Reader,
    start: Annotated[date | None, Query(alias="from")] = None,
    end: Annotated[date | None, Query(alias="to")] = None,
) -> EmergingResponse:
    ctx = context(request)
    end = end or ctx.today()
    start = start or end - timedelta(days=30)
    if start > end:
        raise Problem(
            422,
            "the period ends before it starts",
            slug="invalid-request",
            errors=[{"pointer": "/from", "detail": "must not be after 'to'"}],
        )
    async with ctx.runtime.sessions() as session:
        issues = await reports.emerging_issues(session, principal.tenant, start, end)
    return EmergingResponse(
        tenant=principal.tenant,
        method=ctx.method.describe(),
        items=[EmergingPublic.model_validate(issue, from_attributes=True) for issue in issues],
    )


@router.get("/v1/exports", summary="The charts whose data can be downloaded")
async def export_list(principal: Reader) -> dict[str, object]:
    return {
        "formats": ["csv", "json"],
        "charts": [
            {"chart": name, "description": text, "csv": f"/v1/exports/{name}.csv"}
            for name, text in reports.CHARTS.items()
        ],
    }


def split_export(filename: str) -> tuple[str, str]:
    chart, _, fmt = filename.rpartition(".")
    if chart not in reports.CHARTS or fmt not in ("csv", "json"):
        raise Problem(404, f"no export {filename!r}; see /v1/exports", slug="unknown-export")
    return chart, fmt


async def export_response(
    ctx: InsightsContext, tenant: str, filename: str, filters: Filters, interval: str, split: str = "topic"
) -> Response:
    chart, fmt = split_export(filename)
    async with ctx.runtime.sessions() as session:
        data = await reports.table(session, tenant, chart, filters, interval=interval, split=split)
    disposition = {
        "Content-Disposition": f'attachment; filename="{tenant}-{chart}-{filters.start}-{filters.end}.{fmt}"'
    }
    if fmt == "csv":
        return Response(reports.to_csv(data), media_type="text/csv; charset=utf-8", headers=disposition)
    body = reports.to_json(data, tenant=tenant, filters=filters.as_query(), interval=interval, split=split)
    return Response(body, media_type="application/json", headers=disposition)


@router.get(
    "/v1/exports/{filename}",
    summary="One chart's data as CSV or JSON (e.g. /v1/exports/topics.csv)",
    responses={200: {"content": {"text/csv": {}, "application/json": {}}}},
)
async def export(
    filename: str,
    request: Request,
    principal: Reader,
    filters: FilterParams,
    interval: Interval = "day",
    split: Split = "topic",
) -> Response:
    return await export_response(context(request), principal.tenant, filename, filters, interval, split)
