"""Staff's internal notes of a person's cases, asked of routing for the access document (AVG art. 15).

Routing owns the cases; each step of a case's history may carry an ``internal_note`` that staff or
a partner wrote freely ("mevrouw belde terug op 06-..."), never redacted. Those notes are personal
data about the resident, so the access document must hold them. Intake asks routing for each case
over HTTP (``GET {routing_url}/v1/cases/{case_id}``) with its own service key for the tenant (the
file ``caseupdates.service_key`` reads; the key needs ``cases:read``), on behalf of the privacy
officer whose request intake audits.

When routing cannot be asked (no key, unreachable, refused, a 5xx) :class:`CaseNotesUnavailable`
is raised, saying where and why: the caller must not leave the notes out silently, and reports it
(the API logs it and answers 503, the command prints it). A case routing does not know (404:
deleted) has no notes, with a warning of its id. Nothing here logs a note's text or a person's data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from civicsignals.intake import caseupdates

if TYPE_CHECKING:
    from civicsignals.intake.flows import IntakeContext

log = logging.getLogger(__name__)

#: How many cases are asked for at once: a person has few signals, routing need not see a burst.
CONCURRENCY = 8


@dataclass(frozen=True)
class RoutingCases:
    """Where and how intake asks routing for cases: the HTTP client, routing's base URL and the
    folder of intake's service keys (one file per tenant)."""

    client: httpx.AsyncClient
    routing_url: str
    keys_dir: Path

    @classmethod
    def of(cls, ctx: IntakeContext) -> RoutingCases:
        """The running service's way to routing: its pooled client and its settings."""
        return cls(ctx.http, ctx.settings.routing_url, ctx.settings.service_keys_dir)

    def case_url(self, case_id: str) -> str:
        return f"{self.routing_url.rstrip('/')}/v1/cases/{case_id}"


class CaseNotesUnavailable(RuntimeError):
    """Routing could not be asked for a case's notes; the document would be incomplete.

    ``url`` is what intake tried (or would have tried, when it has no key), ``reason`` says why in
    words an operator can act on; neither holds a person's data.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"routing at {url}: {reason}")
        self.url = url
        self.reason = reason


#: One internal note as the access document shows it (see ``accessrequest``).
CaseNote = dict[str, Any]


async def case_notes(source: RoutingCases, tenant: str, case_ids: Iterable[str]) -> dict[str, list[CaseNote]]:
    """The internal notes of each case, by case id, in history order; raises
    :class:`CaseNotesUnavailable` when any case cannot be asked for (all or nothing: a document
    with some cases' notes and not others' would look complete)."""
    unique = list(dict.fromkeys(case_ids))
    if not unique:
        return {}
    key = _service_key(source, tenant, source.case_url(unique[0]))
    gate = asyncio.Semaphore(CONCURRENCY)

    async def _one(case_id: str) -> list[CaseNote]:
        async with gate:
            return await _notes_of_case(source, key, case_id)

    # A task group, not gather: the first failure cancels the other calls, so none is left
    # running on a client its caller is about to close.
    try:
        async with asyncio.TaskGroup() as group:
            tasks = {case_id: group.create_task(_one(case_id)) for case_id in unique}
    except* CaseNotesUnavailable as failed:
        raise failed.exceptions[0] from None
    return {case_id: task.result() for case_id, task in tasks.items()}


def _service_key(source: RoutingCases, tenant: str, url: str) -> str:
    """Intake's key for routing, as the updates read it; a missing or empty file is the caller's
    to report (with the scopes the key needs), not a second message in the log."""
    key = caseupdates.stored_service_key(source.keys_dir, tenant)
    if key is None:
        raise CaseNotesUnavailable(
            url,
            f"intake has no service key for routing at {source.keys_dir / tenant} "
            "(scopes cases:read and cases:write)",
        )
    return key


async def _notes_of_case(source: RoutingCases, key: str, case_id: str) -> list[CaseNote]:
    url = source.case_url(case_id)
    try:
        response = await source.client.get(url, headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        raise CaseNotesUnavailable(url, f"no answer ({type(exc).__name__})") from None
    if response.status_code == 404:
        log.warning("routing does not know case %s: the access document shows no notes of it", case_id)
        return []
    if response.status_code in (401, 403):
        raise CaseNotesUnavailable(
            url, f"refused intake's service key (HTTP {response.status_code}); it needs cases:read"
        )
    if not response.is_success:
        raise CaseNotesUnavailable(url, f"answered HTTP {response.status_code}")
    try:
        body = response.json()
        history = body["history"]
        return notes_of_history(history)
    except (ValueError, KeyError, TypeError):
        raise CaseNotesUnavailable(url, "answered something that is not a case with its history") from None


def notes_of_history(history: Iterable[Mapping[str, Any]]) -> list[CaseNote]:
    """The steps of a case's history (routing's ``CaseDetail.history``) that carry an internal
    note, in history order: when, what kind of step, the status after it, who (a role or
    department, never a name) and the note. A note routing dropped on erasure is null: left out."""
    return [
        {
            "at": _utc(entry["at"]),
            "kind": entry.get("kind"),
            "status": entry.get("to_status"),
            "actor": entry.get("actor"),
            "note": entry["internal_note"],
        }
        for entry in sorted(history, key=lambda entry: int(entry["sequence"]))
        if entry.get("internal_note") is not None
    ]


def _utc(value: str) -> str:
    """Routing's time in the document's form (RFC 3339 UTC with ``Z``), whatever zone it wrote."""
    parsed = datetime.fromisoformat(value)
    aware = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")
