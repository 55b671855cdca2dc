"""Staff's internal notes of a person's cases, asked of routing for the access document (AVG art. 15).

Routing owns the cases; each step of a case's history may carry an ``internal_note`` that staff or
a partner wrote freely ("mevrouw belde terug op 06-..."), never redacted. Those notes are personal
data about the resident, so the access document must hold them. Intake asks routing for each case
(``GET {routing_url}/v1/cases/{case_id}``) the way it asks every service for its part of the
document (:mod:`civicsignals.intake.accessparts`: intake's service key, all or nothing, a
:class:`~civicsignals.intake.accessparts.PartUnavailable` naming routing when it cannot be asked).
A case routing does not know (404: deleted) has no notes, with a warning of its id. Nothing here
logs a note's text or a person's data.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from civicsignals.intake.accessparts import OtherService, PartUnavailable, utc_text

log = logging.getLogger(__name__)

#: The name the privacy desk catches when the document cannot be made now (``privacy_desk``).
#: It is the failure of every part another service keeps, routing's notes and notifier's mails
#: alike; ``service`` says which.
CaseNotesUnavailable = PartUnavailable

#: One internal note as the access document shows it (see ``accessrequest``).
CaseNote = dict[str, Any]


async def case_notes(
    routing: OtherService, tenant: str, case_ids: Iterable[str]
) -> dict[str, list[CaseNote]]:
    """The internal notes of each case, by case id, in history order; raises
    :class:`~civicsignals.intake.accessparts.PartUnavailable` when any case cannot be asked for."""

    async def _notes_of_case(key: str, case_id: str) -> list[CaseNote]:
        url = routing.url(f"/v1/cases/{case_id}")
        case = await routing.get_json(key, url, absent_is_none=True)
        if case is None:
            log.warning("routing does not know case %s: the access document shows no notes of it", case_id)
            return []
        try:
            return notes_of_history(case["history"])
        except (ValueError, KeyError, TypeError):
            raise routing.unavailable(url, "answered something that is not a case with its history") from None

    return await routing.ask_each(tenant, case_ids, _notes_of_case)


def notes_of_history(history: Iterable[Mapping[str, Any]]) -> list[CaseNote]:
    """The steps of a case's history (routing's ``CaseDetail.history``) that carry an internal
    note, in history order: when, what kind of step, the status after it, who (a role or
    department, never a name) and the note. A note routing dropped on erasure is null: left out."""
    return [
        {
            "at": utc_text(entry["at"]),
            "kind": entry.get("kind"),
            "status": entry.get("to_status"),
            "actor": entry.get("actor"),
            "note": entry["internal_note"],
        }
        for entry in sorted(history, key=lambda entry: int(entry["sequence"]))
        if entry.get("internal_note") is not None
    ]
