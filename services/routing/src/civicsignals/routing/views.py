"""Routing's HTTP routes: the department case API, partner updates and the rules tester."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from civicsignals.common.auth import Principal, authenticate_bearer, get_registry, scope_dependency
from civicsignals.common.events import CaseStatus, utcnow
from civicsignals.common.problems import Problem
from civicsignals.routing import flows, lifecycle, service
from civicsignals.routing.flows import RoutingContext
from civicsignals.routing.models import (
    AssignmentRequest,
    Case,
    CaseDetail,
    CasePage,
    CasePublic,
    CaseUpdateRequest,
    CaseUpdateResult,
    HistoryPublic,
    NoteRequest,
    ReclassifyRequest,
    RuleExplanation,
    RulesInfo,
    RulesTestRequest,
    RulesTestResult,
    TransitionRequest,
)
from civicsignals.routing.rules import RulesError, SignalFacts, parse_rules, tenant_vocabulary
from civicsignals.routing.service import Caller

CaseReader = Annotated[Principal, Depends(scope_dependency("cases:read"))]
CaseWriter = Annotated[Principal, Depends(scope_dependency("cases:write"))]
RulesAdmin = Annotated[Principal, Depends(scope_dependency("rules:admin"))]

router = APIRouter(tags=["cases"])
rules_router = APIRouter(tags=["routing rules"])

CONFLICT_RESPONSES: dict[int | str, dict[str, object]] = {
    404: {"description": "no such case (or another tenant's)"},
    409: {"description": "an illegal transition (the problem lists the allowed ones) or a concurrent change"},
    422: {"description": "invalid fields, each with a JSON pointer"},
}


def _context(request: Request) -> RoutingContext:
    context: RoutingContext = request.app.state.routing
    return context


def _caller(principal: Principal) -> Caller:
    return Caller(
        tenant=principal.tenant,
        actor=principal.actor,
        scopes=principal.scopes,
        departments=frozenset(principal.departments),
    )


async def _updater(request: Request) -> Principal:
    """A partner key (``partner:<code>``), or a key that may write cases (intake's service key)."""
    principal = await authenticate_bearer(get_registry(request), request.headers.get("authorization"))
    if not (
        principal.allows("cases:write") or any(scope.startswith("partner:") for scope in principal.scopes)
    ):
        raise Problem(403, "this key needs a partner:<code> scope or cases:write", slug="forbidden")
    request.state.principal = principal
    return principal


Updater = Annotated[Principal, Depends(_updater)]


def _public(case: Case) -> CasePublic:
    return CasePublic.model_validate({**case.model_dump(), "overdue": service.is_overdue(case)})


async def _detail(
    ctx: RoutingContext, principal: Principal, case_id: str, *, changed: bool = False
) -> CaseDetail:
    """The case as the caller sees it; right after its own change (``changed``) even when that change,
    a reassignment, took the case out of the caller's departments."""
    async with ctx.runtime.sessions() as session:
        caller = _caller(principal)
        try:
            case = await service.load_case(session, principal.tenant, case_id)
        except service.CaseNotFound:
            raise Problem(404, "no such case", slug="unknown-case") from None
        if not changed and not service.may_see(caller, case):
            raise Problem(404, "no such case", slug="unknown-case")
        history = await service.case_history(session, case_id)
    triage = ctx.rules_for(principal.tenant).triage_department
    actor = service.actor_for(caller, case, triage)
    return CaseDetail(
        **_public(case).model_dump(),
        history=[HistoryPublic.model_validate(h, from_attributes=True) for h in history],
        allowed_transitions=list(lifecycle.allowed_targets(case.status, actor.roles)),
    )


@router.get("/v1/cases", response_model=CasePage, summary="The tenant's cases, newest first, filtered")
async def list_cases(
    request: Request,
    principal: CaseReader,
    department: Annotated[str | None, Query(pattern=r"^[a-z0-9-]+$", description="responsible")] = None,
    status: Annotated[list[CaseStatus] | None, Query(description="repeat for several")] = None,
    topic: Annotated[str | None, Query(pattern=r"^[a-z0-9-]+$")] = None,
    area: Annotated[str | None, Query(max_length=64)] = None,
    priority: Annotated[str | None, Query(pattern=r"^(low|normal|high|urgent)$")] = None,
    overdue: bool | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    tracking_code: Annotated[
        str | None,
        Query(
            max_length=32,
            description="the resident's tracking code, as they read it out (case, spaces and dashes "
            "do not matter)",
            examples=["7KQ2-M9XD-4HTC"],
        ),
    ] = None,
    signal_id: Annotated[str | None, Query(max_length=64, description="the signal the case is about")] = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> CasePage:
    for name, value in (("created_after", created_after), ("created_before", created_before)):
        if value is not None and value.tzinfo is None:
            raise Problem(
                422,
                "times carry a zone (RFC 3339)",
                slug="invalid-request",
                errors=[{"pointer": f"/{name}", "detail": "add a zone, e.g. Z"}],
            )
    filters = service.CaseFilters(
        department=department,
        statuses=tuple(status or ()),
        topic=topic,
        area=area,
        priority=priority,
        overdue=overdue,
        created_after=created_after,
        created_before=created_before,
        tracking_code=tracking_code,
        signal_id=signal_id,
        visible_to=frozenset() if "admin" in principal.scopes else frozenset(principal.departments),
    )
    async with _context(request).runtime.sessions() as session:
        cases, next_cursor = await service.list_cases(
            session, principal.tenant, filters, cursor=cursor, limit=limit
        )
    return CasePage(items=[_public(c) for c in cases], next_cursor=next_cursor)


@router.get(
    "/v1/cases/{case_id}",
    response_model=CaseDetail,
    summary="One case with its append-only history and the moves the caller may make",
    responses={404: CONFLICT_RESPONSES[404]},
)
async def get_case(case_id: str, request: Request, principal: CaseReader) -> CaseDetail:
    return await _detail(_context(request), principal, case_id)


@router.post(
    "/v1/cases/{case_id}/transitions",
    response_model=CaseDetail,
    summary="Move the case to another status (the transition table decides who may)",
    responses=CONFLICT_RESPONSES,
)
async def transition(
    case_id: str, body: TransitionRequest, request: Request, principal: CaseWriter
) -> CaseDetail:
    ctx = _context(request)
    await flows.transition(ctx, _caller(principal), case_id, body)
    return await _detail(ctx, principal, case_id, changed=True)


@router.post(
    "/v1/cases/{case_id}/assignment",
    response_model=CaseDetail,
    summary="Reassign the case to another department",
    description="Out of triage to the department that the rules choose for the case's topic, the "
    "case takes that rule's service promise and SLA, counted from now, and is forwarded to the "
    "partners the rule names (status `forwarded`); any other reassignment keeps its due date and "
    "promise and ends `assigned`.",
    responses=CONFLICT_RESPONSES,
)
async def assign(
    case_id: str, body: AssignmentRequest, request: Request, principal: CaseWriter
) -> CaseDetail:
    ctx = _context(request)
    await flows.reassign(ctx, _caller(principal), case_id, body)
    return await _detail(ctx, principal, case_id, changed=True)


@router.post(
    "/v1/cases/{case_id}/notes",
    response_model=CaseDetail,
    summary="Add a public or internal note",
    responses=CONFLICT_RESPONSES,
)
async def note(case_id: str, body: NoteRequest, request: Request, principal: CaseWriter) -> CaseDetail:
    ctx = _context(request)
    await flows.add_note(ctx, _caller(principal), case_id, body)
    return await _detail(ctx, principal, case_id)


@router.post(
    "/v1/cases/{case_id}/reclassification",
    response_model=CaseDetail,
    summary="Correct the topic (publishes signal.reclassified so the classifier learns)",
    description="With `reroute`, the rules decide again for the new topic; when they name another "
    "department, the case moves there with the deciding rule's service promise and SLA, counted "
    "from now, and is forwarded to the partners the rule names. When the department stays but the "
    "rule names a partner the case lacks, a case at work is forwarded to it.",
    responses=CONFLICT_RESPONSES,
)
async def reclassify(
    case_id: str, body: ReclassifyRequest, request: Request, principal: CaseWriter
) -> CaseDetail:
    ctx = _context(request)
    await flows.reclassify(ctx, _caller(principal), case_id, body)
    return await _detail(ctx, principal, case_id, changed=True)


@router.post(
    "/v1/cases/{case_id}/updates",
    response_model=CaseUpdateResult,
    tags=["partners"],
    summary="A partner's update on a case forwarded to it (also intake's Open311 servicerequestupdates)",
    responses=CONFLICT_RESPONSES,
)
async def post_update(
    case_id: str, body: CaseUpdateRequest, request: Request, principal: Updater
) -> CaseUpdateResult:
    return await flows.post_update(_context(request), _caller(principal), case_id, body)


@rules_router.get("/v1/routing/rules", response_model=RulesInfo, summary="The active rules version")
async def rules_info(request: Request, principal: RulesAdmin) -> RulesInfo:
    ctx = _context(request)
    rules = ctx.rules_for(principal.tenant)
    return RulesInfo(
        version=rules.version,
        digest=rules.digest,
        rules=len(rules.rules),
        triage=rules.triage_department,
        error=ctx.rules.errors.get(principal.tenant),
    )


@rules_router.post(
    "/v1/routing/rules:test",
    response_model=RulesTestResult,
    summary="Run a sample signal through the rules (or a draft) and explain every rule's outcome",
    responses={422: {"description": "an invalid sample, or a draft with its problems and lines"}},
)
async def test_rules(body: RulesTestRequest, request: Request, principal: RulesAdmin) -> RulesTestResult:
    ctx = _context(request)
    if body.rules is not None:
        try:
            rules = parse_rules(
                body.rules, "rules.yaml (draft)", tenant_vocabulary(ctx.rules.tenants_dir / principal.tenant)
            )
        except RulesError as exc:
            raise Problem(
                422,
                "the draft rules are invalid",
                slug="invalid-rules",
                errors=[{"pointer": "/rules", "detail": problem} for problem in exc.problems],
            ) from None
    else:
        rules = ctx.rules_for(principal.tenant)
    sample = body.signal
    facts = SignalFacts(**sample.model_dump())
    now = sample.received_at or utcnow()
    decision = rules.decide(facts, now, explain=True)
    return RulesTestResult(
        version=decision.version,
        digest=rules.digest,
        rule_id=decision.rule_id,
        matched=list(decision.matched),
        responsible=decision.responsible,
        informed=list(decision.informed),
        partners=list(decision.partners),
        priority=decision.priority,
        sla={"days": decision.sla.days, "type": decision.sla.type},
        due_at=rules.due_at(now, decision.sla),
        service_promise=decision.service_promise,
        triage_reason=decision.triage_reason,
        explanation=[
            RuleExplanation(rule_id=t.rule_id, line=t.line, outcome=t.outcome, reasons=t.reasons)
            for t in decision.trace
        ],
    )
