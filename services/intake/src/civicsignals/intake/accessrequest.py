"""A person's access request (AVG article 15, and article 20 portability), answered from intake.

Everything intake keeps of the person's signals, their original words and decrypted contact
included, as one JSON document the municipality sends them. It is theirs, so it holds what staff
see and more (the exact location, the portal's metadata, the status history with its notes), and
the internal notes staff and partners wrote on each signal's case, which routing keeps and intake
asks it for (:mod:`civicsignals.intake.casenotes`), and the e-mails notifier sent the person about
each signal (:mod:`civicsignals.intake.mailrecord`): they are personal data about the person too.
It also explains, in Dutch and English and in the language the person wrote in where the tenant
answers in it (:mod:`civicsignals.intake.access_words`), what each part is and which other services
keep what, so the privacy officer can complete the answer. Reading it is a read of contact data: one audit
record per signal (DESIGN §4), written before the document leaves the process, and only once
routing and notifier have answered: a document that cannot be complete is not made (unless its
caller asks for one without the notes or the mails, which says so in the document). The person
is selected as for an erasure (:func:`civicsignals.intake.privacy.signals_of_person`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common import wording
from civicsignals.common.db import SessionFactory
from civicsignals.common.events import utcnow
from civicsignals.common.tenants import Tenant
from civicsignals.intake import access_words, attachments, casenotes, mailrecord, service
from civicsignals.intake.accessparts import OtherService
from civicsignals.intake.crypto import FieldCipher
from civicsignals.intake.models import Attachment, AuditRecord, Contact, Feedback, Signal, StatusEntry
from civicsignals.intake.privacy import PersonSelector, signals_of_person

#: The document's format, so a later change of its shape can be told apart.
ACCESS_FORMAT = "civicsignals.intake.access.v1"

#: The audit action of a person's signal read for an access request.
ACCESS_ACTION = "person.access"

#: Each part another service keeps: the flag that says the document holds it, and the
#: explanation's line (by language) when it does not.
_MISSING_PARTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("case_notes_included", "case_notes_missing", access_words.CASE_NOTES_MISSING),
    ("mails_included", "mails_missing", access_words.MAILS_MISSING),
)


def _explain(document: dict[str, Any]) -> None:
    """Set the document's explanation in each of its languages (the keys of its ``summary``), with
    a line for each part another service keeps that it lacks, so that no reader takes it for
    complete."""
    document["explanation"] = {
        language: {
            **access_words.EXPLANATION[language],
            **{line: words[language] for flag, line, words in _MISSING_PARTS if not document[flag]},
        }
        for language in document["summary"]
    }


def rfc3339(value: datetime | None) -> str | None:
    """A time as an RFC 3339 UTC string with ``Z`` (the API's form); a naive time is taken as UTC."""
    if value is None:
        return None
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")


def _chunks(values: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    """Keep every ``IN (...)`` list short (SQLite counts bound parameters)."""
    return [values[start : start + size] for start in range(0, len(values), size)]


def document_languages(signals: Sequence[Signal], tenant: Tenant | None) -> list[str]:
    """The languages a person's document explains itself in: Dutch and English always (the
    municipality's, and the one its privacy officer and any reader can fall back on), then each
    language the person's signals were answered in (``wording.resident_language``: Turkish,
    Polish or Arabic where the tenant lists it), in the order they first wrote in it."""
    languages = ["nl", "en"]
    for signal in signals:
        language = wording.resident_language(signal.language, tenant)
        if language not in languages:
            languages.append(language)
    return languages


async def access_document(
    session: AsyncSession,
    cipher: FieldCipher,
    tenant: str,
    signal_ids: Sequence[str],
    *,
    selected_by: PersonSelector,
    selected_value: str,
    generated_at: datetime | None = None,
    tenant_config: Tenant | None = None,
) -> dict[str, Any]:
    """What intake keeps about one person with these signals, as one JSON-serialisable document.

    ``tenant_config`` is the tenant's folder, whose ``languages`` decide which of the person's
    languages the document explains itself in besides Dutch and English (:func:`document_languages`).

    Only reads: the caller writes the audit records (:func:`audit_access`) and the file. Ids of
    another tenant's or of no signal are left out, as ``erase_signals`` ignores them. Attachments
    are listed (not their bytes): :func:`copy_attachment_files` adds the files when asked. The
    case notes are routing's: the document comes without them (``case_notes_included`` false,
    every ``case_notes`` null) until :func:`include_case_notes` adds them; the mails are
    notifier's: likewise (``mails_included``, ``mails``) until :func:`include_mails` adds them.
    """
    unique = list(dict.fromkeys(signal_ids))
    signals: list[Signal] = []
    contacts: dict[str, Contact] = {}
    entries: dict[str, list[StatusEntry]] = {}
    files: dict[str, list[Attachment]] = {}
    feedback: dict[str, Feedback] = {}
    for chunk in _chunks(unique):
        signals.extend(
            (
                await session.exec(
                    select(Signal).where(col(Signal.id).in_(chunk), col(Signal.tenant) == tenant)
                )
            ).all()
        )
        for contact in (await session.exec(select(Contact).where(col(Contact.signal_id).in_(chunk)))).all():
            contacts[contact.signal_id] = contact
        history = await session.exec(
            select(StatusEntry)
            .where(col(StatusEntry.signal_id).in_(chunk))
            .order_by(col(StatusEntry.signal_id), col(StatusEntry.sequence))
        )
        for entry in history.all():
            entries.setdefault(entry.signal_id, []).append(entry)
        stored = await session.exec(
            select(Attachment)
            .where(col(Attachment.signal_id).in_(chunk))
            .order_by(col(Attachment.created_at), col(Attachment.id))
        )
        for attachment in stored.all():
            files.setdefault(attachment.signal_id, []).append(attachment)
        for answer in (await session.exec(select(Feedback).where(col(Feedback.signal_id).in_(chunk)))).all():
            feedback[answer.signal_id] = answer
    signals.sort(key=lambda signal: (signal.received_at, signal.id))
    languages = document_languages(signals, tenant_config)
    summary = access_words.SUMMARY_SOME if signals else access_words.SUMMARY_NONE
    document: dict[str, Any] = {
        "format": ACCESS_FORMAT,
        "tenant": tenant,
        "generated_at": rfc3339(generated_at or utcnow()),
        "selected_by": {
            **{language: access_words.SELECTOR_LABELS[language][selected_by] for language in languages},
            "value": selected_value,
        },
        "summary": {
            language: summary[language].format(tenant=tenant, count=len(signals)) for language in languages
        },
        "explanation": {},
        "signal_count": len(signals),
        "case_notes_included": False,
        "mails_included": False,
        "signals": [
            _signal_part(
                signal,
                _contact_part(cipher, contacts.get(signal.id)),
                entries.get(signal.id, []),
                files.get(signal.id, []),
                feedback.get(signal.id),
            )
            for signal in signals
        ],
    }
    _explain(document)
    return document


def _contact_part(cipher: FieldCipher, contact: Contact | None) -> dict[str, Any] | None:
    if contact is None:
        return None
    opened = service.open_contact(cipher, contact)
    return {
        "name": opened.get("name"),
        "email": opened.get("email"),
        "phone": opened.get("phone"),
        "consent": contact.consent,
        "given_at": rfc3339(contact.created_at),
    }


def _signal_part(
    signal: Signal,
    contact: dict[str, Any] | None,
    entries: list[StatusEntry],
    files: list[Attachment],
    answer: Feedback | None,
) -> dict[str, Any]:
    return {
        "signal_id": signal.id,
        "tracking_code": signal.tracking_code,
        "kind": signal.kind,
        "channel": signal.channel,
        "source": signal.source,
        "received_at": rfc3339(signal.received_at),
        "occurred_at": rfc3339(signal.occurred_at),
        "language": signal.language,
        "text": signal.text,
        "text_redacted": signal.text_redacted,
        "location": None
        if signal.lat is None and signal.lon is None and not signal.address
        else {"lat": signal.lat, "lon": signal.lon, "address": signal.address},
        "area": signal.area,
        "district": signal.district,
        "metadata": signal.extra or {},
        "contact": contact,
        "status": signal.status,
        "status_history": [
            {
                "sequence": entry.sequence,
                "status": entry.status,
                "at": rfc3339(entry.at),
                "note": entry.note,
                "actor": entry.actor,
            }
            for entry in entries
        ],
        "expected_by": rfc3339(signal.expected_by),
        "service_promise": signal.service_promise,
        "case_id": signal.case_id,
        "case_notes": None,
        "mails": None,
        "topic": signal.topic,
        "subtopic": signal.subtopic,
        "responsible": signal.responsible,
        "departments": list(signal.departments or []),
        "partners": list(signal.partners or []),
        "attachments": [
            {
                "id": attachment.id,
                "content_type": attachment.media_type,
                "size": attachment.size,
                "sha256": attachment.sha256,
                "created_at": rfc3339(attachment.created_at),
                "file": None,
            }
            for attachment in files
        ],
        "feedback": None
        if answer is None
        else {
            "satisfied": answer.satisfied,
            "score": answer.score,
            "comment": answer.comment,
            "at": rfc3339(answer.at),
        },
        "erased_at": rfc3339(signal.erased_at),
        "imported": signal.imported,
        "external_id": signal.external_id,
    }


def case_ids_of(document: dict[str, Any]) -> list[str]:
    """The cases routing keeps of the document's signals (a signal imported, or not routed yet,
    has none: nothing to ask)."""
    return list(dict.fromkeys(part["case_id"] for part in document["signals"] if part["case_id"]))


def include_case_notes(document: dict[str, Any], notes: dict[str, list[casenotes.CaseNote]]) -> None:
    """Put each case's internal notes (:func:`casenotes.case_notes`) into its signal's part and
    mark the document complete. A signal without a case, or whose case routing did not know, gets
    an empty list."""
    for part in document["signals"]:
        part["case_notes"] = list(notes.get(part["case_id"], [])) if part["case_id"] else []
    document["case_notes_included"] = True
    _explain(document)


def signal_ids_of(document: dict[str, Any]) -> list[str]:
    """The document's signals, whose mails notifier is asked for (every one: an acknowledgement
    goes out before a signal has a case, and an erased signal's sent mails stay in the log)."""
    return [part["signal_id"] for part in document["signals"]]


def include_mails(document: dict[str, Any], mails: dict[str, list[mailrecord.Mail]]) -> None:
    """Put each signal's e-mails (:func:`mailrecord.mails_of_signals`) into its part and mark the
    document as holding them. A signal notifier sent nothing about gets an empty list."""
    for part in document["signals"]:
        part["mails"] = list(mails.get(part["signal_id"], []))
    document["mails_included"] = True
    _explain(document)


async def answer_access_request(
    sessions: SessionFactory,
    cipher: FieldCipher,
    tenant: str,
    by: PersonSelector,
    value: str,
    *,
    actor: str,
    case_notes: OtherService | None = None,
    mails: OtherService | None = None,
    tenant_config: Tenant | None = None,
) -> dict[str, Any]:
    """One access request, from the command line or the privacy API: the person's document, with
    its audit records committed before it is handed back (so before it leaves the process).

    With ``case_notes`` (how to reach routing, ``accessparts.routing(...)``) the internal notes of
    the person's cases, and with ``mails`` (how to reach notifier, ``accessparts.notifier(...)``)
    the e-mails sent about their signals, are asked for after the database is read (no
    connection held across the calls) and put in. When either service cannot be asked,
    :class:`~civicsignals.intake.accessparts.PartUnavailable` is raised naming it, and nothing is
    audited, since nothing left intake. Without one the document says that part is missing
    (``case_notes_included`` or ``mails_included`` false, a line in the explanation): for the
    command's ``--without-case-notes`` and ``--without-mail-record``.
    """
    async with sessions() as session:
        ids = await signals_of_person(session, cipher, tenant, by, value)
        document = await access_document(
            session, cipher, tenant, ids, selected_by=by, selected_value=value, tenant_config=tenant_config
        )
    if case_notes is not None:
        notes = await casenotes.case_notes(case_notes, tenant, case_ids_of(document))
        include_case_notes(document, notes)
    if mails is not None:
        sent = await mailrecord.mails_of_signals(mails, tenant, signal_ids_of(document))
        include_mails(document, sent)
    async with sessions() as session, session.begin():
        audit_access(session, tenant, document, actor)
    return document


def audit_access(session: AsyncSession, tenant: str, document: dict[str, Any], actor: str) -> int:
    """One ``person.access`` audit record per signal in the document (ids only, never whose);
    the caller commits them in a transaction of their own. Returns how many."""
    signal_ids = [part["signal_id"] for part in document["signals"]]
    for signal_id in signal_ids:
        session.add(
            AuditRecord(
                tenant=tenant, actor=actor, action=ACCESS_ACTION, object=f"signal:{signal_id}", result="ok"
            )
        )
    return len(signal_ids)


@dataclass
class CopiedFiles:
    copied: int
    missing: int


def copy_attachment_files(
    document: dict[str, Any], attachments_dir: Path, target: Path, *, tenant: str
) -> CopiedFiles:
    """Copy the document's attachment files into ``target/<signal_id>/<id><suffix>`` and name
    each copy in its entry's ``file`` (relative to ``target``). The copies are the person's
    photos: readable by the owner only. A file missing from the volume keeps ``file`` null."""
    result = CopiedFiles(0, 0)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    for part in document["signals"]:
        for entry in part["attachments"]:
            source = attachments.stored_path(attachments_dir, tenant, part["signal_id"], entry["id"])
            if not source.is_file():
                result.missing += 1
                continue
            relative = (
                Path(part["signal_id"]) / f"{entry['id']}{attachments.suffix_for(entry['content_type'])}"
            )
            (target / relative).parent.mkdir(mode=0o700, exist_ok=True)
            shutil.copyfile(source, target / relative)
            os.chmod(target / relative, 0o600)
            entry["file"] = relative.as_posix()
            result.copied += 1
    return result


def write_access_document(document: dict[str, Any], path: Path, *, overwrite: bool) -> None:
    """Write the document as indented UTF-8 JSON, readable by the owner only (it is personal
    data), to a temporary name first: a reader never sees half of it. Without ``overwrite`` an
    existing file stays and :class:`FileExistsError` is raised."""
    if not overwrite and path.exists():
        raise FileExistsError(path)
    temporary = path.with_name(f".{path.name}.part")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(document, ensure_ascii=False, indent=2))
            handle.write("\n")
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
