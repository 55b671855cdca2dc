"""Intake's HTTP routes: thin, they validate, authorise and call flows/service."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request, Response

from civicsignals.common.auth import Principal, scope_dependency
from civicsignals.common.ids import normalise_tracking_code
from civicsignals.common.problems import Problem
from civicsignals.intake import flows, service
from civicsignals.intake.models import ContactPublic, SignalCreate, SignalCreated, TrackingPublic

SignalWriter = Annotated[Principal, Depends(scope_dependency("signals:write"))]
ContactReader = Annotated[Principal, Depends(scope_dependency("contact:read"))]

PROBLEM_RESPONSES: dict[int | str, dict[str, object]] = {
    400: {"description": "Malformed request (problem+json)"},
    401: {"description": "Missing or invalid API key (problem+json)"},
    403: {"description": "The key lacks the scope (problem+json)"},
    413: {"description": "Body too large (problem+json)"},
    422: {"description": "Invalid fields, with a JSON pointer per field (problem+json)"},
}

router = APIRouter()


def _context(request: Request) -> flows.IntakeContext:
    context: flows.IntakeContext = request.app.state.intake
    return context


@router.post(
    "/v1/signals",
    status_code=201,
    response_model=SignalCreated,
    tags=["signals"],
    summary="Post a signal from a portal or app",
    responses={**PROBLEM_RESPONSES, 409: {"description": "Same Idempotency-Key still in flight"}},
)
async def post_signal(
    payload: SignalCreate,
    principal: SignalWriter,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> SignalCreated:
    """Store a resident's signal; it is classified, routed and acknowledged from here on.

    The same `Idempotency-Key` with the same body replays the first response; with another body
    it is a 422; while the first request is still in flight it is a 409.
    """
    created, replayed = await flows.receive_signal_once(
        _context(request), principal.tenant, payload, source=principal.actor, idempotency_key=idempotency_key
    )
    response.headers["Location"] = f"/v1/signals/{created.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return created


@router.get(
    "/v1/tracking/{tracking_code}",
    response_model=TrackingPublic,
    tags=["tracking"],
    summary="Public status of a signal, by its tracking code",
    responses={404: {"description": "No signal has this code (problem+json)"}},
)
async def get_tracking(tracking_code: str, request: Request) -> TrackingPublic:
    """Public: anyone with the code sees the status and its history, never personal data."""
    code = normalise_tracking_code(tracking_code)
    async with _context(request).runtime.sessions() as session:
        signal = await service.find_by_tracking_code(session, code)
        if signal is None:
            raise Problem(404, "no signal has this tracking code", slug="unknown-tracking-code")
        return await service.tracking_view(session, signal)


@router.get(
    "/v1/signals/{signal_id}/contact",
    response_model=ContactPublic,
    tags=["internal"],
    summary="A reporter's contact data, for notifier (audited)",
    responses={404: {"description": "No contact for this signal (problem+json)"}},
)
async def get_contact(signal_id: str, principal: ContactReader, request: Request) -> ContactPublic:
    """Service-to-service only: every read is recorded in the audit log, found or not."""
    ctx = _context(request)
    async with ctx.runtime.sessions() as session, session.begin():
        contact = await service.read_contact(
            session, ctx.cipher, principal.tenant, signal_id, principal.actor
        )
    if contact is None:
        raise Problem(404, "no contact data is kept for this signal", slug="no-contact")
    return contact
