"""The privacy API: a person's access and erasure requests (AVG articles 15, 17 and 20) over HTTP.

The same two operations as ``civicsignals-intake access`` and ``erase``, for the municipality's own
request workflow (its case system or privacy desk) instead of a shell in the cluster. Both take the
person in the body, never in the URL, so no e-mail address or phone number lands in an access log
or a proxy's; both need the scope ``privacy:admin`` (or ``admin``), and every signal read or erased
is audited under the caller's key id or person. The access document is personal data: its answer
says ``Cache-Control: no-store``. It holds parts two other services keep (routing's case notes,
notifier's mails): when either cannot be asked the answer is a 503 naming that part, never an
incomplete document.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response

from civicsignals.common.auth import Principal
from civicsignals.common.problems import Problem
from civicsignals.intake import accessparts, accessrequest, flows, privacy
from civicsignals.intake.access import authorised
from civicsignals.intake.models import (
    MAIL_RECORD_EXAMPLE,
    AccessDocumentPublic,
    ErasureCounts,
    ErasureOutcome,
    ErasureRequest,
    PersonSelection,
    PersonSignal,
)
from civicsignals.intake.views import AUTH_PROBLEMS, PROBLEM_SCHEMA, WRITE_PROBLEMS, problem

log = logging.getLogger(__name__)

PRIVACY_SCOPE = "privacy:admin"
PrivacyOfficer = Annotated[Principal, Depends(authorised(PRIVACY_SCOPE))]

router = APIRouter(tags=["privacy"])

SELECTION_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **AUTH_PROBLEMS,
    400: WRITE_PROBLEMS[400],
    413: WRITE_PROBLEMS[413],
    422: problem(
        422,
        "Not exactly one of email, phone and tracking_code, or one that is not valid",
        "Unprocessable Entity",
        "give exactly one of email, phone and tracking_code",
        "invalid-request",
        "/email",
    ),
}
NO_STORE = {"Cache-Control": "no-store"}
#: How long a caller waits before asking again when a part of the document cannot be had now.
PART_UNAVAILABLE_RETRY_S = 60


@dataclass(frozen=True)
class MissingPart:
    """How the API says that one service's part of the access document cannot be had now."""

    slug: str
    detail: str


#: The 503 of each service whose part of the document cannot be asked for, by service.
MISSING_PARTS: dict[str, MissingPart] = {
    accessparts.ROUTING: MissingPart(
        "case-notes-unavailable",
        "the case notes cannot be added now: routing, which keeps them, could not be asked "
        "(see intake's log); try again in a minute",
    ),
    accessparts.NOTIFIER: MissingPart(
        "mail-record-unavailable",
        "the mail record cannot be added now: notifier, which keeps which e-mails were sent about "
        "the person's signals, could not be asked (see intake's log); try again in a minute",
    ),
}


def _unavailable_problems() -> dict[str, Any]:
    """The 503 in the OpenAPI document, with an example for each part that may be missing."""
    examples = {
        part.slug: {
            "summary": f"{service} cannot be asked",
            "value": problem(503, "", "Service Unavailable", part.detail, part.slug)["content"][
                "application/problem+json"
            ]["example"],
        }
        for service, part in MISSING_PARTS.items()
    }
    return {
        "description": "Routing (the internal notes of the person's cases) or notifier (the e-mails "
        "sent about their signals) cannot be asked now (see Retry-After); nothing was read or audited",
        "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA, "examples": examples}},
    }


ACCESS_PROBLEMS: dict[int | str, dict[str, Any]] = {**SELECTION_PROBLEMS, 503: _unavailable_problems()}


def _context(request: Request) -> flows.IntakeContext:
    context: flows.IntakeContext = request.app.state.intake
    return context


async def person_document(
    ctx: flows.IntakeContext, officer: Principal, by: privacy.PersonSelector, value: str
) -> dict[str, Any]:
    """A person's access document with routing's notes of their cases and notifier's record of
    the mails sent about their signals, its reads audited under ``officer`` (the API and the
    privacy desk). :class:`accessparts.PartUnavailable` (``service`` names routing or notifier)
    when either cannot be asked: then nothing was audited, and the caller answers that it cannot
    answer now."""
    try:
        return await accessrequest.answer_access_request(
            ctx.runtime.sessions,
            ctx.cipher,
            officer.tenant,
            by,
            value,
            actor=officer.actor,
            case_notes=accessparts.routing(ctx.http, ctx.settings, ctx.runtime.tenants),
            mails=accessparts.notifier(ctx.http, ctx.settings, ctx.runtime.tenants),
            tenant_config=ctx.tenant(officer.tenant),
        )
    except accessparts.PartUnavailable as missing:
        log.warning("no access document: %s's part is unavailable (%s)", missing.service, missing)
        raise


async def erase_person(
    ctx: flows.IntakeContext,
    officer: Principal,
    by: privacy.PersonSelector,
    value: str,
    *,
    dry_run: bool,
    confirmed: Collection[str] | None = None,
    proof: str | None = None,
) -> privacy.PersonErasure:
    """A person's erasure (or, ``dry_run``, what it would erase) by ``officer`` (the API and the
    privacy desk), of exactly the ``confirmed`` signals when given (:func:`privacy.erase_person`),
    with the desk's step-up ``proof`` in the audit records; the outbox relay is woken for the
    ``signal.erased`` events it committed."""
    outcome = await privacy.erase_person(
        ctx.runtime.sessions,
        ctx.cipher,
        officer.tenant,
        by,
        value,
        actor=officer.actor,
        attachments_dir=ctx.settings.attachments_dir,
        dry_run=dry_run,
        confirmed=confirmed,
        proof=proof,
    )
    if outcome.erased is not None and outcome.erased.signals:
        ctx.runtime.events_committed()
    return outcome


def person_of(selection: PersonSelection) -> tuple[privacy.PersonSelector, str]:
    """The one way the body selects the person; 422 naming the fields when it is not exactly one."""
    offered: tuple[tuple[privacy.PersonSelector, str | None], ...] = (
        ("email", selection.email),
        ("phone", selection.phone),
        ("tracking_code", selection.tracking_code),
    )
    given = [(field, value) for field, value in offered if value is not None]
    if len(given) == 1:
        return given[0]
    named = [field for field, _ in given] or ["email", "phone", "tracking_code"]
    raise Problem(
        422,
        "give exactly one of email, phone and tracking_code",
        slug="invalid-request",
        errors=[{"pointer": f"/{field}", "detail": "give exactly one of these fields"} for field in named],
    )


@router.post(
    "/v1/privacy/access",
    response_model=AccessDocumentPublic,
    summary="A person's access request: everything intake keeps with their signals, the internal "
    "notes routing keeps of their cases and the e-mails notifier sent about them (AVG art. 15, 20)",
    responses={
        200: {
            "description": "The person's document (no signals when intake keeps nothing of them)",
            "content": {
                "application/json": {
                    "example": {
                        "format": accessrequest.ACCESS_FORMAT,
                        "tenant": "demo",
                        "generated_at": "2026-12-06T21:04:11Z",
                        "selected_by": {
                            "nl": "e-mailadres",
                            "en": "e-mail address",
                            "value": "bewoner@example.org",
                        },
                        "summary": {"nl": "…", "en": "…"},
                        "explanation": {
                            "nl": {"document": "…", "case_notes": "…"},
                            "en": {"document": "…", "case_notes": "…"},
                        },
                        "signal_count": 1,
                        "case_notes_included": True,
                        "mails_included": True,
                        "signals": [
                            {
                                "signal_id": "01JDX3W6Q5TB7V0N8K2M4R6P9S",
                                "tracking_code": "7KQ2-M9XD-4HTC",
                                "status": "in_progress",
                                "status_history": [
                                    {
                                        "sequence": 1,
                                        "status": "in_progress",
                                        "at": "2026-11-28T10:00:00Z",
                                        "note": "De ploeg komt donderdag.",
                                        "actor": "stadsbeheer",
                                    }
                                ],
                                "case_id": "01JDX3W7A1K8M2N4P6Q8R0S2T4",
                                "case_notes": [
                                    {
                                        "at": "2026-11-28T10:05:00Z",
                                        "kind": "note",
                                        "status": "in_progress",
                                        "actor": "stadsbeheer",
                                        "note": "Mevrouw belde terug, komt donderdag kijken.",
                                    }
                                ],
                                "mails": MAIL_RECORD_EXAMPLE,
                            }
                        ],
                    }
                }
            },
        },
        **ACCESS_PROBLEMS,
    },
)
async def access_request(
    selection: PersonSelection, principal: PrivacyOfficer, request: Request, response: Response
) -> dict[str, Any]:
    """The document ``civicsignals-intake access`` writes (without the attachment files: a key
    with ``cases:read`` fetches them at ``GET /v1/signals/{signal_id}/attachments/{attachment_id}``),
    with the internal notes routing keeps of the person's cases and the e-mails notifier sent
    about their signals, which intake asks each service for with its own service key. Each
    signal's read is audited as ``person.access`` before the answer is sent. When routing or
    notifier cannot be asked the answer is a 503 naming that part (``case-notes-unavailable``,
    ``mail-record-unavailable``), never a document without it, and no read is audited: nothing
    left intake."""
    by, value = person_of(selection)
    try:
        document = await person_document(_context(request), principal, by, value)
    except accessparts.PartUnavailable as missing:
        part = MISSING_PARTS[missing.service]
        raise Problem(
            503,
            part.detail,
            slug=part.slug,
            headers={"Retry-After": str(PART_UNAVAILABLE_RETRY_S)},
        ) from None
    response.headers.update(NO_STORE)
    return document


@router.post(
    "/v1/privacy/erasure",
    response_model=ErasureOutcome,
    summary="A person's erasure request (AVG art. 17); the other services follow by signal.erased",
    responses={
        200: {
            "description": "The signals found and, unless ``dry_run``, erased",
            "content": {
                "application/json": {
                    "example": {
                        "dry_run": False,
                        "signals": [
                            {
                                "signal_id": "01JDX3W6Q5TB7V0N8K2M4R6P9S",
                                "tracking_code": "7KQ2-M9XD-4HTC",
                                "received_at": "2026-11-28T09:00:03Z",
                                "erased_before": None,
                            }
                        ],
                        "erased": {"signals": 1, "contacts": 1, "attachment_files": 2},
                    }
                }
            },
        },
        **SELECTION_PROBLEMS,
        409: problem(
            409,
            "The person's signals are no longer exactly the signal_ids confirmed: nothing was erased; "
            "the answer lists them as they are now",
            "Conflict",
            "the person's signals changed since they were confirmed: nothing was erased; check them again",
            "signals-changed",
        ),
    },
)
async def erasure_request(
    body: ErasureRequest, principal: PrivacyOfficer, request: Request, response: Response
) -> ErasureOutcome:
    """Erases as ``civicsignals-intake erase --yes`` does, in one transaction with the
    ``signal.erased`` events; with ``dry_run`` it only lists the signals. Asking again is safe:
    an erased signal is found again only by its tracking code, and erasing it again changes
    nothing that was left. With ``signal_ids`` (the dry run's list, as the officer confirmed it)
    it erases only when the person's signals are exactly those: else 409 with the list as it is
    now, and nothing erased."""
    by, value = person_of(body)
    outcome = await erase_person(
        _context(request), principal, by, value, dry_run=body.dry_run, confirmed=body.signal_ids
    )
    response.headers.update(NO_STORE)
    signals = [
        PersonSignal(
            signal_id=signal.id,
            tracking_code=signal.tracking_code,
            received_at=signal.received_at,
            erased_before=signal.erased_at,
        )
        for signal in outcome.signals
    ]
    if outcome.changed:
        raise Problem(
            409,
            "the person's signals changed since they were confirmed: nothing was erased; check them again",
            slug="signals-changed",
            headers=dict(NO_STORE),
            signals=[signal.model_dump(mode="json") for signal in signals],
        )
    return ErasureOutcome(
        dry_run=body.dry_run,
        signals=signals,
        erased=None
        if outcome.erased is None
        else ErasureCounts(
            signals=outcome.erased.signals,
            contacts=outcome.erased.contacts,
            attachment_files=outcome.erased.attachments,
        ),
    )
