"""Routing's orchestration: a classified signal becomes a case, and every change of a case, with its
events and its audit record, is one transaction.

The HTTP views call these functions with the caller's tenant, key id and scopes; the functions
raise :class:`~civicsignals.common.problems.Problem` for what the caller got wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from nats.aio.msg import Msg
from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common.bus import ConsumerSpec, NotReady, PermanentError
from civicsignals.common.events import (
    RESIDENT_ACTOR,
    CaseOverdue,
    CloudEvent,
    SignalAttachmentAdded,
    SignalClassified,
    SignalErased,
    SignalReclassified,
    make_event,
    read_data,
    utcnow,
)
from civicsignals.common.inbox import claim
from civicsignals.common.outbox import enqueue
from civicsignals.common.problems import Problem
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.common.tasks import cancel_requested
from civicsignals.routing import lifecycle, service
from civicsignals.routing.models import (
    AssignmentRequest,
    Case,
    CaseUpdateRequest,
    CaseUpdateResult,
    NoteRequest,
    PartnerUpdate,
    ReclassifyRequest,
    SignalBeforeCase,
    TransitionRequest,
)
from civicsignals.routing.rules import (
    Decision,
    EscalationStep,
    Reload,
    RulesCache,
    RulesError,
    RuleSet,
    Sla,
    Vocabulary,
    tenant_vocabulary,
)
from civicsignals.routing.service import Actor, Caller, Change, Conflict, Events, actor_for

log = logging.getLogger(__name__)

CONSUMER = "routing-signal-classified"
ATTACHMENT_CONSUMER = "routing-signal-attachment-added"
ERASURE_CONSUMER = "routing-signal-erased"
SERVICE = "routing"
CASE_WAIT = timedelta(minutes=2)
"""How long ``signal.attachment_added`` and ``signal.erased`` wait (redelivered) for the signal's
case: a portal sends its photos right after the signal, and a signal may be erased before
classification and routing have opened its case."""


@dataclass
class RoutingContext:
    runtime: ServiceRuntime
    rules: RulesCache
    reloads: list[Reload] = field(default_factory=list)

    def rules_for(self, tenant: str) -> RuleSet:
        try:
            return self.rules.get(tenant)
        except RulesError as exc:
            raise Problem(
                503, f"the routing rules of this tenant cannot be loaded: {exc}", slug="rules-unavailable"
            ) from exc

    def vocabulary(self, tenant: str) -> Vocabulary:
        try:
            return tenant_vocabulary(self.rules.tenants_dir / tenant)
        except RulesError:
            return Vocabulary()


def make_context(runtime: ServiceRuntime) -> RoutingContext:
    context = RoutingContext(runtime=runtime, rules=RulesCache(runtime.settings.tenants_dir))
    context.rules.on_reload = context.reloads.append
    return context


def _enqueue(session: AsyncSession, tenant: str, events: Events) -> None:
    for subject, data in events:
        enqueue(session, subject, make_event(tenant=tenant, service=SERVICE, data=data))


def _flush_reloads(ctx: RoutingContext, session: AsyncSession) -> None:
    """Audit every rules load, change and refused change seen since the last transaction."""
    while ctx.reloads:
        reload = ctx.reloads.pop(0)
        service.audit(
            session,
            reload.tenant,
            "system:routing",
            "rules.reload",
            f"rules:{reload.tenant}",
            "ok" if reload.ok else "refused",
            version=reload.version,
            digest=reload.digest,
            error=reload.error,
        )


# -- routing a classified signal -------------------------------------------------------------------


async def open_case_for(ctx: RoutingContext, session: AsyncSession, event: CloudEvent) -> bool:
    """Open the case for a classified signal in the caller's transaction; False when there is none
    to open (imported history, or a case for this signal exists already)."""
    classified = read_data(event, SignalClassified)
    if getattr(classified, "imported", False):
        return False  # history loaded by intake's import: counted by insights, no case to act on
    if ctx.runtime.tenants.get(event.tenant) is None:
        raise PermanentError(f"unknown tenant {event.tenant!r}")
    try:
        rules = ctx.rules.get(event.tenant)
    except RulesError as exc:
        raise PermanentError(str(exc)) from exc
    _flush_reloads(ctx, session)
    routed_before = session.info.get(ROUTED_BEFORE)
    if isinstance(routed_before, set):
        if classified.signal_id in routed_before:
            return False
        routed_before.add(classified.signal_id)  # a repeat later in the same batch opens nothing
    else:  # not in a consumer batch: lock as :func:`read_ahead` does, then read
        await service.lock_signals(session, [classified.signal_id])
        if await service.case_for_signal(session, classified.signal_id) is not None:
            return False
    heard = session.info.get(BEFORE_CASE)
    if isinstance(heard, dict):
        before = heard.get(classified.signal_id)
    else:
        before = await session.get(SignalBeforeCase, classified.signal_id)
    case, history, events = service.open_case(event.tenant, classified, rules, before=before)
    session.add_all((case, history))  # the history's ``case`` orders their INSERTs at the flush
    session.info.setdefault(OPENED, {})[case.signal_id] = case
    _enqueue(session, event.tenant, events)
    service.audit(
        session,
        event.tenant,
        service.SYSTEM_ACTOR,
        "case.open",
        f"case:{case.id}",
        case.status,
        rule=case.rule_id,
    )
    if before is not None:
        await _took_in(session, case, before)
    return True


async def _took_in(session: AsyncSession, case: Case, before: SignalBeforeCase) -> None:
    """What was kept for the case is on it now: the row goes, and an erasure is audited."""
    await session.delete(before)
    if before.erased_at is not None:  # the erasure came first: the case opens erased
        service.audit(
            session,
            case.tenant,
            service.SYSTEM_ACTOR,
            "person.erase",
            f"case:{case.id}",
            "ok",
            signal=case.signal_id,
            before_case=True,
        )


async def settle_opened_cases(session: AsyncSession) -> None:
    """On SQLite, take in what another transaction kept for this one's new cases after
    :func:`read_ahead` read (an erasure or photo count whose wait ended meanwhile).

    ``sqlite3`` ran those reads outside the transaction, which begins at its first write; after the
    flush this transaction holds the write lock, so a second read sees every such row that was
    committed before, and none can be committed after it until this one ends (the keeping side
    takes the write lock before it looks for the case: ``service.lock_signals``). On PostgreSQL
    the signals' locks already put the two transactions one after the other."""
    opened: dict[str, Case] = session.info.pop(OPENED, {})
    if not opened or await service.is_postgresql(session):
        return
    await session.flush()
    kept = await session.exec(select(SignalBeforeCase).where(col(SignalBeforeCase.signal_id).in_(opened)))
    for before in kept.all():
        case = opened[before.signal_id]
        _enqueue(session, case.tenant, service.take_in_before_case(case.tenant, case, before))
        session.add(case)
        await _took_in(session, case, before)


async def route_signal(ctx: RoutingContext, event: CloudEvent) -> bool:
    """Route one classified signal in a transaction of its own; False when it was routed before."""
    async with ctx.runtime.sessions() as session, session.begin():
        if not await claim(session, CONSUMER, event.id):
            return False
        opened = await open_case_for(ctx, session, event)
        await settle_opened_cases(session)
    ctx.runtime.events_committed()
    return opened


OPENED = "routing.opened"
"""``session.info`` key: the cases this transaction opened, by signal id."""
ROUTED_BEFORE = "routing.routed_before"
"""``session.info`` key: the signals of a consumer batch that have a case already."""
BEFORE_CASE = "routing.before_case"
"""``session.info`` key: what was heard of the batch's signals before they had a case."""


async def read_ahead(session: AsyncSession, events: list[CloudEvent]) -> None:
    """Which signals of the batch have a case already, and what was heard of the others before
    (:class:`SignalBeforeCase`), in two queries before anything is written (so the batch's
    transaction takes SQLite's write lock only at its end). On PostgreSQL the batch's signals are
    locked first (:func:`service.lock_signals`), so an erasure kept at this moment is either seen
    here or waits for the cases to commit and finds them."""
    ids = {sid for event in events if isinstance(sid := event.data.get("signal_id"), str)}
    await service.lock_signals(session, ids)
    rows = await session.exec(select(Case.signal_id).where(col(Case.signal_id).in_(ids)))
    session.info[ROUTED_BEFORE] = set(rows.all())
    heard = await session.exec(select(SignalBeforeCase).where(col(SignalBeforeCase.signal_id).in_(ids)))
    session.info[BEFORE_CASE] = {early.signal_id: early for early in heard.all()}


async def count_attachments(session: AsyncSession, event: CloudEvent) -> bool:
    """Keep the signal's number of photos and PDFs on its case (staff see it in the case API) and
    tell the departments involved on their feeds; False when nothing changed.

    The count only grows, so an older count arriving late changes nothing. A signal without a case
    yet waits for it (``CASE_WAIT``); after that the count is kept for a case that opens later
    (:class:`SignalBeforeCase`; imported history never gets one).
    """
    added = read_data(event, SignalAttachmentAdded)
    case = await _case_of_signal(session, event, added.signal_id, attachments=added.attachments)
    if case is None:
        return False
    if added.attachments <= case.attachments:
        return False
    case.attachments = added.attachments
    session.add(case)
    _enqueue(session, event.tenant, service.attachment_events(event.tenant, case))
    return True


CASES_OF_SIGNALS = "routing.cases_of_signals"
"""``session.info`` key: the cases of a consumer batch's signals, by signal id."""


async def _case_of_signal(
    session: AsyncSession,
    event: CloudEvent,
    signal_id: str,
    *,
    attachments: int = 0,
    erased_at: datetime | None = None,
) -> Case | None:
    """The case of the signal an event about it names (from the batch's read-ahead, else a query).

    A signal without a case yet waits for it (``NotReady``, redelivered) until ``CASE_WAIT`` has
    passed since the event; then what the event told (its photo count, its erasure) is kept for a
    case that opens later (:class:`SignalBeforeCase`) and None is returned. A case of another tenant
    than the event's is a poison event (``PermanentError``)."""
    cases = session.info.get(CASES_OF_SIGNALS)
    if isinstance(cases, dict):
        case = cases.get(signal_id)
        waited = signal_id in session.info.get(WAITED_FOR_CASE, ())
    else:  # not in a consumer batch: the same steps as :func:`read_cases`, for one signal
        case = await service.case_for_signal(session, signal_id)
        waited = case is None and utcnow() - event.time >= CASE_WAIT
        if waited:
            await service.lock_signals(session, [signal_id], writer=True)
            case = await service.case_for_signal(session, signal_id)
    if case is None:
        if not waited:
            raise NotReady("the signal has no case yet")
        await service.remember_before_case(
            session, event.tenant, signal_id, attachments=attachments, erased_at=erased_at
        )
        log.info("event %s: signal %s has no case yet; kept for a case that opens later", event.id, signal_id)
        return None
    if case.tenant != event.tenant:
        raise PermanentError("the signal's case belongs to another tenant")
    return case


WAITED_FOR_CASE = "routing.waited_for_case"
"""``session.info`` key: the batch's signals that still had no case when ``CASE_WAIT`` had passed."""


async def read_cases(session: AsyncSession, events: list[CloudEvent]) -> None:
    """The cases of the batch's signals, in one query before anything is written.

    Which signals waited long enough for their case is decided here, once: those without a case
    are then kept for a case that opens later (:func:`_case_of_signal`). On PostgreSQL they are
    locked first and read again (:func:`service.lock_signals`), so a case opening at this moment
    is either found or opens after this commits and finds what was kept; on SQLite this
    transaction takes the write lock before it reads them again."""
    ids = {sid for event in events if isinstance(sid := event.data.get("signal_id"), str)}
    rows = await session.exec(select(Case).where(col(Case.signal_id).in_(ids)))
    cases = {case.signal_id: case for case in rows.all()}
    now = utcnow()
    waited = {
        sid
        for event in events
        if isinstance(sid := event.data.get("signal_id"), str)
        and sid not in cases
        and now - event.time >= CASE_WAIT
    }
    if waited:
        await service.lock_signals(session, waited, writer=True)
        rows = await session.exec(select(Case).where(col(Case.signal_id).in_(waited)))
        cases.update((case.signal_id, case) for case in rows.all())
    session.info[CASES_OF_SIGNALS] = cases
    session.info[WAITED_FOR_CASE] = waited - cases.keys()


async def erase_signal(session: AsyncSession, event: CloudEvent) -> bool:
    """Drop the resident's data from the signal's case and tell every department the case reached
    (AVG articles 17 and 19); False when the signal has no case.

    The case is the signal's (by signal id, in the event's tenant): the signal id is what intake
    erased, so it decides, and a ``case_id`` in the event that names another case is only logged.
    A signal without a case yet waits for it (``CASE_WAIT``), as ``signal.attachment_added`` does:
    it may be erased before classification and routing opened its case. After that wait the
    erasure is kept (:class:`SignalBeforeCase`), so a case that opens later (its classification
    was held up) opens erased; a signal that never gets one (imported history, a conversation)
    leaves only that row. A case opening in the very moment the wait ends is found or finds the
    erasure (:func:`service.lock_signals`).

    What goes and what stays is :func:`service.erase_case`. Each department gets one
    ``dept.<code>.erased`` through the outbox, in this transaction; the inbox makes one delivery
    of the event do this once, and a repeated erasure (a new event) tells them again, harmlessly.
    """
    erased = read_data(event, SignalErased)
    case = await _case_of_signal(session, event, erased.signal_id, erased_at=erased.erased_at)
    if case is None:
        return False
    if erased.case_id is not None and erased.case_id != case.id:
        log.warning(
            "event %s: names case %s, but signal %s has case %s; erasing the signal's case",
            event.id,
            erased.case_id,
            erased.signal_id,
            case.id,
        )
    erasure = await service.erase_case(session, case, erased.erased_at)
    _enqueue(
        session,
        event.tenant,
        service.erased_events(event.tenant, case, erasure.departments, erased.erased_at),
    )
    service.audit(
        session,
        event.tenant,
        service.SYSTEM_ACTOR,
        "person.erase",
        f"case:{case.id}",
        "ok",
        signal=case.signal_id,
        event=event.id,
        internal_notes=erasure.internal_notes,
        departments=erasure.departments,
    )
    log.info(
        "event %s: erased case %s of signal %s (%d internal notes), told %d departments",
        event.id,
        case.id,
        case.signal_id,
        erasure.internal_notes,
        len(erasure.departments),
    )
    return True


def consumers(ctx: RoutingContext) -> list[ConsumerSpec]:
    """Classified signals become cases, a fetched batch of them in one transaction; the count of a
    signal's attachments follows on its case; an erased signal's case loses the resident's data."""

    async def on_classified(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        await open_case_for(ctx, session, event)

    async def on_attachment(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        await count_attachments(session, event)

    async def on_erased(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        await erase_signal(session, event)

    return [
        ConsumerSpec(
            CONSUMER,
            SignalClassified.subscription(),
            apply=on_classified,
            prepare=read_ahead,
            settle=settle_opened_cases,
        ),
        ConsumerSpec(
            ATTACHMENT_CONSUMER,
            SignalAttachmentAdded.subscription(),
            apply=on_attachment,
            prepare=read_cases,
        ),
        ConsumerSpec(ERASURE_CONSUMER, SignalErased.subscription(), apply=on_erased, prepare=read_cases),
    ]


# -- changing a case -------------------------------------------------------------------------------


def _illegal(exc: lifecycle.IllegalTransition) -> Problem:
    return Problem(
        409,
        f"{exc.reason}; allowed from {exc.current}: {', '.join(exc.allowed) or 'nothing'}",
        slug="illegal-transition",
        current=exc.current,
        requested=exc.target,
        allowed=list(exc.allowed),
    )


def _conflict(exc: Conflict) -> Problem:
    return Problem(
        409,
        "the case changed since you read it (another change came first); read it again and retry",
        slug="case-conflict",
        expected_sequence=exc.expected,
    )


def _not_found() -> Problem:
    return Problem(404, "no such case", slug="unknown-case")


def _invalid(pointer: str, detail: str) -> Problem:
    return Problem(422, detail, slug="invalid-request", errors=[{"pointer": pointer, "detail": detail}])


@contextlib.asynccontextmanager
async def _case_change(
    ctx: RoutingContext, caller: Caller, case_id: str, *, partner: bool = False
) -> AsyncIterator[tuple[AsyncSession, Case]]:
    """A transaction around one change of one case, turning the domain's errors into problems.

    A case the caller may not see (another tenant's, another department's) is answered exactly
    like a missing one; ``partner`` routes check their own visibility.
    """
    try:
        async with ctx.runtime.sessions() as session, session.begin():
            _flush_reloads(ctx, session)
            case = await service.load_case(session, caller.tenant, case_id)
            if not partner and not service.may_see(caller, case):
                raise service.CaseNotFound(case_id)
            yield session, case
    except service.CaseNotFound:
        raise _not_found() from None
    except Conflict as exc:
        raise _conflict(exc) from None
    except lifecycle.IllegalTransition as exc:
        raise _illegal(exc) from None
    ctx.runtime.events_committed()


def _audit_change(
    session: AsyncSession, tenant: str, actor: Actor, action: str, case: Case, **details: object
) -> None:
    service.audit(
        session, tenant, actor.name, action, f"case:{case.id}", case.status, sequence=case.sequence, **details
    )


async def _apply_transition(
    ctx: RoutingContext,
    session: AsyncSession,
    tenant: str,
    case: Case,
    actor: Actor,
    to: str,
    *,
    public_note: str | None,
    internal_note: str | None,
    expected: int | None,
    partner: str | None = None,
    duplicate_of: str | None = None,
    kind: str = "transition",
) -> Events:
    """Check the move against the table, write it, and return its events (the caller enqueues them)."""
    lifecycle.check(case.status, to, actor.roles)
    values: dict[str, object] = {}
    details: dict[str, object] = {}
    extra: dict[str, Any] = {}
    now = utcnow()
    events: Events = []
    if partner is not None and to != "forwarded":
        raise _invalid("/partner", "a partner is only given when forwarding (to: forwarded)")
    if duplicate_of is not None and to != "duplicate":
        raise _invalid("/duplicate_of", "duplicate_of is only given when marking a duplicate (to: duplicate)")
    if to == "forwarded":
        chosen = partner or (case.partners[0] if case.partners else None)
        if chosen is None:
            raise _invalid("/partner", "forwarding needs the partner to forward to")
        known = ctx.vocabulary(tenant).partners
        if known is not None and chosen not in known:
            raise _invalid("/partner", f"unknown partner {chosen!r}")
        if chosen not in case.partners:
            values["partners"] = [*case.partners, chosen]
        details["partner"] = extra["forwarded_to"] = chosen
    if to == "duplicate":
        if not duplicate_of:
            raise _invalid("/duplicate_of", "marking a duplicate needs the case it duplicates")
        try:
            survivor = await service.root_case(session, tenant, duplicate_of)
        except service.CaseNotFound:
            raise _invalid("/duplicate_of", "no such case") from None
        if survivor.id == case.id:
            raise _invalid("/duplicate_of", "a case cannot duplicate itself")
        values["duplicate_of"] = survivor.id
        details["duplicate_of"] = extra["merged_into"] = survivor.id
        # Cases merged into this one now follow the survivor too.
        await session.exec(
            update(Case).where(col(Case.duplicate_of) == case.id).values(duplicate_of=survivor.id)
        )
        await service.write_change(
            session,
            survivor,
            Change(kind="merge", actor=actor.name, details={"merged": case.id}),
            now=now,
        )
    if to == "reopened" or (to == "assigned" and case.status == "reopened"):
        values["escalation_level"] = 0
    if to == "reopened":
        rules = ctx.rules_for(tenant)
        values["due_at"] = rules.due_at(now, _sla_of(case))
    change = Change(
        kind=kind,
        actor=actor.name,
        to_status=to,
        public_note=public_note,
        internal_note=internal_note,
        values=values,
        details=details,
    )
    case, before = await service.write_change(session, case, change, expected=expected, now=now)
    events += service.status_events(tenant, case, before, to, actor.name, public_note, **extra)
    if to != "duplicate":
        events += await service.mirror_to_duplicates(
            session, tenant, case, before, to, actor.name, public_note, now
        )
    _audit_change(session, tenant, actor, f"case.{kind}", case, from_status=before)
    return events


def _sla_of(case: Case) -> Sla:
    return Sla(days=case.sla_days, type="calendar" if case.sla_type == "calendar" else "working")


async def transition(ctx: RoutingContext, caller: Caller, case_id: str, request: TransitionRequest) -> Case:
    rules = ctx.rules_for(caller.tenant)
    async with _case_change(ctx, caller, case_id) as (session, case):
        actor = actor_for(caller, case, rules.triage_department)
        events = await _apply_transition(
            ctx,
            session,
            caller.tenant,
            case,
            actor,
            request.to,
            public_note=request.public_note,
            internal_note=request.internal_note,
            expected=request.expected_sequence,
            partner=request.partner,
            duplicate_of=request.duplicate_of,
        )
        _enqueue(session, caller.tenant, events)
    return case


def _terms_of(rules: RuleSet, decision: Decision) -> dict[str, object]:
    """The deciding rule's service promise and SLA for a case that reaches its department now.

    Counted from now, as the department gets the case now, and escalation starts again. Without
    this, a case leaving triage kept triage's promise ("... naar de juiste afdeling") and its
    two-day due date: the resident read a promise already kept, and the new department had the
    case overdue at once."""
    return {
        "rule_id": decision.rule_id,
        "rule_version": decision.version,
        "matched_rules": list(decision.matched),
        "service_promise": decision.service_promise,
        "sla_days": decision.sla.days,
        "sla_type": decision.sla.type,
        "due_at": rules.due_at(utcnow(), decision.sla),
        "escalation_level": 0,
    }


def _add_rule_partners(
    values: dict[str, object], details: dict[str, Any], case: Case, decision: Decision
) -> str | None:
    """Forward the case to the partners the deciding rule names, as a new case would start.

    The partners join the case's (``values["partners"]``), which lets them see it and brings them
    its status changes; the one returned is the ``forwarded_to`` of the status change (the first
    the case did not have yet), also the history's ``partner``, as a forward by hand records it.
    None when the rule names no partner: the case is not forwarded.
    Before, a case routed to its department only after triage or a correction never reached the
    partner its rule names (say a housing corporation), though the promise it took named it."""
    if not decision.partners:
        return None
    new = [code for code in decision.partners if code not in case.partners]
    if new:
        values["partners"] = [*case.partners, *new]
    details["partner"] = forwarded_to = (new or list(decision.partners))[0]
    return forwarded_to


async def _handover_events(
    session: AsyncSession,
    tenant: str,
    case: Case,
    actor: Actor,
    statuses: tuple[str, str],
    public_note: str | None,
    *,
    previous: tuple[str, list[str]],
    forwarded_to: str | None,
    change: service.DepartmentsChange,
) -> Events:
    """The events of a case handed to another department or partner (a reassignment, a reroute).

    ``statuses`` is (before, after) the change, ``previous`` the responsible and informed
    departments before it. The resident's page, the partners and every involved department hear
    of a new status or a new partner; without either, the departments that lose or keep the case
    still learn who has it now (their feeds, not the resident's page). Departments that newly
    have the case get it on their ``assigned`` feed, those that no longer have it on their
    ``released`` feed, and ``case.departments_changed`` names who holds it now (``change`` is the
    kind of change, for those events)."""
    before, after = statuses
    previous_responsible, previous_informed = previous
    events: Events = []
    if before != after or forwarded_to is not None:
        extra: dict[str, Any] = {"forwarded_to": forwarded_to} if forwarded_to is not None else {}
        events += service.status_events(
            tenant, case, before, after, actor.name, public_note, also=[previous_responsible], **extra
        )
        events += await service.mirror_to_duplicates(
            session, tenant, case, before, after, actor.name, public_note
        )
    elif previous_responsible != case.responsible:
        events += service.status_events(
            tenant, case, before, after, actor.name, None, also=[previous_responsible]
        )[1:]
    targets = []
    if previous_responsible != case.responsible:
        targets.append((case.responsible, "responsible"))
    targets += [(code, "informed") for code in case.informed if code not in previous_informed]
    events += service.assigned_events(tenant, case, targets)
    return events + service.departments_events(tenant, case, previous, change)


async def reassign(ctx: RoutingContext, caller: Caller, case_id: str, request: AssignmentRequest) -> Case:
    """Move the case to another department (status ``assigned``); the old and new departments hear of it.

    Out of triage, to the department the rules choose for the case's topic, the case takes that
    rule's promise and SLA (:func:`_terms_of`), as a reroute would; any other move keeps them."""
    rules = ctx.rules_for(caller.tenant)
    departments = ctx.vocabulary(caller.tenant).departments
    for index, code in enumerate([request.responsible, *(request.informed or [])]):
        if departments is not None and code not in departments:
            where = "/responsible" if index == 0 else f"/informed/{index - 1}"
            raise _invalid(where, f"unknown department {code!r}")
    async with _case_change(ctx, caller, case_id) as (session, case):
        actor = actor_for(caller, case, rules.triage_department)
        lifecycle.check_reassign(case.status, actor.roles)
        previous = case.responsible
        previous_informed = list(case.informed)
        informed = request.informed if request.informed is not None else case.informed
        informed = [code for code in dict.fromkeys(informed) if code != request.responsible]
        details: dict[str, Any] = {"from_department": previous, "to_department": request.responsible}
        if dropped := service.no_longer_informed(previous_informed, informed, request.responsible):
            details["no_longer_informed"] = dropped  # they had the case: an erasure tells them too
        values: dict[str, object] = {"responsible": request.responsible, "informed": informed}
        forwarded_to = None
        if previous == rules.triage_department and request.responsible != previous:
            decision = rules.decide(service.facts_of_case(case))
            if decision.responsible == request.responsible:
                values.update(_terms_of(rules, decision))
                forwarded_to = _add_rule_partners(values, details, case, decision)
        to_status = "forwarded" if forwarded_to else "assigned"
        change = Change(
            kind="assignment",
            actor=actor.name,
            to_status=to_status,
            public_note=request.public_note,
            internal_note=request.internal_note,
            values=values,
            details=details,
        )
        case, before = await service.write_change(session, case, change, expected=request.expected_sequence)
        events = await _handover_events(
            session,
            caller.tenant,
            case,
            actor,
            (before, to_status),
            request.public_note,
            previous=(previous, previous_informed),
            forwarded_to=forwarded_to,
            change="assignment",
        )
        _enqueue(session, caller.tenant, events)
        _audit_change(session, caller.tenant, actor, "case.assignment", case, from_department=previous)
    return case


async def add_note(ctx: RoutingContext, caller: Caller, case_id: str, request: NoteRequest) -> Case:
    """A note changes no status; it is kept in the history (public notes show on the case)."""
    rules = ctx.rules_for(caller.tenant)
    for attempt in range(3):
        try:
            async with _case_change(ctx, caller, case_id) as (session, case):
                actor = actor_for(caller, case, rules.triage_department)
                if not actor.roles & {"responsible", "triage", "admin"} and not _is_informed(caller, case):
                    raise Problem(
                        403, "only a department involved in the case may add notes", slug="forbidden"
                    )
                change = Change(
                    kind="note",
                    actor=actor.name,
                    public_note=request.public_note,
                    internal_note=request.internal_note,
                )
                case, _ = await service.write_change(session, case, change)
                _audit_change(session, caller.tenant, actor, "case.note", case)
            return case
        except Problem as problem:
            # A note has no precondition: when another change came first, write it after that one.
            if problem.slug != "case-conflict" or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _forwardable(case: Case, decision: Decision, actor: Actor) -> bool:
    """Whether a reroute that keeps the department forwards the case: the deciding rule names a
    partner the case does not have, and the case is forwarded already or may be forwarded from
    where it stands (not while it waits on the resident, nor once it is finished)."""
    if decision.is_triage or all(code in case.partners for code in decision.partners):
        return False
    return case.status == "forwarded" or lifecycle.may(case.status, "forwarded", actor.roles)


def _is_informed(caller: Caller, case: Case) -> bool:
    return bool(caller.departments & set(case.informed))


async def reclassify(ctx: RoutingContext, caller: Caller, case_id: str, request: ReclassifyRequest) -> Case:
    """Correct the topic; ``signal.reclassified`` lets the classifier learn, ``reroute`` applies the rules."""
    rules = ctx.rules_for(caller.tenant)
    vocabulary = ctx.vocabulary(caller.tenant)
    if vocabulary.topics is not None and request.topic not in vocabulary.topics:
        raise _invalid("/topic", f"unknown topic {request.topic!r}")
    if request.subtopic and vocabulary.subtopics is not None and request.subtopic not in vocabulary.subtopics:
        raise _invalid("/subtopic", f"unknown subtopic {request.subtopic!r}")
    async with _case_change(ctx, caller, case_id) as (session, case):
        actor = actor_for(caller, case, rules.triage_department)
        if not actor.roles & {"responsible", "triage", "admin"}:
            raise Problem(403, "only the responsible or triage department may reclassify", slug="forbidden")
        previous = (case.topic, case.subtopic)
        previous_departments = (case.responsible, list(case.informed))
        values: dict[str, object] = {"topic": request.topic, "subtopic": request.subtopic}
        details: dict[str, Any] = {
            "previous_topic": previous[0],
            "previous_subtopic": previous[1],
            "topic": request.topic,
        }
        to_status: str | None = None
        forwarded_to: str | None = None
        if request.reroute:
            decision = rules.decide(service.facts_of_case(case, request.topic, request.subtopic))
            if decision.responsible != case.responsible:
                lifecycle.check_reassign(case.status, actor.roles)
                informed = [d for d in decision.informed if d != decision.responsible]
                values.update(
                    responsible=decision.responsible,
                    informed=informed,
                    priority=decision.priority,
                    **_terms_of(rules, decision),
                )
                forwarded_to = _add_rule_partners(values, details, case, decision)
                to_status = "forwarded" if forwarded_to else "assigned"
                # Who had the case before, as a reassignment records it: an erasure tells them too.
                details.update(from_department=case.responsible, to_department=decision.responsible)
                if dropped := service.no_longer_informed(case.informed, informed, decision.responsible):
                    details["no_longer_informed"] = dropped
            elif _forwardable(case, decision, actor):
                # Same department, but the new topic's rule brings a partner in: forwarded to it.
                values.update(_terms_of(rules, decision))
                forwarded_to = _add_rule_partners(values, details, case, decision)
                to_status = "forwarded"
        change = Change(
            kind="reclassification",
            actor=actor.name,
            to_status=to_status,
            public_note=request.public_note,
            internal_note=request.internal_note,
            values=values,
            details=details,
        )
        case, before = await service.write_change(session, case, change, expected=request.expected_sequence)
        events: Events = [
            (
                SignalReclassified.bus_subject(caller.tenant),
                SignalReclassified(
                    signal_id=case.signal_id,
                    case_id=case.id,
                    topic=request.topic,
                    subtopic=request.subtopic,
                    previous_topic=previous[0],
                    previous_subtopic=previous[1],
                    text=case.text,
                    actor=actor.name,
                ),
            )
        ]
        if to_status is not None:
            events += await _handover_events(
                session,
                caller.tenant,
                case,
                actor,
                (before, to_status),
                request.public_note,
                previous=previous_departments,
                forwarded_to=forwarded_to,
                change="reclassification",
            )
        _enqueue(session, caller.tenant, events)
        _audit_change(
            session, caller.tenant, actor, "case.reclassification", case, previous_topic=previous[0]
        )
    return case


# -- partner updates (and intake's Open311 servicerequestupdates) ----------------------------------


def partner_codes(scopes: Iterable[str]) -> list[str]:
    return sorted(scope.split(":", 1)[1] for scope in scopes if scope.startswith("partner:"))


async def post_update(
    ctx: RoutingContext, caller: Caller, case_id: str, request: CaseUpdateRequest
) -> CaseUpdateResult:
    """A partner's status update or note on a case forwarded to it, or intake's on a resident's behalf.

    A partner sees only the cases forwarded to it: any other case answers 404, exactly like a
    missing one. ``update_id`` (or ``external_id``) makes a retry harmless.
    """
    rules = ctx.rules_for(caller.tenant)
    update_id = request.update_id or request.external_id
    if request.status is None and not request.public_note and not request.internal_note:
        raise _invalid("", "an update needs a status, a public_note or an internal_note")
    async with _case_change(ctx, caller, case_id, partner=True) as (session, case):
        staff = "cases:write" in caller.scopes or "admin" in caller.scopes
        mine = [code for code in partner_codes(caller.scopes) if code in case.partners]
        if mine:
            actor = Actor(f"partner:{mine[0]}", frozenset({"partner"}))
        elif not staff or not service.may_see(caller, case):
            raise _not_found()
        elif request.on_behalf_of_resident:
            actor = Actor(RESIDENT_ACTOR, frozenset({"resident"}))
        else:
            actor = actor_for(caller, case, rules.triage_department)
        if update_id is not None:
            seen = (
                await session.exec(
                    select(PartnerUpdate).where(
                        PartnerUpdate.tenant == caller.tenant,
                        PartnerUpdate.actor == actor.name,
                        PartnerUpdate.update_id == update_id,
                    )
                )
            ).first()
            if seen is not None:
                return CaseUpdateResult(
                    case_id=case.id, status=case.status, sequence=case.sequence, replayed=True
                )
        if request.status is not None and request.status != case.status:
            events = await _apply_transition(
                ctx,
                session,
                caller.tenant,
                case,
                actor,
                request.status,
                public_note=request.public_note,
                internal_note=request.internal_note,
                expected=None,
                kind="update",
            )
            _enqueue(session, caller.tenant, events)
        else:
            change = Change(
                kind="update",
                actor=actor.name,
                public_note=request.public_note,
                internal_note=request.internal_note,
            )
            case, _ = await service.write_change(session, case, change)
            _audit_change(session, caller.tenant, actor, "case.update", case)
        if update_id is not None:
            session.add(
                PartnerUpdate(
                    tenant=caller.tenant,
                    actor=actor.name,
                    update_id=update_id,
                    case_id=case.id,
                    sequence=case.sequence,
                )
            )
        result = CaseUpdateResult(case_id=case.id, status=case.status, sequence=case.sequence)
    return result


# -- SLA: overdue cases and their escalation -------------------------------------------------------


def escalation_level(rules: RuleSet, case: Case, now: datetime) -> tuple[int, tuple[EscalationStep, ...]]:
    """How far past its due date a case is, as a level (1 = overdue) and the steps of its rule."""
    steps = rules.escalation_for(case.rule_id)
    if not steps or steps[0].after_days > 0:
        steps = (EscalationStep(after_days=0), *steps)
    assert case.due_at is not None
    days_over = rules.working_days_between(case.due_at, now)
    return sum(1 for step in steps if step.after_days <= days_over), steps


async def check_overdue(ctx: RoutingContext, now: datetime | None = None) -> int:
    """Publish ``case.overdue`` once per case and escalation level; returns how many were published.

    The level is written under the case's optimistic lock, so several replicas running this
    job never publish one level twice.
    """
    now = now or utcnow()
    published = 0
    for tenant in ctx.runtime.tenants.codes():
        try:
            rules = ctx.rules.get(tenant)
        except RulesError:
            continue
        async with ctx.runtime.sessions() as session:
            candidates = list(
                (
                    await session.exec(
                        select(Case).where(
                            Case.tenant == tenant,
                            col(Case.due_at) < now,
                            col(Case.status).in_(lifecycle.SLA_RUNNING),
                        )
                    )
                ).all()
            )
        for candidate in candidates:
            level, steps = escalation_level(rules, candidate, now)
            if level <= candidate.escalation_level:
                continue
            try:
                published += await _escalate(ctx, tenant, candidate.id, candidate.sequence, level, steps, now)
            except Conflict:
                continue  # it changed meanwhile; the next pass looks again
    return published


async def _escalate(
    ctx: RoutingContext,
    tenant: str,
    case_id: str,
    expected: int,
    level: int,
    steps: tuple[EscalationStep, ...],
    now: datetime,
) -> int:
    async with ctx.runtime.sessions() as session, session.begin():
        case = await service.load_case(session, tenant, case_id)
        if case.escalation_level >= level or case.status not in lifecycle.SLA_RUNNING:
            return 0
        reached = steps[case.escalation_level : level]
        inform = [code for step in reached for code in step.inform if code != case.responsible]
        new_informed = [code for code in dict.fromkeys(inform) if code not in case.informed]
        previous = (case.responsible, list(case.informed))
        change = Change(
            kind="escalation",
            actor=service.SYSTEM_ACTOR,
            values={"escalation_level": level, "informed": [*case.informed, *new_informed]},
            details={"level": level, "escalated_to": inform},
        )
        case, _ = await service.write_change(session, case, change, expected=expected, now=now)
        assert case.due_at is not None
        overdue = CaseOverdue(
            case_id=case.id,
            signal_id=case.signal_id,
            tracking_code=case.tracking_code,
            responsible=case.responsible,
            priority=case.priority,
            due_at=case.due_at,
            escalated_to=list(dict.fromkeys(inform)),
            escalation_level=level,
        )
        events: Events = [(CaseOverdue.bus_subject(tenant), overdue)]
        events += service.assigned_events(
            tenant, case, [(code, "informed") for code in new_informed], escalation_level=level
        )
        events += service.departments_events(tenant, case, previous, "escalation")
        _enqueue(session, tenant, events)
        service.audit(
            session,
            tenant,
            service.SYSTEM_ACTOR,
            "case.overdue",
            f"case:{case.id}",
            f"level {level}",
            escalated_to=inform,
        )
    ctx.runtime.events_committed()
    return 1


async def watch_rules_once(ctx: RoutingContext) -> None:
    """Load every tenant's rules (so a change is validated, applied or refused at once) and audit it."""
    for tenant in ctx.runtime.tenants.codes():
        try:
            ctx.rules.get(tenant)
        except RulesError as exc:
            log.error("routing rules of %s refused: %s", tenant, exc)
    if ctx.reloads:
        async with ctx.runtime.sessions() as session, session.begin():
            _flush_reloads(ctx, session)


def background_jobs(
    ctx: RoutingContext, overdue_interval_s: float, rules_interval_s: float
) -> list[Callable[[], Awaitable[None]]]:
    """The SLA job and the rules watcher, for ``runtime.add_background``."""

    async def overdue_checker() -> None:
        while True:
            try:
                await check_overdue(ctx)
            except Exception as exc:
                if cancel_requested():  # a cancel that the database driver turned into an error
                    raise asyncio.CancelledError from exc
                log.exception("overdue check failed; trying again at the next interval")
            await asyncio.sleep(overdue_interval_s)

    async def rules_watcher() -> None:
        while True:
            await watch_rules_once(ctx)
            await asyncio.sleep(rules_interval_s)

    return [overdue_checker, rules_watcher]
