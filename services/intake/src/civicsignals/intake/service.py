"""Intake's plain functions: store signals and contacts, build what goes on the bus, read status."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import bindparam
from sqlalchemy import select as sa_select
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common.events import (
    CaseDepartmentsChanged,
    CaseStatusChanged,
    CoarseLocation,
    ConversationReceived,
    ConversationTurn,
    DepartmentAssigned,
    SignalClassified,
    SignalReceived,
    SignalRouted,
    case_holders,
    utcnow,
)
from civicsignals.common.ids import new_id, new_tracking_code
from civicsignals.common.language import guess_language
from civicsignals.common.redaction import redact
from civicsignals.intake import residentmoves
from civicsignals.intake.attachments import StoredFile
from civicsignals.intake.crypto import FieldCipher, Sealed
from civicsignals.intake.models import (
    Contact,
    ContactPublic,
    Conversation,
    ConversationCreate,
    Feedback,
    HistoryEntry,
    Reporter,
    Signal,
    SignalCreate,
    StatusEntry,
    TrackingPublic,
)
from civicsignals.intake.tenantconfig import Area

COARSE_DECIMALS = 3  # 0.001° of latitude is 111 m: "about 100 m" (DESIGN §2)


def coarse(value: float | None) -> float | None:
    return None if value is None else round(value, COARSE_DECIMALS)


def redact_for_bus(text: str, reporter: Reporter | None) -> str:
    """Redact personal data, including the reporter's own name when they wrote it in the text."""
    redacted = redact(text)
    if reporter is not None and reporter.name and len(reporter.name.strip()) >= 3:
        redacted = redacted.replace(reporter.name.strip(), "[NAAM]")
    return redacted


def request_fingerprint(payload: BaseModel, endpoint: str = "signals") -> str:
    """The hash that tells a replayed request from another one under the same Idempotency-Key.

    The endpoint is part of it, so one key reused on another endpoint is "another request" (422).
    """
    canonical = json.dumps(
        {"endpoint": endpoint, "body": payload.model_dump(mode="json")}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def signal_row(
    tenant: str,
    payload: SignalCreate,
    source: str,
    *,
    area: Area | None = None,
    service_code: str | None = None,
    signal_id: str | None = None,
) -> dict[str, Any]:
    """The ``signal`` table's row for a portal's signal, as plain column values.

    The hot path writes plain rows with one multi-row INSERT per table (see ``batching``):
    building an ORM object per row would cost more than everything else a request does.
    """
    location = payload.location
    received_at = utcnow()
    return {
        **_SIGNAL_DEFAULTS,
        "id": signal_id or new_id(),
        "tenant": tenant,
        "tracking_code": new_tracking_code(),
        "kind": payload.kind,
        "channel": payload.channel,
        "text": payload.text,
        "text_redacted": redact_for_bus(payload.text, payload.reporter),
        "language": payload.language or guess_language(payload.text),
        "occurred_at": payload.occurred_at,
        "received_at": received_at,
        "lat": location.lat if location else None,
        "lon": location.lon if location else None,
        "address": location.address.model_dump(exclude_none=True) if location and location.address else None,
        "metadata": payload.metadata,
        "source": payload.source or source,
        "has_contact": bool(payload.reporter and payload.reporter.has_contact()),
        "area": area.code if area else None,
        "district": area.district if area else None,
        "service_code": service_code,
        "status_updated_at": received_at,
        "departments": [],
        "partners": [],
    }


def _column_defaults() -> dict[str, Any]:
    """Every column of ``signal`` with the model's default, keyed by column name."""
    defaults: dict[str, Any] = {}
    columns = {column.key: column.name for column in Signal.__table__.columns}  # type: ignore[attr-defined]
    for name, info in Signal.model_fields.items():
        column = "metadata" if name == "extra" else name
        if column not in columns.values():
            continue
        if info.default_factory is not None:
            defaults[column] = info.default_factory()  # type: ignore[call-arg]
        elif not info.is_required():
            defaults[column] = info.default
    return defaults


_SIGNAL_DEFAULTS = _column_defaults()


def status_row(signal: dict[str, Any]) -> dict[str, Any]:
    return {
        "signal_id": signal["id"],
        "sequence": 0,
        "status": signal["status"],
        "at": signal["received_at"],
        "note": None,
        "actor": None,  # intake's own first entry, before any case change
    }


def attachment_row(
    signal_id: str, tenant: str, attachment_id: str, stored: StoredFile, created_at: datetime
) -> dict[str, Any]:
    """The ``attachment`` row of a stored file (no file name: personal data)."""
    return {
        "id": attachment_id,
        "signal_id": signal_id,
        "tenant": tenant,
        "media_type": stored.media_type,
        "size": stored.size,
        "sha256": stored.sha256,
        "created_at": created_at,
    }


def contact_row(cipher: FieldCipher, signal: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    plaintext = json.dumps(reporter.model_dump(mode="json", exclude={"consent"})).encode()
    sealed = cipher.seal(plaintext, associated=signal["id"].encode())
    return {
        "signal_id": signal["id"],
        "tenant": signal["tenant"],
        "key_id": sealed.key_id,
        "nonce": sealed.nonce,
        "ciphertext": sealed.ciphertext,
        "consent": reporter.consent,
        "created_at": signal["received_at"],
    }


def signal_received_from_row(values: dict[str, Any]) -> SignalReceived:
    """``signal.received`` straight from a signal row (redacted text, coarse location)."""
    location = None
    if values["lat"] is not None or values["area"] is not None:
        location = CoarseLocation(
            lat=coarse(values["lat"]),
            lon=coarse(values["lon"]),
            area=values["area"],
            district=values["district"],
        )
    return SignalReceived(
        signal_id=values["id"],
        tracking_code=values["tracking_code"],
        kind=values["kind"],
        channel=values["channel"],
        text=values["text_redacted"],
        language=values["language"],
        location=location,
        received_at=values["received_at"],
        has_contact=values["has_contact"],
        source=values["source"],
        occurred_at=values["occurred_at"],
        attachments=values["attachments"],
        imported=values["imported"],
    )


def open_contact(cipher: FieldCipher, contact: Contact) -> dict[str, Any]:
    sealed = Sealed(contact.key_id, contact.nonce, contact.ciphertext)
    opened: dict[str, Any] = json.loads(cipher.open(sealed, associated=contact.signal_id.encode()))
    return opened


def build_conversation(
    tenant: str, payload: ConversationCreate, source: str, *, conversation_id: str | None = None
) -> Conversation:
    """Every turn is redacted before it is stored: the transcript never exists unredacted here."""
    turns = [{"speaker": turn.speaker, "text": redact(turn.text)} for turn in payload.turns]
    citizen_text = " ".join(turn.text for turn in payload.turns if turn.speaker == "citizen")
    return Conversation(
        id=conversation_id or new_id(),
        tenant=tenant,
        channel=payload.channel,
        started_at=payload.started_at,
        duration_s=payload.duration_s,
        team=payload.team,
        outcome=payload.outcome,
        language=payload.language or guess_language(citizen_text or " ".join(t.text for t in payload.turns)),
        turns=turns,
        source=payload.source or source,
        extra=payload.metadata,
    )


def conversation_received_data(conversation: Conversation) -> ConversationReceived:
    return ConversationReceived(
        signal_id=conversation.id,
        channel=conversation.channel,
        turns=[ConversationTurn.model_validate(turn) for turn in conversation.turns],
        started_at=conversation.started_at,
        duration_s=conversation.duration_s,
        team=conversation.team,
        outcome=conversation.outcome,
        language=conversation.language,
    )


async def find_by_tracking_code(session: AsyncSession, code: str) -> Signal | None:
    return (await session.exec(select(Signal).where(Signal.tracking_code == code))).first()


async def history(session: AsyncSession, signal_id: str) -> list[StatusEntry]:
    return list(
        (
            await session.exec(
                select(StatusEntry)
                .where(StatusEntry.signal_id == signal_id)
                .order_by(col(StatusEntry.sequence))
            )
        ).all()
    )


async def tracking_view(
    session: AsyncSession, signal: Signal, *, reopen_within_days: int | None, now: datetime
) -> TrackingPublic:
    """The public view, with the moves the resident may make ``now`` (the tenant's reopening
    window is ``reopen_within_days``, see :mod:`.residentmoves`)."""
    entries = await history(session, signal.id)
    timeline = [(entry.status, entry.at) for entry in entries]
    return TrackingPublic(
        tracking_code=signal.tracking_code,
        status=signal.status,
        kind=signal.kind,
        received_at=signal.received_at,
        history=[HistoryEntry(status=e.status, at=e.at, note=e.note) for e in entries],
        expected_by=signal.expected_by,
        service_promise=signal.service_promise,
        feedback_given=await session.get(Feedback, signal.id) is not None,
        actions=residentmoves.offered(
            signal.status,
            timeline,
            has_case=signal.case_id is not None,
            within_days=reopen_within_days,
            now=now,
        ),
        reopen_until=residentmoves.reopen_until(timeline, reopen_within_days),
        attachments=0 if signal.erased_at is not None else signal.attachments,
    )


READ_AHEAD = "intake.read_ahead"


@dataclass
class ReadAhead:
    """The signals a consumer batch is about, and their status entries, read in one query each
    before any event of the batch writes: the applies then only write, so the transaction holds
    SQLite's write lock for its final flush only (``ConsumerSpec.prepare``). Holding the objects
    here also keeps them in the session's identity map, which only references them weakly."""

    signals: dict[str, Signal]
    status_entries: set[tuple[str, int]] | None


async def read_ahead(session: AsyncSession, signal_ids: set[str], *, status_entries: bool) -> None:
    """Read the batch's signals ``FOR UPDATE`` (on PostgreSQL; SQLite ignores it, and intake's
    consumers take turns there instead: ``ConsumerSpec.exclusive``). Several consumers change the
    same row (holders, departments, partners, the responsible department), each from what it read:
    without the lock, one that read before another committed would write back the older holders,
    and a department the case had just left would open the resident's photos again. In id order,
    so two batches lock their common rows in the same order and never wait for each other in a
    circle."""
    query = select(Signal).where(col(Signal.id).in_(signal_ids)).order_by(col(Signal.id))
    rows = await session.exec(query.with_for_update())
    signals = {signal.id: signal for signal in rows.all()}
    entries: set[tuple[str, int]] | None = None
    if status_entries:
        keys = await session.exec(
            select(StatusEntry.signal_id, StatusEntry.sequence).where(
                col(StatusEntry.signal_id).in_(signal_ids)
            )
        )
        entries = {(signal_id, sequence) for signal_id, sequence in keys.all()}
    session.info[READ_AHEAD] = ReadAhead(signals, entries)


async def _signal(session: AsyncSession, signal_id: str) -> Signal | None:
    ahead = session.info.get(READ_AHEAD)
    if isinstance(ahead, ReadAhead):
        return ahead.signals.get(signal_id)  # events follow signal.received: no signal, none to come
    return await session.get(Signal, signal_id, with_for_update=True)  # as read_ahead, above


async def _has_status_entry(session: AsyncSession, signal_id: str, sequence: int) -> bool:
    ahead = session.info.get(READ_AHEAD)
    if isinstance(ahead, ReadAhead) and ahead.status_entries is not None:
        return (signal_id, sequence) in ahead.status_entries
    query = select(StatusEntry).where(StatusEntry.signal_id == signal_id, StatusEntry.sequence == sequence)
    return (await session.exec(query)).first() is not None


async def apply_status_change(session: AsyncSession, change: CaseStatusChanged, at: datetime) -> bool:
    """Follow the case's status so the tracking page shows it; stale or repeated changes are ignored."""
    signal = await _signal(session, change.signal_id)
    if signal is None:
        return False
    if not await _has_status_entry(session, signal.id, change.sequence):
        session.add(
            StatusEntry(
                signal_id=signal.id,
                sequence=change.sequence,
                status=change.to,
                at=at,
                note=change.public_note,
                actor=change.actor,
            )
        )
        ahead = session.info.get(READ_AHEAD)
        if isinstance(ahead, ReadAhead) and ahead.status_entries is not None:
            ahead.status_entries.add((signal.id, change.sequence))  # a repeat later in the batch
    if change.sequence > signal.status_sequence:
        signal.status = change.to
        signal.status_sequence = change.sequence
        signal.case_id = change.case_id
        signal.status_updated_at = at
        if change.due_at is not None:  # events from before the field leave the routed date
            signal.expected_by = change.due_at
            signal.service_promise = change.service_promise
        session.add(signal)
    if change.responsible is not None:  # a case handed to another department
        _set_responsible(session, signal, change.responsible, change.sequence)
    if "partners" in change.model_fields_set:  # events from before the field name none
        _add_partners(session, signal, change.partners)
    return True


def _set_responsible(session: AsyncSession, signal: Signal, department: str, sequence: int) -> None:
    """The responsible department as of the case's change ``sequence``, unless a later change
    was applied already (status changes, routing and the departments' feed come on three
    consumers, in any order)."""
    if signal.responsible is None or sequence > signal.responsible_sequence:
        signal.responsible = department
        signal.responsible_sequence = max(sequence, signal.responsible_sequence)
        session.add(signal)


def _add_partners(session: AsyncSession, signal: Signal, partners: list[str]) -> None:
    """Add the partners a case was forwarded to. Routing only ever adds partners to a case, so the
    union is right whatever order ``signal.routed`` and the status changes are applied in; it is
    what lets a partner's key read the signal's attachments (``flows.readable_signal``)."""
    known = list(signal.partners or [])
    added = [code for code in partners if code not in known]
    if added:
        signal.partners = [*known, *added]
        session.add(signal)


async def apply_department_assigned(session: AsyncSession, assigned: DepartmentAssigned) -> bool:
    """Remember a department the case reached (opened, reassigned or escalated to it, responsible
    or informed): it joins the recipients (``departments``, a union) and, unless a later change
    is known already, the holders, so its keys open the signal's attachments at once, before the
    change's ``case.departments_changed`` (which names the holders exactly) is applied."""
    signal = await _signal(session, assigned.signal_id)
    if signal is None:
        return False
    if assigned.role == "responsible" and assigned.sequence is not None:
        _set_responsible(session, signal, assigned.department, assigned.sequence)
    known = list(signal.departments or [])
    if assigned.department not in known:
        signal.departments = [*known, assigned.department]
        session.add(signal)
    newer = assigned.sequence is not None and assigned.sequence > signal.holders_sequence
    if signal.holders is not None and newer and assigned.department not in signal.holders:
        signal.holders = [*signal.holders, assigned.department]
        session.add(signal)
    return True


def _set_holders(signal: Signal, responsible: str, informed: list[str], sequence: int) -> bool:
    """The departments holding the case as of ``sequence``, unless a later change set them (routing's
    events come on several consumers, in any order). Whether anything changed."""
    if sequence <= signal.holders_sequence:
        return False
    signal.holders = case_holders(responsible, informed)
    signal.holders_sequence = sequence
    return True


async def apply_departments_changed(session: AsyncSession, changed: CaseDepartmentsChanged) -> bool:
    """The case moved between departments: those it left stop opening the signal's attachments
    (a department sees a resident's photos while it handles the case, not after), and the
    responsible department shows in Open311 as of this change."""
    signal = await _signal(session, changed.signal_id)
    if signal is None:
        return False
    _set_responsible(session, signal, changed.responsible, changed.sequence)
    known = list(signal.departments or [])
    reached = [code for code in (changed.responsible, *changed.informed) if code not in known]
    if reached:
        signal.departments = [*known, *reached]
    if _set_holders(signal, changed.responsible, changed.informed, changed.sequence) or reached:
        session.add(signal)
    return True


async def apply_routed(session: AsyncSession, routed: SignalRouted) -> bool:
    signal = await _signal(session, routed.signal_id)
    if signal is None:
        return False
    signal.case_id = routed.case_id
    if signal.expected_by is None or signal.status_sequence <= 1:
        # a later change (a reopening, say) applied first already carries the newer due date
        signal.expected_by = routed.due_at
        signal.service_promise = routed.service_promise
    # likewise the department: a later change may have handed the case on already (the routing
    # is the case's first change)
    _set_responsible(session, signal, routed.responsible, 1)
    _set_holders(signal, routed.responsible, routed.informed, 1)
    _add_partners(session, signal, routed.partners)
    session.add(signal)
    return True


async def apply_classified(session: AsyncSession, classified: SignalClassified) -> bool:
    """Remember the topic, so Open311 can show a request's service_code once it is known."""
    signal = await _signal(session, classified.signal_id)
    if signal is None:
        return False
    signal.topic = classified.topic
    signal.subtopic = classified.subtopic
    session.add(signal)
    return True


def audit_row(tenant: str, actor: str, action: str, object: str, result: str) -> dict[str, Any]:
    """An ``audit`` row's columns, for the group commit (no personal data: ids, not people)."""
    return {
        "at": utcnow(),
        "tenant": tenant,
        "actor": actor,
        "action": action,
        "object": object,
        "result": result,
        "detail": None,
    }


_CONTACTS_QUERY = (
    sa_select(
        col(Contact.signal_id),
        col(Contact.key_id),
        col(Contact.nonce),
        col(Contact.ciphertext),
        col(Contact.consent),
        col(Signal.tracking_code),
        col(Signal.language),
    )
    .join_from(Contact, Signal, col(Signal.id) == col(Contact.signal_id))
    .where(
        col(Contact.signal_id).in_(bindparam("signal_ids", expanding=True)),
        col(Signal.tenant) == bindparam("tenant"),
    )
)
"""Built once: building the statement per call cost more than running it (py-spy, bench/pipeline)."""


def _opened_contact(cipher: FieldCipher, row: Any) -> ContactPublic:
    """A row of ``_CONTACTS_QUERY``, decrypted (its signal id is the associated data)."""
    signal_id, key_id, nonce, ciphertext, consent, tracking_code, language = row
    opened: dict[str, Any] = json.loads(
        cipher.open(Sealed(key_id, nonce, ciphertext), associated=signal_id.encode())
    )
    return ContactPublic(
        signal_id=signal_id,
        tracking_code=tracking_code,
        name=opened.get("name"),
        email=opened.get("email"),
        phone=opened.get("phone"),
        consent=consent,
        language=language,
    )


async def read_contact(
    session: AsyncSession, cipher: FieldCipher, tenant: str, signal_id: str
) -> ContactPublic | None:
    """Decrypt a reporter's contact; None when this tenant keeps none for the signal."""
    return (await read_contacts(session, cipher, tenant, [signal_id])).get(signal_id)


async def read_contacts(
    session: AsyncSession, cipher: FieldCipher, tenant: str, signal_ids: Sequence[str]
) -> dict[str, ContactPublic]:
    """The contacts this tenant keeps for any of ``signal_ids``, decrypted, by signal id, in one
    Core query. Only reads: the audit records are the caller's (:func:`flows.read_contacts`)."""
    connection = await session.connection()
    rows = await connection.execute(_CONTACTS_QUERY, {"signal_ids": list(signal_ids), "tenant": tenant})
    return {contact.signal_id: contact for contact in (_opened_contact(cipher, row) for row in rows)}
