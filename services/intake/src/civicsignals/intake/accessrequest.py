"""A person's access request (AVG article 15, and article 20 portability), answered from intake.

Everything intake keeps of the person's signals, their original words and decrypted contact
included, as one JSON document the municipality sends them. It is theirs, so it holds what staff
see and more (the exact location, the portal's metadata, the status history with its notes), and
the internal notes staff and partners wrote on each signal's case, which routing keeps and intake
asks it for (:mod:`civicsignals.intake.casenotes`), and the e-mails notifier sent the person about
each signal (:mod:`civicsignals.intake.mailrecord`): they are personal data about the person too.
It also explains, in Dutch and English, what each part is and which other services keep what, so
the privacy officer can complete the answer. Reading it is a read of contact data: one audit
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

from civicsignals.common.db import SessionFactory
from civicsignals.common.events import utcnow
from civicsignals.intake import attachments, casenotes, mailrecord, service
from civicsignals.intake.accessparts import OtherService
from civicsignals.intake.crypto import FieldCipher
from civicsignals.intake.models import Attachment, AuditRecord, Contact, Feedback, Signal, StatusEntry
from civicsignals.intake.privacy import PersonSelector, signals_of_person

#: The document's format, so a later change of its shape can be told apart.
ACCESS_FORMAT = "civicsignals.intake.access.v1"

#: The audit action of a person's signal read for an access request.
ACCESS_ACTION = "person.access"

_SELECTOR_LABELS: dict[PersonSelector, tuple[str, str]] = {
    "email": ("e-mailadres", "e-mail address"),
    "phone": ("telefoonnummer", "phone number"),
    "tracking_code": ("volgcode", "tracking code"),
}

#: What each part of the document is, for the person and the privacy officer (Dutch, English).
ACCESS_EXPLANATION: dict[str, dict[str, str]] = {
    "nl": {
        "document": "Dit overzicht beantwoordt uw verzoek om inzage (AVG artikel 15). Het is een kopie "
        "in een gangbaar, machineleesbaar formaat (JSON, UTF-8; AVG artikel 20) van alles wat het "
        "meldingensysteem van de gemeente (de ontvangst van meldingen, 'intake') bij de genoemde "
        "meldingen over u bewaart. Tijden staan in UTC.",
        "selected_by": "Hoe uw gegevens zijn gezocht: op het e-mailadres of telefoonnummer in uw "
        "contactgegevens (alle meldingen waarbij u dat gaf), of op de volgcode van één melding.",
        "signals": "Per melding: het kenmerk (signal_id), de volgcode waarmee u de melding volgt, de "
        "soort, het kanaal, het portaal (source), wanneer wij de melding ontvingen (received_at) en "
        "wanneer het volgens u gebeurde (occurred_at), de taal, de huidige status en het onderwerp "
        "dat wij eraan gaven (topic, subtopic).",
        "text": "text is uw melding zoals u die schreef. text_redacted is dezelfde tekst zonder "
        "persoonsgegevens (e-mailadressen, telefoonnummers, adressen, uw naam): alleen die versie "
        "gaat naar de andere onderdelen van het systeem.",
        "location": "location is de plaats zoals u die gaf (coördinaten en adres); area en district "
        "zijn de wijk en het stadsdeel die wij daaruit afleidden. metadata zijn de gegevens die het "
        "portaal meestuurde.",
        "contact": "contact is uw naam, e-mailadres en telefoonnummer (versleuteld bewaard), of u "
        "toestemming gaf om over de melding benaderd te worden (consent) en wanneer u ze gaf. Leeg "
        "als u geen contactgegevens gaf, of als ze zijn verwijderd (op uw verzoek, of een vaste "
        "termijn nadat de zaak was afgerond).",
        "status_history": "status_history is het verloop van de behandeling in volgorde, met de "
        "toelichtingen die u op de volgpagina zag en wie de stap zette (actor: de afdeling, uzelf "
        "als 'resident'). expected_by en service_promise zijn de verwachte afhandeldatum en de "
        "toezegging.",
        "case_notes": "case_notes zijn de interne notities die medewerkers van de gemeente en externe "
        "partijen bij de behandeling van de zaak schreven (bewaard door de zaakbehandeling, "
        "routing), in volgorde: wanneer (at), bij welke stap (kind, bijvoorbeeld een statuswijziging 'transition', "
        "een notitie 'note', een andere afdeling 'assignment', een bericht van een partner 'update'), "
        "de status daarna (status), wie (actor: de afdeling of partij, nooit een naam) en de notitie "
        "(note). Ze zijn niet voor u geschreven en kunnen gegevens over anderen bevatten: de "
        "functionaris gegevensbescherming controleert ze daarop, en maakt die onleesbaar, voordat "
        "dit overzicht wordt verstuurd (AVG artikel 15, lid 4). Een lege lijst: de melding heeft "
        "(nog) geen zaak, de zaak heeft geen interne notities, of ze zijn verwijderd toen uw "
        "gegevens op uw verzoek werden gewist (zie erased_at).",
        "mails": "mails zijn de e-mails die de berichtendienst van de gemeente (notifier) u over "
        "deze melding stuurde, of wilde sturen, in volgorde: wanneer het bericht werd klaargezet "
        "(created_at), welk bericht (template: 'acknowledgement' de ontvangstbevestiging met uw "
        "volgcode, 'status_update' een nieuwe status, 'resolution' de melding is afgehandeld, met de "
        "vraag of u tevreden bent, 'reopening' de melding is heropend), hoe het ging (status: "
        "'delivered' afgegeven aan de mailserver, 'failed' niet gelukt na herhaalde pogingen, "
        "'skipped' niet verstuurd, bijvoorbeeld omdat u geen toestemming of geen e-mailadres gaf of "
        "uw gegevens waren gewist, 'scheduled' of 'sending' nog niet verstuurd), wanneer het werd "
        "afgegeven (delivered_at) en na hoeveel pogingen (attempts). Of een bericht in uw postvak "
        "aankwam, kan de berichtendienst niet zien. Uw e-mailadres staat er niet bij: de "
        "berichtendienst vraagt het pas bij het versturen op bij het meldingensysteem en bewaart het "
        "niet, en de tekst van het bericht bewaart zij evenmin (die kwam uit de gegevens hierboven: "
        "volgcode, status en toelichting). Een lege lijst: er is u over deze melding geen e-mail "
        "gestuurd.",
        "recipients": "case_id is het zaaknummer bij de behandeling. responsible is de afdeling die "
        "verantwoordelijk is, departments zijn de afdelingen die de zaak bereikte en partners de "
        "externe partijen naar wie de zaak is doorgestuurd: de ontvangers van de melding (zonder "
        "uw persoonsgegevens).",
        "attachments": "attachments zijn uw foto's en documenten: kenmerk, soort bestand, grootte, "
        "controlegetal (SHA-256) en wanneer ontvangen. Is file ingevuld, dan is het bestand zelf "
        "meegeleverd onder die naam; anders vraagt u het bij de gemeente op.",
        "feedback": "feedback is uw oordeel over de afhandeling: tevreden of niet, het cijfer (1 tot "
        "5), uw opmerking (bewaard zonder persoonsgegevens) en wanneer.",
        "erased_at": "erased_at is het moment waarop uw persoonsgegevens bij deze melding op uw "
        "verzoek zijn gewist (AVG artikel 17). Daarna bewaren wij alleen de tekst zonder "
        "persoonsgegevens, een afgeronde plaats (ongeveer 100 meter) en wat nodig is voor "
        "statistiek.",
        "conversations": "Gesprekken met het klantcontactcentrum (telefoon, chat) worden alleen "
        "zonder persoonsgegevens en zonder contactgegevens bewaard. Ze zijn niet aan u te koppelen "
        "en staan daarom niet in dit overzicht.",
        "other_services": "Andere onderdelen van het systeem bewaren: de zaakbehandeling (routing) de "
        "zaak, waarvan dit overzicht de interne notities (case_notes), de status, de afdelingen en "
        "de partners al bevat; de berichtendienst (notifier) welke e-mails u over de melding zijn "
        "gestuurd en wanneer, die dit overzicht ook al bevat (mails; uw adres vraagt zij pas op bij "
        "het versturen en bewaart zij niet); de indeling in onderwerpen (classifier) en de "
        "rapportages (insights) alleen de tekst zonder persoonsgegevens en tellingen.",
    },
    "en": {
        "document": "This answers your access request (GDPR article 15). It is a copy in a commonly "
        "used, machine-readable format (JSON, UTF-8; GDPR article 20) of everything the "
        "municipality's signal intake keeps about you with the signals listed. Times are in UTC.",
        "selected_by": "How your data was found: by the e-mail address or phone number in your "
        "contact details (every signal where you gave it), or by one signal's tracking code.",
        "signals": "For each signal: its id (signal_id), the tracking code you follow it with, its "
        "kind, channel, portal (source), when we received it (received_at) and when it happened "
        "according to you (occurred_at), its language, its current status and the topic we gave "
        "it (topic, subtopic).",
        "text": "text is your signal as you wrote it. text_redacted is the same text without "
        "personal data (e-mail addresses, phone numbers, addresses, your name): only that version "
        "goes to the other parts of the system.",
        "location": "location is the place as you gave it (coordinates and address); area and "
        "district are the neighbourhood and district we derived from it. metadata is what the "
        "portal sent along.",
        "contact": "contact is your name, e-mail address and phone number (kept encrypted), whether "
        "you agreed to be contacted about the signal (consent) and when you gave them. Empty when "
        "you gave none, or when they were deleted (on your request, or a set time after the case "
        "ended).",
        "status_history": "status_history is how the case went, in order, with the notes you saw on "
        "the tracking page and who made each step (actor: the department, yourself as "
        "'resident'). expected_by and service_promise are the expected date and the promise made.",
        "case_notes": "case_notes are the internal notes municipal staff and outside partners wrote "
        "while handling the case (kept by case handling, routing), in order: when (at), at which "
        "step (kind, e.g. a status change 'transition', a note 'note', another department 'assignment', "
        "a partner's message 'update'), the status after it (status), who (actor: the department "
        "or partner, never a name) and the note itself (note). They were not written for you and "
        "may hold data about other people: the data protection officer checks them for that, and "
        "makes it unreadable, before this document is sent (GDPR article 15(4)). An empty list: the "
        "signal has no case (yet), its case has no internal notes, or they were deleted when your "
        "data was erased on your request (see erased_at).",
        "mails": "mails are the e-mails the municipality's messaging service (notifier) sent you "
        "about this signal, or meant to send, in order: when the message was prepared "
        "(created_at), which message (template: 'acknowledgement' the confirmation with your "
        "tracking code, 'status_update' a new status, 'resolution' the signal was dealt with, "
        "asking whether you are satisfied, 'reopening' the signal was reopened), how it went "
        "(status: 'delivered' handed to the mail server, 'failed' not delivered after repeated "
        "tries, 'skipped' not sent, e.g. because you gave no consent or no e-mail address or your "
        "data was erased, 'scheduled' or 'sending' not sent yet), when it was handed over "
        "(delivered_at) and after how many tries (attempts). Whether a message reached your inbox "
        "the messaging service cannot see. Your e-mail address is not in it: the messaging service "
        "asks the signal intake for it only when sending and does not keep it, nor does it keep the "
        "message's text (which came from the data above: tracking code, status and note). An empty "
        "list: no e-mail was sent to you about this signal.",
        "recipients": "case_id is the case's number. responsible is the department responsible, "
        "departments are the departments the case reached and partners the outside parties it was "
        "forwarded to: the recipients of the signal (without your personal data).",
        "attachments": "attachments are your photos and documents: id, file type, size, checksum "
        "(SHA-256) and when received. When file is filled in, the file itself comes with this "
        "document under that name; otherwise ask the municipality for it.",
        "feedback": "feedback is your rating of how the case was handled: satisfied or not, the "
        "score (1 to 5), your comment (kept without personal data) and when.",
        "erased_at": "erased_at is when your personal data of this signal was erased on your request "
        "(GDPR article 17). After it we keep only the text without personal data, a rounded place "
        "(about 100 metres) and what statistics need.",
        "conversations": "Conversations with the contact centre (phone, chat) are kept only without "
        "personal data and without contact details. They cannot be linked to you and are therefore "
        "not in this document.",
        "other_services": "Other parts of the system keep: case handling (routing) the case, whose "
        "internal notes (case_notes), status, departments and partners this document holds "
        "already; the messaging service (notifier) which e-mails were sent to you about the signal "
        "and when, which this document holds too (mails; it asks for your address only when "
        "sending and does not keep it); topic classification (classifier) and reporting "
        "(insights) only the text without personal data, and counts.",
    },
}


#: The explanation's line of a document made without routing's notes (``case_notes_included``
#: false): the privacy officer must add them before it goes out.
CASE_NOTES_MISSING: dict[str, str] = {
    "nl": "Dit overzicht bevat de interne notities van de zaakbehandeling (routing) niet: "
    "case_notes_included is false en case_notes is bij elke melding leeg (null). De functionaris "
    "gegevensbescherming moet ze toevoegen voordat het overzicht wordt verstuurd.",
    "en": "This document does not hold case handling's (routing's) internal notes: "
    "case_notes_included is false and every signal's case_notes is null. The data protection "
    "officer must add them before the document is sent.",
}


#: The explanation's line of a document made without notifier's mails (``mails_included`` false).
MAILS_MISSING: dict[str, str] = {
    "nl": "Dit overzicht bevat de e-mails van de berichtendienst (notifier) niet: mails_included is "
    "false en mails is bij elke melding leeg (null). De functionaris gegevensbescherming moet ze "
    "toevoegen voordat het overzicht wordt verstuurd.",
    "en": "This document does not hold the messaging service's (notifier's) e-mails: "
    "mails_included is false and every signal's mails is null. The data protection officer must "
    "add them before the document is sent.",
}


#: Each part another service keeps: the flag that says the document holds it, and the
#: explanation's line (by language) when it does not.
_MISSING_PARTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("case_notes_included", "case_notes_missing", CASE_NOTES_MISSING),
    ("mails_included", "mails_missing", MAILS_MISSING),
)


def _explain(document: dict[str, Any]) -> None:
    """Set the document's explanation, with a line for each part another service keeps that it
    lacks, so that no reader takes it for complete."""
    document["explanation"] = {
        language: {
            **texts,
            **{line: words[language] for flag, line, words in _MISSING_PARTS if not document[flag]},
        }
        for language, texts in ACCESS_EXPLANATION.items()
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


def _summary(count: int, tenant: str) -> dict[str, str]:
    if count == 0:
        return {
            "nl": f"Het meldingensysteem van gemeente {tenant} bewaart bij deze zoekvraag geen "
            "gegevens over u.",
            "en": f"The signal intake of municipality {tenant} keeps no data about you for this search.",
        }
    return {
        "nl": f"Het meldingensysteem van gemeente {tenant} bewaart gegevens over u bij {count} "
        "melding(en); hieronder staat alles per melding.",
        "en": f"The signal intake of municipality {tenant} keeps data about you with {count} "
        "signal(s); all of it follows, signal by signal.",
    }


async def access_document(
    session: AsyncSession,
    cipher: FieldCipher,
    tenant: str,
    signal_ids: Sequence[str],
    *,
    selected_by: PersonSelector,
    selected_value: str,
    generated_at: datetime | None = None,
) -> dict[str, Any]:
    """What intake keeps about one person with these signals, as one JSON-serialisable document.

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
    dutch, english = _SELECTOR_LABELS[selected_by]
    document: dict[str, Any] = {
        "format": ACCESS_FORMAT,
        "tenant": tenant,
        "generated_at": rfc3339(generated_at or utcnow()),
        "selected_by": {"nl": dutch, "en": english, "value": selected_value},
        "summary": _summary(len(signals), tenant),
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
        document = await access_document(session, cipher, tenant, ids, selected_by=by, selected_value=value)
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
