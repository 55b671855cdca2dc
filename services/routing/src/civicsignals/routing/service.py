"""Routing's plain functions: open a case, change it under an optimistic lock, list and read cases.

Every change of a case is one UPDATE guarded by the sequence the change was based on
(``… WHERE id = :id AND sequence = :expected``), one history row, and the events that describe it,
all in the caller's transaction. Two concurrent changes of one case therefore give one success and
one :class:`Conflict`, on SQLite and on PostgreSQL alike, and no event is published for the loser.

A public note is free text from staff or a partner that the resident, the partners and the
departments' systems read, so it is redacted (:func:`public_text`) in the two places every public
note passes: the history row (:func:`write_change`) and the events (:func:`status_events`). An
internal note is kept as written, for staff only, and never put in an event; the resident's
erasure on request empties every internal note of their case (:func:`erase_case`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import String, cast, delete, false, or_, text, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common import audit as audit_log
from civicsignals.common.events import (
    RESIDENT_ACTOR,
    CaseDepartmentsChanged,
    CaseStatusChanged,
    DepartmentAssigned,
    DepartmentAttachmentAdded,
    DepartmentReleased,
    DepartmentSignalErased,
    DepartmentStatusChanged,
    EventData,
    SignalClassified,
    SignalRouted,
    utcnow,
)
from civicsignals.common.ids import new_id, normalise_tracking_code
from civicsignals.common.redaction import redact
from civicsignals.routing import lifecycle
from civicsignals.routing.models import Case, CaseHistory, SignalBeforeCase
from civicsignals.routing.rules import Decision, RuleSet, SignalFacts

SYSTEM_ACTOR = "system:routing"
Events = list[tuple[str, EventData]]
DepartmentsChange = Literal["assignment", "reclassification", "escalation"]


class Conflict(Exception):
    """The case changed since the caller read it (another change won the race)."""

    def __init__(self, case_id: str, expected: int, current: int | None = None) -> None:
        super().__init__(f"case {case_id} changed since sequence {expected}")
        self.case_id = case_id
        self.expected = expected
        self.current = current


class CaseNotFound(LookupError):
    """No such case for this tenant (another tenant's case is answered exactly like a missing one)."""


@dataclass(frozen=True)
class Caller:
    """Who calls an HTTP route: tenant, scopes, the departments it is bound to (empty: all), and how
    the history names it (``key:<id>`` or ``person:<subject id>``; never a name)."""

    tenant: str
    actor: str
    scopes: frozenset[str]
    departments: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Actor:
    """Who changes a case: a role string for the history and the events, and the table roles it holds."""

    name: str
    roles: frozenset[str]


def actor_for(caller: Caller, case: Case, triage_department: str) -> Actor:
    """The roles a caller holds on one case.

    A key (or person) bound to departments acts as that department: ``responsible`` on its own
    cases, ``triage`` when it is the triage department, recorded as ``department:<code>``. One
    bound to no department (every department) with ``cases:write`` is a coordinator: both roles,
    recorded as ``key:<id>``. ``admin`` may make every move in the table.
    """
    roles: set[str] = set()
    if "admin" in caller.scopes:
        roles.add("admin")
    if caller.departments:
        name = f"department:{sorted(caller.departments)[0]}"
        if triage_department in caller.departments:
            roles.add("triage")
            name = f"department:{triage_department}"
        if case.responsible in caller.departments:
            roles.add("responsible")
            name = f"department:{case.responsible}"
        return Actor(name, frozenset(roles))
    if "cases:write" in caller.scopes or "admin" in caller.scopes:
        roles |= {"triage", "responsible"}
    return Actor(caller.actor, frozenset(roles))


def may_see(caller: Caller, case: Case) -> bool:
    """A caller bound to departments sees the cases those departments are responsible for or informed of."""
    if not caller.departments or "admin" in caller.scopes:
        return True
    return case.responsible in caller.departments or bool(caller.departments & set(case.informed))


def facts_of(classified: SignalClassified) -> SignalFacts:
    location = classified.location
    return SignalFacts(
        topic=classified.topic,
        subtopic=classified.subtopic,
        kind=classified.kind,
        channel=classified.channel,
        needs_review=classified.needs_review,
        confidence=classified.confidence,
        language=classified.language,
        area=location.area if location else None,
        district=location.district if location else None,
        text=classified.text,
        received_at=classified.received_at,
    )


def facts_of_case(case: Case, topic: str | None = None, subtopic: str | None = None) -> SignalFacts:
    return SignalFacts(
        topic=topic or case.topic,
        subtopic=subtopic if topic else case.subtopic,
        kind=case.kind,
        channel=case.channel,
        needs_review=False,
        confidence=1.0,
        language=case.language,
        area=case.area,
        district=case.district,
        text=case.text,
        received_at=case.created_at,
    )


async def case_for_signal(session: AsyncSession, signal_id: str) -> Case | None:
    return (await session.exec(select(Case).where(Case.signal_id == signal_id))).first()


def signal_lock_key(signal_id: str) -> int:
    """The signal's advisory lock key: 64 bits of a hash (stable across processes and releases),
    as PostgreSQL's ``bigint``."""
    digest = hashlib.blake2b(f"routing.signal:{signal_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def lock_signals(session: AsyncSession, signal_ids: Iterable[str], *, writer: bool = False) -> None:
    """Order this transaction with any other about the same signals' case, before reading it.

    A case opening (``signal.classified``) and what is heard of its signal before the case exists
    (``signal.erased``, ``signal.attachment_added``, kept in :class:`SignalBeforeCase`) are two
    transactions, each reading the other's table before writing its own. Both could read before
    either commits; the case would open without the erasure while the kept erasure waited for a
    case that already exists.

    - PostgreSQL: a transaction-level advisory lock per signal, taken before those reads. The
      later transaction waits for the earlier one and (READ COMMITTED) its reads see what that
      one committed. The keys are taken in ascending order in one statement, so two transactions
      never wait for each other in a circle.
    - SQLite (``writer``): the database's one write lock, by a write that changes nothing.
      ``sqlite3`` begins a transaction only at the first write, so reads before it see whatever
      is committed at that moment; reads after it see everything committed before the lock.
      The case's side, the hot path, does not take it early: it reads again after its own write
      instead (``flows.settle_opened_cases``), so a batch holds the lock only for its last flush.
    """
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        keys = sorted({signal_lock_key(signal_id) for signal_id in signal_ids})
        if keys:
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(key) FROM unnest(CAST(:keys AS bigint[])) AS key"),
                {"keys": keys},
            )
    elif writer:
        await connection.execute(delete(SignalBeforeCase).where(false()))


async def is_postgresql(session: AsyncSession) -> bool:
    return (await session.connection()).dialect.name == "postgresql"


async def remember_before_case(
    session: AsyncSession,
    tenant: str,
    signal_id: str,
    *,
    attachments: int = 0,
    erased_at: datetime | None = None,
) -> SignalBeforeCase:
    """Keep what was heard of a signal without a case until the case opens (``open_case``'s
    ``before``): the highest photo count and the latest erasure."""
    early = await session.get(SignalBeforeCase, signal_id)
    if early is None:
        early = SignalBeforeCase(signal_id=signal_id, tenant=tenant)
    early.attachments = max(early.attachments, attachments)
    if erased_at is not None and erased_at.tzinfo is None:
        erased_at = erased_at.replace(tzinfo=UTC)
    if erased_at is not None and (early.erased_at is None or early.erased_at < erased_at):
        early.erased_at = erased_at
    session.add(early)
    return early


def take_in_before_case(tenant: str, case: Case, before: SignalBeforeCase) -> Events:
    """What was heard of the signal before its case, applied to a case opened without it (another
    transaction kept it in the meantime): the later erasure and the higher photo count, and the
    departments' events when the count grew."""
    if before.erased_at is not None and (case.erased_at is None or case.erased_at < before.erased_at):
        case.erased_at = before.erased_at
    if before.attachments <= case.attachments:
        return []
    case.attachments = before.attachments
    return attachment_events(tenant, case)


def initial_status(decision: Decision) -> str:
    if decision.is_triage:
        return "triage"
    return "forwarded" if decision.partners else "assigned"


def open_case(
    tenant: str,
    classified: SignalClassified,
    rules: RuleSet,
    now: datetime | None = None,
    *,
    before: SignalBeforeCase | None = None,
) -> tuple[Case, CaseHistory, Events]:
    """Decide who acts, open the case, and list the events to publish (subject, data).

    ``before`` is what was heard of the signal before it had a case (its photos, its erasure):
    the case opens with it, and the departments' events carry its attachment count."""
    now = now or utcnow()
    facts = facts_of(classified)
    decision = rules.decide(facts, now)
    status = initial_status(decision)
    lifecycle.check("received", status, {"system"})
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
        area=facts.area,
        district=facts.district,
        text=classified.text,
        status=status,
        responsible=decision.responsible,
        informed=list(decision.informed),
        partners=list(decision.partners),
        priority=decision.priority,
        rule_id=decision.rule_id,
        rule_version=decision.version,
        matched_rules=list(decision.matched),
        service_promise=decision.service_promise,
        sla_days=decision.sla.days,
        sla_type=decision.sla.type,
        due_at=rules.due_at(now, decision.sla),
        created_at=now,
        updated_at=now,
        sequence=1,
        attachments=before.attachments if before is not None else 0,
        erased_at=before.erased_at if before is not None else None,
    )
    history = CaseHistory(
        case_id=case.id,
        case=case,
        sequence=1,
        kind="transition",
        from_status="received",
        to_status=status,
        at=now,
        actor=SYSTEM_ACTOR,
        details={
            "rule_id": decision.rule_id,
            "rule_version": decision.version,
            "matched": list(decision.matched),
            **({"triage_reason": decision.triage_reason} if decision.triage_reason else {}),
        },
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
        language=case.language,  # the classifier's: notifier's language when intake had none
    )
    events: Events = [(SignalRouted.bus_subject(tenant), routed)]
    events += status_events(tenant, case, "received", status, SYSTEM_ACTOR, None, notify_departments=False)
    events += assigned_events(
        tenant, case, [(case.responsible, "responsible"), *((d, "informed") for d in case.informed)]
    )
    return case, history, events


def assigned_events(tenant: str, case: Case, targets: Sequence[tuple[str, str]], **extra: Any) -> Events:
    """``dept.<code>.assigned`` for each (department, role): what a department's own system receives."""
    events: Events = []
    for department, role in targets:
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
            location=None
            if case.area is None and case.district is None
            else {"area": case.area, "district": case.district},
            sequence=case.sequence,
            attachments=case.attachments,
            status=case.status,
            **extra,
        )
        events.append((DepartmentAssigned.department_subject(tenant, department), feed))
    return events


def attachment_events(tenant: str, case: Case) -> Events:
    """``dept.<code>.attachment_added`` for every department involved in the case: its signal has
    ``case.attachments`` photos and PDFs now (the files stay at intake)."""
    return [
        (
            DepartmentAttachmentAdded.department_subject(tenant, department),
            DepartmentAttachmentAdded(
                case_id=case.id,
                signal_id=case.signal_id,
                department=department,
                role="responsible" if department == case.responsible else "informed",
                attachments=case.attachments,
            ),
        )
        for department in involved(case)
    ]


def involved(case: Case, *more: str | None) -> list[str]:
    departments: list[str] = []
    for code in (case.responsible, *case.informed, *more):
        if code and code not in departments:
            departments.append(code)
    return departments


def departments_events(
    tenant: str, case: Case, previous: tuple[str, Sequence[str]], change: DepartmentsChange
) -> Events:
    """``case.departments_changed`` when a change moved the case between departments: who holds it
    now and who no longer does, and ``dept.<code>.released`` on the feed of each department that
    no longer does. ``previous`` is (responsible, informed) before the change. Nothing when the set
    stayed the same (a reroute that keeps the department, an escalation that informs no one new).

    The ``assigned`` feeds say what a department gains; without ``released`` a department's system
    kept a case open that was no longer its own (an informed department dropped from a case heard
    nothing at all), and intake uses ``departments_changed`` to stop showing it the photos."""
    before_responsible, before_informed = previous
    before = [before_responsible, *(code for code in before_informed if code != before_responsible)]
    now = involved(case)
    if before == now:
        return []
    left = [code for code in before if code not in now]
    changed = CaseDepartmentsChanged(
        case_id=case.id,
        signal_id=case.signal_id,
        sequence=case.sequence,
        responsible=case.responsible,
        informed=list(case.informed),
        left=left,
        change=change,
    )
    events: Events = [(CaseDepartmentsChanged.bus_subject(tenant), changed)]
    if change == "escalation":
        return events  # an escalation only informs more departments (none is in ``left``)
    for department in left:
        released = DepartmentReleased(
            case_id=case.id,
            signal_id=case.signal_id,
            department=department,
            role="responsible" if department == before_responsible else "informed",
            responsible=case.responsible,
            sequence=case.sequence,
            change=change,
        )
        events.append((DepartmentReleased.department_subject(tenant, department), released))
    return events


def no_longer_informed(before: Sequence[str], informed: Sequence[str], responsible: str) -> list[str]:
    """The departments a change stops informing (neither informed nor responsible after it).

    Kept in the change's history details: they received the case on their feeds, so an erasure
    must tell them too (:func:`reached`), and the case itself no longer names them.
    """
    return [code for code in before if code not in informed and code != responsible]


def reached(case: Case, history: Iterable[CaseHistory]) -> list[str]:
    """Every department the case ever went to on its feed: responsible or informed now, and those
    it was reassigned away from (``from_department``, ``to_department``), escalated to
    (``escalated_to``) or that stopped being informed (``no_longer_informed``), from its history.

    ``involved(case)`` (what the attachment fan-out uses) knows only who is involved now; a
    department the case left still holds what its feed brought it, and AVG article 19 asks that it
    hears of an erasure too. Reassignments and reroutes recorded before ``no_longer_informed``
    (and a reroute's ``from_department``) existed leave out a department only informed then.
    """
    more: list[str] = []
    for row in history:
        details = row.details or {}
        for key in ("from_department", "to_department"):
            value = details.get(key)
            if isinstance(value, str):
                more.append(value)
        for key in ("escalated_to", "no_longer_informed"):
            values = details.get(key)
            if isinstance(values, list):
                more += [value for value in values if isinstance(value, str)]
    return involved(case, *more)


def public_text(text: str | None) -> str | None:
    """A public note as it may be kept and published: personal data replaced by placeholders.

    DESIGN §2 allows free text on the bus only redacted; a staff member's or partner's note to the
    resident ("Bel mevrouw op 06-12345678") is free text like a resident's. Redacting twice changes
    nothing, so a note intake redacted already (Open311 updates, a resident's reply) stays as it is.
    """
    return None if text is None else redact(text)


def status_events(
    tenant: str,
    case: Case,
    from_status: str | None,
    to_status: str,
    actor: str,
    public_note: str | None,
    *,
    notify_departments: bool = True,
    also: Sequence[str] = (),
    **extra: Any,
) -> Events:
    """``case.status_changed`` (for the resident's page and the notifier) and each involved department's feed.

    ``public_note`` goes out redacted (:func:`public_text`), whoever wrote it.
    """
    public_note = public_text(public_note)
    changed = CaseStatusChanged(
        case_id=case.id,
        signal_id=case.signal_id,
        tracking_code=case.tracking_code,
        to=to_status,
        public_note=public_note,
        actor=actor,
        sequence=case.sequence,
        responsible=case.responsible,
        partners=list(case.partners),
        due_at=case.due_at,
        service_promise=case.service_promise,
        attachments=case.attachments,
        **{"from": from_status},
        **extra,
    )
    events: Events = [(CaseStatusChanged.bus_subject(tenant), changed)]
    if notify_departments:
        for department in involved(case, *also):
            feed = DepartmentStatusChanged(
                case_id=case.id,
                signal_id=case.signal_id,
                department=department,
                to=to_status,
                public_note=public_note,
                actor=actor,
                sequence=case.sequence,
                responsible=case.responsible,
                **{"from": from_status},
                **extra,
            )
            events.append((DepartmentStatusChanged.department_subject(tenant, department), feed))
    return events


async def load_case(session: AsyncSession, tenant: str, case_id: str) -> Case:
    """A detached copy of the case as it is now (so that changing it never writes by accident)."""
    case = (await session.exec(select(Case).where(Case.id == case_id, Case.tenant == tenant))).first()
    if case is None:
        raise CaseNotFound(case_id)
    session.expunge(case)
    return case


@dataclass
class Change:
    """One change of a case: its fields, the history row, and whether residents hear of it.

    ``public_note`` is stored redacted by :func:`write_change`; ``internal_note`` as written.
    """

    kind: str
    actor: str
    to_status: str | None = None
    public_note: str | None = None
    internal_note: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


async def write_change(
    session: AsyncSession,
    case: Case,
    change: Change,
    *,
    expected: int | None = None,
    now: datetime | None = None,
) -> tuple[Case, str]:
    """Apply a change under the optimistic lock; returns (the case after it, the status before it).

    Raises :class:`Conflict` when the case is no longer at ``expected`` (default: the sequence the
    caller read), so that the later of two concurrent changes fails instead of overwriting.
    """
    now = now or utcnow()
    expected = case.sequence if expected is None else expected
    if expected != case.sequence:
        raise Conflict(case.id, expected, case.sequence)
    before = case.status
    values = dict(change.values)
    if change.to_status is not None:
        values["status"] = change.to_status
    values.update(sequence=expected + 1, updated_at=now)
    result = await session.exec(
        update(Case).where(col(Case.id) == case.id, col(Case.sequence) == expected).values(**values)
    )
    if result.rowcount != 1:
        raise Conflict(case.id, expected)
    for key, value in values.items():
        setattr(case, key, value)
    session.add(
        CaseHistory(
            case_id=case.id,
            sequence=case.sequence,
            kind=change.kind,
            from_status=before,
            to_status=case.status,
            at=now,
            actor=change.actor,
            public_note=public_text(change.public_note),  # shown to the resident: redacted
            internal_note=change.internal_note,  # staff only, never in an event: as written
            details=change.details,
        )
    )
    return case, before


async def mirror_to_duplicates(
    session: AsyncSession,
    tenant: str,
    survivor: Case,
    from_status: str,
    to_status: str,
    actor: str,
    public_note: str | None,
    now: datetime | None = None,
) -> Events:
    """Every reporter of a merged duplicate hears of the surviving case's status, under their own code.

    Each duplicate gets its own next sequence (and a history row saying why), so that intake, which
    applies only higher sequences per signal, shows the change on that reporter's tracking page.
    """
    events: Events = []
    duplicates = list((await session.exec(select(Case).where(Case.duplicate_of == survivor.id))).all())
    for duplicate in duplicates:
        session.expunge(duplicate)
        change = Change(
            kind="merged_update",
            actor=actor,
            public_note=public_note,
            details={"survivor": survivor.id, "survivor_status": to_status},
        )
        await write_change(session, duplicate, change, now=now)
        events += status_events(
            tenant,
            duplicate,
            from_status,
            to_status,
            actor,
            public_note,
            notify_departments=False,
            merged_into=survivor.id,
        )
    return events


async def root_case(session: AsyncSession, tenant: str, case_id: str) -> Case:
    """The case a duplicate chain ends in (merging into a duplicate merges into its survivor)."""
    case = await load_case(session, tenant, case_id)
    for _ in range(20):
        if case.duplicate_of is None:
            return case
        case = await load_case(session, tenant, case.duplicate_of)
    return case


async def case_history(session: AsyncSession, case_id: str) -> list[CaseHistory]:
    query = select(CaseHistory).where(CaseHistory.case_id == case_id).order_by(col(CaseHistory.sequence))
    return list((await session.exec(query)).all())


@dataclass(frozen=True)
class Erasure:
    """What one erasure did to a case: how many internal notes it dropped, and the departments to
    tell (every one the case reached, :func:`reached`)."""

    internal_notes: int
    departments: list[str]


async def erase_case(session: AsyncSession, case: Case, erased_at: datetime) -> Erasure:
    """Drop the resident's data from a case that routing keeps beyond what statistics need, in the
    caller's transaction (AVG article 17, ``signal.erased``).

    Gone: every internal note of the history. Staff and partners write them as they like, they
    are never redacted ("mevrouw belde terug op 06-…"), and a partner's update keeps its notes
    there too (``routing_partner_update`` holds only the update's id). Gone too: the public notes
    of the resident's own moves (their answers from the tracking page: their words, like the
    feedback comment intake drops). Kept: the case's text (the redacted text the bus carried and
    intake keeps), staff's and partners' public notes (redacted when written and already public:
    the tracking page, the feeds, the partners), and every status, time, department, topic and
    count, so the statistics and the case history still add up.

    No history row and no new sequence: the erasure is not a change of the case's state, and
    doing it again changes nothing more (``erased_at`` only moves forward, to the latest
    erasure). The caller publishes the department events and writes the audit record.
    """
    departments = reached(case, await case_history(session, case.id))
    result = await session.exec(
        update(CaseHistory)
        .where(col(CaseHistory.case_id) == case.id, col(CaseHistory.internal_note).is_not(None))
        .values(internal_note=None)
    )
    await session.exec(
        update(CaseHistory)
        .where(
            col(CaseHistory.case_id) == case.id,
            col(CaseHistory.actor) == RESIDENT_ACTOR,
            col(CaseHistory.public_note).is_not(None),
        )
        .values(public_note=None)
    )
    if erased_at.tzinfo is None:
        erased_at = erased_at.replace(tzinfo=UTC)
    if case.erased_at is None or case.erased_at < erased_at:
        await session.exec(update(Case).where(col(Case.id) == case.id).values(erased_at=erased_at))
        case.erased_at = erased_at
    return Erasure(internal_notes=int(result.rowcount or 0), departments=departments)


def erased_events(tenant: str, case: Case, departments: Sequence[str], erased_at: datetime) -> Events:
    """``dept.<code>.erased`` for each department: drop what your system copied of this case's
    signal (AVG article 19, tell every recipient); ids only."""
    return [
        (
            DepartmentSignalErased.department_subject(tenant, department),
            DepartmentSignalErased(
                case_id=case.id, signal_id=case.signal_id, department=department, erased_at=erased_at
            ),
        )
        for department in departments
    ]


def is_overdue(case: Case, now: datetime | None = None) -> bool:
    now = now or utcnow()
    return case.due_at is not None and case.due_at < now and case.status in lifecycle.SLA_RUNNING


@dataclass(frozen=True)
class CaseFilters:
    department: str | None = None
    statuses: tuple[str, ...] = ()
    topic: str | None = None
    area: str | None = None
    priority: str | None = None
    overdue: bool | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    tracking_code: str | None = None
    """The code a resident reads out to the contact centre (normalised as intake does)."""
    signal_id: str | None = None
    visible_to: frozenset[str] = frozenset()
    """The caller's departments when it is bound to some: only their cases are listed."""


async def list_cases(
    session: AsyncSession,
    tenant: str,
    filters: CaseFilters,
    *,
    cursor: str | None,
    limit: int,
    now: datetime | None = None,
) -> tuple[list[Case], str | None]:
    """Cases of one tenant, newest first, with an opaque cursor (the last id) for the next page."""
    now = now or utcnow()
    query = select(Case).where(Case.tenant == tenant)
    if filters.visible_to:
        codes = sorted(filters.visible_to)
        query = query.where(
            or_(
                col(Case.responsible).in_(codes),
                *(cast(col(Case.informed), String).like(f'%"{code}"%') for code in codes),
            )
        )
    if filters.department:
        query = query.where(Case.responsible == filters.department)
    if filters.statuses:
        query = query.where(col(Case.status).in_(filters.statuses))
    if filters.topic:
        query = query.where(Case.topic == filters.topic)
    if filters.area:
        query = query.where(Case.area == filters.area)
    if filters.priority:
        query = query.where(Case.priority == filters.priority)
    if filters.overdue is True:
        query = query.where(col(Case.due_at) < now, col(Case.status).in_(lifecycle.SLA_RUNNING))
    elif filters.overdue is False:
        query = query.where(
            (col(Case.due_at).is_(None))
            | (col(Case.due_at) >= now)
            | col(Case.status).not_in(lifecycle.SLA_RUNNING)
        )
    if filters.created_after:
        query = query.where(col(Case.created_at) >= filters.created_after)
    if filters.created_before:
        query = query.where(col(Case.created_at) < filters.created_before)
    if filters.tracking_code:
        query = query.where(Case.tracking_code == normalise_tracking_code(filters.tracking_code))
    if filters.signal_id:
        query = query.where(Case.signal_id == filters.signal_id)
    if cursor:
        query = query.where(col(Case.id) < cursor)
    rows = list((await session.exec(query.order_by(col(Case.id).desc()).limit(limit + 1))).all())
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return rows[:limit], next_cursor


def audit(
    session: AsyncSession, tenant: str, actor: str, action: str, obj: str, result: str, **details: Any
) -> None:
    """An audit record in the caller's transaction (roles and ids only, never personal data)."""
    detail = ", ".join(f"{key}={value}" for key, value in details.items() if value not in (None, "", []))
    audit_log.record(
        session,
        tenant=tenant,
        actor=actor,
        action=action,
        object=obj,
        result=result,
        service="routing",
        detail=detail or None,
    )
