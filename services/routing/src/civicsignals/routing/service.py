"""Routing's plain functions: open a case for a classified signal, read cases."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common.events import (
    CaseStatusChanged,
    DepartmentAssigned,
    EventData,
    SignalClassified,
    SignalRouted,
    utcnow,
)
from civicsignals.common.ids import new_id
from civicsignals.routing.models import Case, CaseHistory
from civicsignals.routing.rules import RuleSet, SignalFacts, add_working_days

SYSTEM_ACTOR = "system:routing"


def facts_of(classified: SignalClassified) -> SignalFacts:
    return SignalFacts(
        topic=classified.topic,
        subtopic=classified.subtopic,
        kind=classified.kind,
        channel=classified.channel,
        needs_review=classified.needs_review,
        confidence=classified.confidence,
    )


async def case_for_signal(session: AsyncSession, signal_id: str) -> Case | None:
    return (await session.exec(select(Case).where(Case.signal_id == signal_id))).first()


def open_case(
    tenant: str, classified: SignalClassified, rules: RuleSet, now: datetime | None = None
) -> tuple[Case, CaseHistory, list[tuple[str, EventData]]]:
    """Decide who acts, open the case, and list the events to publish (subject, data)."""
    now = now or utcnow()
    decision = rules.decide(facts_of(classified))
    action = decision.action
    status = "triage" if decision.rule_id == "triage" else "assigned"
    case = Case(
        id=new_id(),
        tenant=tenant,
        signal_id=classified.signal_id,
        tracking_code=classified.tracking_code or "",
        topic=classified.topic,
        subtopic=classified.subtopic,
        confidence=classified.confidence,
        needs_review=classified.needs_review,
        kind=classified.kind,
        channel=classified.channel,
        language=classified.language,
        text=classified.text,
        status=status,
        responsible=action.responsible,
        informed=list(action.informed),
        partners=list(action.partners),
        priority=action.priority,
        rule_id=decision.rule_id,
        service_promise=action.service_promise,
        due_at=add_working_days(now, action.sla_days),
        created_at=now,
        updated_at=now,
        sequence=1,
    )
    history = CaseHistory(
        case_id=case.id, sequence=1, from_status="received", to_status=status, at=now, actor=SYSTEM_ACTOR
    )
    routed = SignalRouted(
        signal_id=case.signal_id,
        case_id=case.id,
        tracking_code=case.tracking_code,
        responsible=case.responsible,
        informed=case.informed,
        partners=case.partners,
        priority=case.priority,
        rule_id=case.rule_id,
        due_at=case.due_at,
        service_promise=case.service_promise,
    )
    changed = CaseStatusChanged(
        case_id=case.id,
        signal_id=case.signal_id,
        tracking_code=case.tracking_code,
        to=status,
        actor=SYSTEM_ACTOR,
        sequence=1,
        **{"from": "received"},
    )
    events: list[tuple[str, EventData]] = [
        (SignalRouted.bus_subject(tenant), routed),
        (CaseStatusChanged.bus_subject(tenant), changed),
    ]
    for department, role in [(case.responsible, "responsible"), *((d, "informed") for d in case.informed)]:
        feed = DepartmentAssigned(
            case_id=case.id,
            signal_id=case.signal_id,
            tracking_code=case.tracking_code,
            department=department,
            role=role,
            topic=case.topic,
            subtopic=case.subtopic,
            kind=case.kind,
            priority=case.priority,
            due_at=case.due_at,
            text=case.text,
            location=classified.location,
        )
        events.append((DepartmentAssigned.department_subject(tenant, department), feed))
    return case, history, events


async def list_cases(
    session: AsyncSession,
    tenant: str,
    *,
    department: str | None,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[Case], str | None]:
    """Cases of one tenant, newest first, with an opaque cursor (the last id) for the next page."""
    query = select(Case).where(Case.tenant == tenant)
    if department:
        query = query.where(Case.responsible == department)
    if status:
        query = query.where(Case.status == status)
    if cursor:
        query = query.where(col(Case.id) < cursor)
    rows = list((await session.exec(query.order_by(col(Case.id).desc()).limit(limit + 1))).all())
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], next_cursor


async def case_history(session: AsyncSession, case_id: str) -> list[CaseHistory]:
    query = select(CaseHistory).where(CaseHistory.case_id == case_id).order_by(col(CaseHistory.sequence))
    return list((await session.exec(query)).all())
