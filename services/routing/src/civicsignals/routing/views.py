"""Routing's HTTP routes for departments: their cases, with history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from civicsignals.common.auth import Principal, scope_dependency
from civicsignals.common.problems import Problem
from civicsignals.routing import service
from civicsignals.routing.flows import RoutingContext
from civicsignals.routing.models import CaseDetail, CasePage, CasePublic, HistoryPublic

CaseReader = Annotated[Principal, Depends(scope_dependency("cases:read"))]
router = APIRouter(tags=["cases"])


def _context(request: Request) -> RoutingContext:
    context: RoutingContext = request.app.state.routing
    return context


@router.get("/v1/cases", response_model=CasePage, summary="A department's cases, newest first")
async def list_cases(
    request: Request,
    principal: CaseReader,
    department: Annotated[str | None, Query(pattern=r"^[a-z0-9-]+$")] = None,
    status: Annotated[str | None, Query(pattern=r"^[a-z_]+$")] = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> CasePage:
    async with _context(request).runtime.sessions() as session:
        cases, next_cursor = await service.list_cases(
            session, principal.tenant, department=department, status=status, cursor=cursor, limit=limit
        )
    return CasePage(
        items=[CasePublic.model_validate(c, from_attributes=True) for c in cases], next_cursor=next_cursor
    )


@router.get("/v1/cases/{case_id}", response_model=CaseDetail, summary="One case with its history")
async def get_case(case_id: str, request: Request, principal: CaseReader) -> CaseDetail:
    async with _context(request).runtime.sessions() as session:
        case = await session.get(service.Case, case_id)
        # Another tenant's case answers exactly like a missing one.
        if case is None or case.tenant != principal.tenant:
            raise Problem(404, "no such case", slug="unknown-case")
        history = await service.case_history(session, case_id)
    return CaseDetail(
        **CasePublic.model_validate(case, from_attributes=True).model_dump(),
        history=[HistoryPublic.model_validate(h, from_attributes=True) for h in history],
    )
