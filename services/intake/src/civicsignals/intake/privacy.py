"""Personal data over its lifetime (DESIGN §4): key rotation, erasure on request, retention.

A person's access request (AVG article 15) is answered by :mod:`civicsignals.intake.accessrequest`.

* **Rotation** re-seals every contact whose key id is not the active one, batch by batch, each
  batch in its own transaction, so it can be stopped and rerun; afterwards the old key can be
  removed from ``CIVIC_INTAKE_PII_KEYS``.
* **Erasure** (AVG article 17) of one person: their contact rows are deleted, the free text of
  their signals is replaced by its redacted form (which also lost the reporter's own name), the
  address, portal metadata and attachments go, coordinates are kept only coarse (about 100 m),
  and a feedback comment and the notes of the resident's own moves on the tracking page are
  dropped. The signal itself stays with its kind, channel, times, area and status, so statistics
  and the case history still add up. ``signal.erased`` goes out with the change (outbox), so
  routing, notifier, the classifier and insights drop their copies and tell the departments and
  partners the case reached (AVG article 19). Contacts are sealed and have no searchable index,
  so finding a person by e-mail or phone decrypts the tenant's contacts one by one: slow for
  millions, but erasure is rare, and no lookup key of anyone's e-mail is kept.
* **Retention**: contact data is deleted ``retention.contact_days_after_close`` days after the
  signal's case reached a closing status (resolved, closed, rejected, duplicate, cancelled).

Every erasure and retention run writes audit records (what, how many; never whose).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from sqlalchemy import func
from sqlmodel import col, delete, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common.db import SessionFactory
from civicsignals.common.events import RESIDENT_ACTOR, SignalErased, make_event, utcnow
from civicsignals.common.ids import normalise_tracking_code
from civicsignals.common.outbox import enqueue
from civicsignals.common.tenants import TenantRegistry
from civicsignals.intake import attachments, service
from civicsignals.intake.crypto import FieldCipher, Sealed
from civicsignals.intake.models import Attachment, AuditRecord, Contact, Feedback, Signal, StatusEntry
from civicsignals.intake.tenantconfig import closed_statuses, retention_days

log = logging.getLogger(__name__)


# -- rotation --------------------------------------------------------------------------------------


async def rotate_keys(sessions: SessionFactory, cipher: FieldCipher, *, batch_size: int = 500) -> int:
    """Re-seal every contact not sealed with the active key; returns how many were re-sealed."""
    resealed = 0
    while True:
        async with sessions() as session, session.begin():
            rows = (
                await session.exec(
                    select(Contact)
                    .where(col(Contact.key_id) != cipher.active_key_id)
                    .order_by(col(Contact.signal_id))
                    .limit(batch_size)
                )
            ).all()
            for contact in rows:
                associated = contact.signal_id.encode()
                plaintext = cipher.open(Sealed(contact.key_id, contact.nonce, contact.ciphertext), associated)
                sealed = cipher.seal(plaintext, associated)
                contact.key_id, contact.nonce, contact.ciphertext = (
                    sealed.key_id,
                    sealed.nonce,
                    sealed.ciphertext,
                )
                session.add(contact)
            resealed += len(rows)
        if len(rows) < batch_size:
            return resealed


async def key_usage(sessions: SessionFactory) -> dict[str, int]:
    """How many contacts each key id seals (to see when an old key can be retired)."""
    async with sessions() as session:
        rows = (await session.exec(select(Contact.key_id, func.count()).group_by(col(Contact.key_id)))).all()
    return {key_id: int(count) for key_id, count in rows}


# -- erasure ---------------------------------------------------------------------------------------


def _digits(phone: str) -> str:
    digits = re.sub(r"\D", "", phone)
    if digits.startswith("0031"):
        digits = "0" + digits[4:]
    elif digits.startswith("31") and len(digits) == 11:
        digits = "0" + digits[2:]
    return digits


async def find_signals_of_person(
    session: AsyncSession,
    cipher: FieldCipher,
    tenant: str,
    *,
    email: str | None = None,
    phone: str | None = None,
    batch_size: int = 1000,
) -> list[str]:
    """The ids of the tenant's signals whose sealed contact has this e-mail address or phone number."""
    wanted_email = email.strip().lower() if email else None
    wanted_phone = _digits(phone) if phone else None
    found: list[str] = []
    last = ""
    while True:
        rows = (
            await session.exec(
                select(Contact)
                .where(col(Contact.tenant) == tenant, col(Contact.signal_id) > last)
                .order_by(col(Contact.signal_id))
                .limit(batch_size)
            )
        ).all()
        for contact in rows:
            opened = service.open_contact(cipher, contact)
            if (wanted_email and str(opened.get("email") or "").lower() == wanted_email) or (
                wanted_phone and opened.get("phone") and _digits(str(opened["phone"])) == wanted_phone
            ):
                found.append(contact.signal_id)
        if len(rows) < batch_size:
            return found
        last = rows[-1].signal_id


#: How a person is picked out: by the e-mail address or phone number in their sealed contacts,
#: or by one signal's tracking code (that signal only, also once its contact is gone).
PersonSelector = Literal["email", "phone", "tracking_code"]


async def signals_of_person(
    session: AsyncSession, cipher: FieldCipher, tenant: str, by: PersonSelector, value: str
) -> list[str]:
    """The tenant's signals of one person, as ``erase`` and ``access`` both select them.

    A tracking code names one signal, found even after its contact was erased or deleted by
    retention (the e-mail or phone number is then no longer there to find it by); a code of
    another tenant's signal finds nothing, as if unknown.
    """
    if by == "tracking_code":
        signal = await service.find_by_tracking_code(session, normalise_tracking_code(value))
        return [signal.id] if signal is not None and signal.tenant == tenant else []
    if by == "email":
        return await find_signals_of_person(session, cipher, tenant, email=value)
    return await find_signals_of_person(session, cipher, tenant, phone=value)


@dataclass
class ErasureResult:
    signals: int
    contacts: int
    attachments: int


async def erase_signals(
    session: AsyncSession,
    tenant: str,
    signal_ids: list[str],
    actor: str,
    attachments_dir: Path,
    proof: str | None = None,
) -> ErasureResult:
    """Erase one person's data from these signals, keeping what statistics need (see module doc).
    ``proof``, how the officer proved it was them just before (the privacy desk's step-up), goes
    into each audit record's ``detail``."""
    result = ErasureResult(0, 0, 0)
    now = utcnow()
    for signal_id in signal_ids:
        signal = await session.get(Signal, signal_id)
        if signal is None or signal.tenant != tenant:
            continue
        contact = await session.get(Contact, signal_id)
        if contact is not None:
            await session.delete(contact)
            result.contacts += 1
        signal.text = signal.text_redacted
        signal.address = None
        signal.extra = {}
        signal.lat = service.coarse(signal.lat)
        signal.lon = service.coarse(signal.lon)
        signal.has_contact = False
        signal.erased_at = now
        session.add(signal)
        await session.exec(delete(Attachment).where(col(Attachment.signal_id) == signal_id))
        result.attachments += attachments.remove_signal_files(attachments_dir, tenant, signal_id)
        await session.exec(update(Feedback).where(col(Feedback.signal_id) == signal_id).values(comment=None))
        # the resident's own answers on their tracking page are their words, like the comment
        await session.exec(
            update(StatusEntry)
            .where(col(StatusEntry.signal_id) == signal_id, col(StatusEntry.actor) == RESIDENT_ACTOR)
            .values(note=None)
        )
        session.add(
            AuditRecord(
                tenant=tenant,
                actor=actor,
                action="person.erase",
                object=f"signal:{signal_id}",
                result="ok",
                detail=proof,
            )
        )
        erased = SignalErased(signal_id=signal_id, case_id=signal.case_id, erased_at=now)
        enqueue(
            session,
            SignalErased.bus_subject(tenant),
            make_event(tenant=tenant, service="intake", data=erased),
        )
        result.signals += 1
    return result


@dataclass
class PersonErasure:
    """What one erasure request found and, unless it was only a look or the signals were not the
    ones confirmed (``changed``), erased."""

    signals: list[Signal]
    erased: ErasureResult | None
    changed: bool = False


async def erase_person(
    sessions: SessionFactory,
    cipher: FieldCipher,
    tenant: str,
    by: PersonSelector,
    value: str,
    *,
    actor: str,
    attachments_dir: Path,
    dry_run: bool,
    confirmed: Collection[str] | None = None,
    proof: str | None = None,
) -> PersonErasure:
    """One erasure request, from the command line, the privacy API or the privacy desk: find the
    person's signals, then (not in a dry run) erase them in one transaction, ``signal.erased``
    included.

    ``confirmed`` are the signals the officer was shown and agreed to erase (the dry run's list).
    When the person's signals are not exactly those any more (a new signal came in with the same
    address, one was erased meanwhile), nothing is erased and ``changed`` says so: the officer
    confirmed a list, not a search."""
    async with sessions() as session:
        ids = await signals_of_person(session, cipher, tenant, by, value)
        found = await _signals_in_order(session, tenant, ids)
    if confirmed is not None and {signal.id for signal in found} != set(confirmed):
        return PersonErasure(found, None, changed=True)
    if dry_run or not found:
        return PersonErasure(found, None if dry_run else ErasureResult(0, 0, 0))
    async with sessions() as session, session.begin():
        ids = [signal.id for signal in found]
        result = await erase_signals(session, tenant, ids, actor, attachments_dir, proof)
    return PersonErasure(found, result)


async def _signals_in_order(session: AsyncSession, tenant: str, ids: list[str]) -> list[Signal]:
    """The tenant's signals of these ids, oldest first (detached: only their columns are read)."""
    if not ids:
        return []
    rows = await session.exec(
        select(Signal)
        .where(col(Signal.id).in_(ids), col(Signal.tenant) == tenant)
        .order_by(col(Signal.received_at))
    )
    return list(rows.all())


# -- retention -------------------------------------------------------------------------------------


async def apply_retention(
    sessions: SessionFactory, tenants: TenantRegistry, *, now: datetime | None = None
) -> dict[str, int]:
    """Delete contact data kept longer than each tenant allows after its case closed.

    Returns {tenant: contacts deleted}. Tenants without ``retention.contact_days_after_close``
    keep contact data (and the log says so once per run).
    """
    now = now or utcnow()
    deleted: dict[str, int] = {}
    for code in tenants.codes():
        tenant = tenants.get(code)
        if tenant is None:
            continue
        days = retention_days(tenant)
        if days is None:
            log.info(
                "retention: tenant %s sets no retention.contact_days_after_close; keeping contacts", code
            )
            continue
        cutoff = now - timedelta(days=days)
        statuses = sorted(closed_statuses(tenant))
        async with sessions() as session, session.begin():
            expired = select(Signal.id).where(
                col(Signal.tenant) == code,
                col(Signal.status).in_(statuses),
                col(Signal.status_updated_at) < cutoff,
            )
            result = await session.exec(
                delete(Contact).where(col(Contact.tenant) == code, col(Contact.signal_id).in_(expired))
            )
            count = int(result.rowcount or 0)
            if count:
                await session.exec(
                    update(Signal)
                    .where(col(Signal.tenant) == code, col(Signal.id).in_(expired), col(Signal.has_contact))
                    .values(has_contact=False)
                )
                session.add(
                    AuditRecord(
                        tenant=code,
                        actor="intake:retention",
                        action="contact.retention",
                        object=f"contacts closed before {cutoff.isoformat()}",
                        result=f"deleted {count}",
                    )
                )
        deleted[code] = count
    return deleted
