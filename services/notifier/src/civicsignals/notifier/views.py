"""Notifier's HTTP routes: the partner registry, the delivery log, template previews.

Every route needs the scope ``rules:admin`` (or ``admin``) and sees only its own tenant's rows;
another tenant's partner or delivery answers exactly like a missing one. One exception: the
delivery log's listing also opens to ``cases:read``, for staff who ask "was the resident told?"
and for intake's access document (AVG art. 15): a key bound to no department one signal at a
time (``?signal=``), a key bound to departments the signals whose case they hold now
(:func:`refusal_of_log_reader`). A key bound to departments, whatever its scope (``admin``
aside, which sees every department's, DESIGN §3), sees in the log only the deliveries of the
signals whose case one of its departments holds now (:func:`log_limited_to`); any other delivery
answers like a missing one.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from civicsignals.common.auth import Principal, any_scope_dependency, scope_dependency
from civicsignals.common.events import utcnow
from civicsignals.common.problems import Problem
from civicsignals.notifier import flows, messages, service
from civicsignals.notifier.addresses import UnsafeEndpoint, check_endpoint
from civicsignals.notifier.flows import NotifierContext
from civicsignals.notifier.models import (
    AttemptPublic,
    Delivery,
    DeliveryDetail,
    DeliveryPage,
    DeliveryPublic,
    Endpoint,
    EndpointCreate,
    EndpointCreated,
    EndpointList,
    EndpointPublic,
    EndpointUpdate,
    Partner,
    PartnerCreate,
    PartnerList,
    PartnerPublic,
    PartnerUpdate,
    SecretRotated,
    SecretRotation,
    SignalLink,
    TemplateInfo,
    TemplateList,
    TemplatePreview,
    TemplatePreviewRequest,
)
from civicsignals.notifier.signing import InvalidSecret, generate_secret, secret_bytes

log = logging.getLogger(__name__)

ADMIN_SCOPE = "rules:admin"
#: The scope with which staff (and intake's service key) read one signal's deliveries, or a
#: department's staff the deliveries of the cases their departments hold.
CASE_READER_SCOPE = "cases:read"

Admin = Annotated[Principal, Depends(scope_dependency(ADMIN_SCOPE))]
LogReader = Annotated[Principal, Depends(any_scope_dependency(ADMIN_SCOPE, CASE_READER_SCOPE))]

partners_router = APIRouter(tags=["partners"])
deliveries_router = APIRouter(tags=["deliveries"])
templates_router = APIRouter(tags=["templates"])

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Not found (problem+json)"},
    409: {"description": "Conflict (problem+json)"},
    422: {"description": "Invalid fields, with a JSON pointer each (problem+json)"},
}


def _context(request: Request) -> NotifierContext:
    context: NotifierContext = request.app.state.notifier
    return context


def _partner_public(partner: Partner) -> PartnerPublic:
    return PartnerPublic.model_validate(partner, from_attributes=True)


async def _check_url(ctx: NotifierContext, url: str) -> None:
    try:
        await check_endpoint(url, allow_private=ctx.settings.allow_private_endpoints)
    except UnsafeEndpoint as exc:
        raise Problem(
            422,
            "the endpoint URL is not allowed",
            slug="invalid-request",
            errors=[{"pointer": "/url", "detail": str(exc)}],
        ) from None


def _check_secret(secret: str | None) -> str:
    if secret is None:
        return generate_secret()
    try:
        secret_bytes(secret)
    except InvalidSecret as exc:
        raise Problem(
            422,
            "the secret is not valid",
            slug="invalid-request",
            errors=[{"pointer": "/secret", "detail": str(exc)}],
        ) from None
    return secret


# --- partners ------------------------------------------------------------------------------------


@partners_router.post(
    "/v1/partners",
    status_code=201,
    response_model=PartnerPublic,
    summary="Register a partner",
    responses=_PROBLEMS,
)
async def create_partner(body: PartnerCreate, request: Request, principal: Admin) -> PartnerPublic:
    ctx = _context(request)
    tenant = ctx.runtime.tenants.get(principal.tenant)
    catalogue = service.partner_catalogue(tenant.folder if tenant else None)
    if catalogue is not None and body.code not in catalogue:
        raise Problem(
            422,
            "the tenant's partners.yaml does not define this partner",
            slug="invalid-request",
            errors=[
                {"pointer": "/code", "detail": f"known partners: {', '.join(sorted(catalogue)) or 'none'}"}
            ],
        )
    name = body.name or str((catalogue or {}).get(body.code, {}).get("name") or body.code)
    partner = Partner(
        tenant=principal.tenant,
        code=body.code,
        name=name,
        contact_email=str(body.contact_email) if body.contact_email else None,
        language=body.language,
    )
    async with ctx.runtime.sessions() as session:
        if await service.find_partner(session, principal.tenant, body.code) is not None:
            raise Problem(409, "a partner with this code is registered already", slug="partner-exists")
        session.add(partner)
        try:
            await session.commit()
        except IntegrityError:
            raise Problem(
                409, "a partner with this code is registered already", slug="partner-exists"
            ) from None
    return _partner_public(partner)


@partners_router.get("/v1/partners", response_model=PartnerList, summary="The tenant's partners")
async def list_partners(request: Request, principal: Admin) -> PartnerList:
    async with _context(request).runtime.sessions() as session:
        rows = (
            await session.exec(
                select(Partner).where(Partner.tenant == principal.tenant).order_by(col(Partner.code))
            )
        ).all()
    return PartnerList(items=[_partner_public(p) for p in rows])


async def _partner(ctx: NotifierContext, principal: Principal, partner: str) -> Partner:
    async with ctx.runtime.sessions() as session:
        found = await service.find_partner(session, principal.tenant, partner)
    if found is None:
        raise Problem(404, "no such partner", slug="unknown-partner")
    return found


@partners_router.get(
    "/v1/partners/{partner}",
    response_model=PartnerPublic,
    summary="One partner (by id or code)",
    responses=_PROBLEMS,
)
async def get_partner(partner: str, request: Request, principal: Admin) -> PartnerPublic:
    return _partner_public(await _partner(_context(request), principal, partner))


@partners_router.patch(
    "/v1/partners/{partner}", response_model=PartnerPublic, summary="Change a partner", responses=_PROBLEMS
)
async def update_partner(
    partner: str, body: PartnerUpdate, request: Request, principal: Admin
) -> PartnerPublic:
    ctx = _context(request)
    found = await _partner(ctx, principal, partner)
    async with ctx.runtime.sessions() as session, session.begin():
        row = await session.get(Partner, found.id)
        assert row is not None
        changes = body.model_dump(exclude_unset=True)
        for key, value in changes.items():
            setattr(row, key, str(value) if key == "contact_email" and value is not None else value)
        row.updated_at = utcnow()
        session.add(row)
    return _partner_public(row)


# --- endpoints -----------------------------------------------------------------------------------


async def _endpoint(ctx: NotifierContext, principal: Principal, partner: str, endpoint_id: str) -> Endpoint:
    owner = await _partner(ctx, principal, partner)
    async with ctx.runtime.sessions() as session:
        endpoint = await session.get(Endpoint, endpoint_id)
    if endpoint is None or endpoint.partner_id != owner.id:
        raise Problem(404, "no such endpoint", slug="unknown-endpoint")
    return endpoint


@partners_router.post(
    "/v1/partners/{partner}/endpoints",
    status_code=201,
    response_model=EndpointCreated,
    summary="Register a webhook endpoint; the answer holds its secret, once",
    responses=_PROBLEMS,
)
async def create_endpoint(
    partner: str, body: EndpointCreate, request: Request, principal: Admin
) -> EndpointCreated:
    ctx = _context(request)
    owner = await _partner(ctx, principal, partner)
    secret = _check_secret(body.secret)
    await _check_url(ctx, body.url)
    now = utcnow()
    endpoint = Endpoint(
        tenant=principal.tenant,
        partner_id=owner.id,
        url=body.url,
        event_types=body.event_types,
        enabled=body.enabled,
    )
    endpoint.secrets = [service.secret_entry(ctx.box, endpoint.id, secret, now)]
    async with ctx.runtime.sessions() as session, session.begin():
        session.add(endpoint)
    return EndpointCreated(**service.endpoint_public(endpoint, now).model_dump(), secret=secret)


@partners_router.get(
    "/v1/partners/{partner}/endpoints", response_model=EndpointList, summary="A partner's endpoints"
)
async def list_endpoints(partner: str, request: Request, principal: Admin) -> EndpointList:
    ctx = _context(request)
    owner = await _partner(ctx, principal, partner)
    async with ctx.runtime.sessions() as session:
        rows = await service.endpoints_of(session, owner.id)
    now = utcnow()
    return EndpointList(items=[service.endpoint_public(row, now) for row in rows])


@partners_router.get(
    "/v1/partners/{partner}/endpoints/{endpoint_id}",
    response_model=EndpointPublic,
    summary="One endpoint",
    responses=_PROBLEMS,
)
async def get_endpoint(partner: str, endpoint_id: str, request: Request, principal: Admin) -> EndpointPublic:
    endpoint = await _endpoint(_context(request), principal, partner, endpoint_id)
    return service.endpoint_public(endpoint, utcnow())


@partners_router.patch(
    "/v1/partners/{partner}/endpoints/{endpoint_id}",
    response_model=EndpointPublic,
    summary="Change an endpoint: URL, event types, enabled (true re-enables a disabled one)",
    responses=_PROBLEMS,
)
async def update_endpoint(
    partner: str, endpoint_id: str, body: EndpointUpdate, request: Request, principal: Admin
) -> EndpointPublic:
    ctx = _context(request)
    found = await _endpoint(ctx, principal, partner, endpoint_id)
    if body.url is not None:
        await _check_url(ctx, body.url)
    now = utcnow()
    told = 0
    async with ctx.runtime.sessions() as session, session.begin():
        row = await session.get(Endpoint, found.id)
        assert row is not None
        enabled_again = bool(body.enabled) and not row.enabled
        service.change_endpoint(row, body, now)
        session.add(row)
        if enabled_again:
            owner = await session.get(Partner, row.partner_id)
            if owner is not None:
                told = await flows.tell_missed_erasures(ctx, session, owner, row)
    if told:
        ctx.wake()
    return service.endpoint_public(row, now)


@partners_router.delete(
    "/v1/partners/{partner}/endpoints/{endpoint_id}",
    status_code=204,
    summary="Remove an endpoint",
    responses=_PROBLEMS,
)
async def delete_endpoint(partner: str, endpoint_id: str, request: Request, principal: Admin) -> Response:
    ctx = _context(request)
    found = await _endpoint(ctx, principal, partner, endpoint_id)
    async with ctx.runtime.sessions() as session, session.begin():
        row = await session.get(Endpoint, found.id)
        if row is not None:
            await session.delete(row)
    return Response(status_code=204)


@partners_router.post(
    "/v1/partners/{partner}/endpoints/{endpoint_id}/rotate-secret",
    response_model=SecretRotated,
    summary="A new signing secret; the previous one stays valid for overlap_s (default a day)",
    responses=_PROBLEMS,
)
async def rotate_secret(
    partner: str, endpoint_id: str, request: Request, principal: Admin, body: SecretRotation | None = None
) -> SecretRotated:
    ctx = _context(request)
    body = body or SecretRotation()
    found = await _endpoint(ctx, principal, partner, endpoint_id)
    secret = _check_secret(body.secret)
    overlap = body.overlap_s if body.overlap_s is not None else ctx.settings.secret_rotation_overlap_s
    now = utcnow()
    async with ctx.runtime.sessions() as session, session.begin():
        row = await session.get(Endpoint, found.id, with_for_update=True)
        assert row is not None
        valid_until = service.rotate_secret(row, ctx.box, secret, timedelta(seconds=overlap), now)
        session.add(row)
    return SecretRotated(secret=secret, previous_valid_until=valid_until)


# --- the delivery log ----------------------------------------------------------------------------


def _delivery_public(row: Delivery) -> DeliveryPublic:
    return DeliveryPublic.model_validate(row, from_attributes=True)


#: Why a ``cases:read`` key bound to no department must name the signal: it may ask about a case
#: it handles, not read the whole tenant's mail and webhook traffic.
SIGNAL_REQUIRED_REFUSAL = (
    "with cases:read the delivery log is read one signal at a time: "
    "give the signal query parameter (?signal=<signal id>)"
)


def log_limited_to(principal: Principal) -> frozenset[str]:
    """The departments whose cases' deliveries are all ``principal`` sees of the log; empty when
    it sees the tenant's whole log (as far as its scope lets it).

    A key bound to departments is limited to them everywhere (DESIGN §3), whatever its scope:
    routing lists it their cases, intake opens it their cases' photos, notifier shows it the
    deliveries of the signals whose case one of them holds now (``signal.routed``, then
    ``case.departments_changed``). ``admin`` sees every department's, as :meth:`Principal.sees_department`
    says and routing does."""
    if "admin" in principal.scopes:
        return frozenset()
    return frozenset(principal.departments)


def refusal_of_log_reader(principal: Principal, signal: str | None) -> str | None:
    """Why ``principal`` may not list deliveries with these filters, or None when it may.

    ``rules:admin`` (or ``admin``) reads the whole log, as before. ``cases:read`` bound to no
    department reads one signal's deliveries: staff asking "was the resident told?", and intake's
    service key for a person's access document. ``cases:read`` bound to departments lists the
    deliveries of their cases, with or without ``signal``: the listing is limited to them
    (:func:`log_limited_to`), so it cannot read the tenant's traffic at large."""
    if principal.allows(ADMIN_SCOPE) or log_limited_to(principal):
        return None
    if not (signal or "").strip():
        return SIGNAL_REQUIRED_REFUSAL
    return None


def _forbidden_example(detail: str) -> dict[str, Any]:
    return {
        "value": {
            "type": "https://civicsignals.nl/problems/forbidden",
            "title": "Forbidden",
            "status": 403,
            "detail": detail,
        }
    }


_LOG_EXAMPLE = {
    "items": [
        {
            "id": "01KBK7Q2M4N6P8R0S2T4V6W8X0",
            "message_id": "msg_q3k7j2b9x4w1",
            "channel": "email",
            "template": "acknowledgement",
            "event_id": "01KBH6Y3C9D1E3F5G7H9J1K3M5",
            "event_type": "nl.civicsignals.signal.routed.v1",
            "signal_id": "01KBH6Y3A7B9C1D3E5F7G9H1J3",
            "case_id": "01KBH6Y3C2D4E6F8G0H2J4K6M8",
            "partner": None,
            "partner_id": None,
            "endpoint_id": None,
            "status": "delivered",
            "status_reason": None,
            "attempts": 1,
            "next_attempt_at": None,
            "last_status_code": None,
            "last_error": None,
            "created_at": "2026-11-28T09:14:04Z",
            "delivered_at": "2026-11-28T09:14:05Z",
        }
    ],
    "next_cursor": None,
}


@deliveries_router.get(
    "/v1/deliveries",
    response_model=DeliveryPage,
    summary="The delivery log, newest first (rules:admin; cases:read for one signal or a department's cases)",
    description="Every delivery of the tenant (``rules:admin``), or one signal's (``cases:read``, "
    "with ``signal``): channel, template, status, attempts and times; never an address, URL or "
    "body. A key bound to departments (``cases:read`` or ``rules:admin``; with or without "
    "``signal``) lists only the deliveries of signals whose case one of its departments holds "
    "now: a signal they do not hold (or no longer hold, or whose departments notifier never "
    "learnt) lists nothing, exactly as an unknown one.",
    responses={
        200: {
            "description": "A page of deliveries; ``next_cursor`` asks for the next one",
            "content": {"application/json": {"example": _LOG_EXAMPLE}},
        },
        403: {
            "description": "The key has neither rules:admin nor cases:read; or, with cases:read only "
            "and bound to no department, no signal was named (problem+json)",
            "content": {
                "application/problem+json": {
                    "examples": {
                        "no-signal": _forbidden_example(SIGNAL_REQUIRED_REFUSAL),
                        "no-scope": _forbidden_example(
                            "this key lacks one of the scopes 'rules:admin', 'cases:read'"
                        ),
                    }
                }
            },
        },
        422: _PROBLEMS[422],
    },
)
async def list_deliveries(
    request: Request,
    principal: LogReader,
    partner: Annotated[str | None, Query(max_length=64, description="partner code or id")] = None,
    status: Annotated[str | None, Query(pattern=r"^(scheduled|sending|delivered|failed|skipped)$")] = None,
    signal: Annotated[
        str | None,
        Query(
            max_length=64,
            description="signal id; required with cases:read (without rules:admin) for a key bound "
            "to no department",
            examples=["01KBH6Y3A7B9C1D3E5F7G9H1J3"],
        ),
    ] = None,
    channel: Annotated[str | None, Query(pattern=r"^(email|webhook)$")] = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeliveryPage:
    refusal = refusal_of_log_reader(principal, signal)
    if refusal is not None:
        log.info("auth: %s may not list deliveries so: %s", principal.actor, refusal)
        raise Problem(403, refusal, slug="forbidden")
    async with _context(request).runtime.sessions() as session:
        rows, next_cursor = await service.list_deliveries(
            session,
            principal.tenant,
            partner=partner,
            status=status,
            signal=signal,
            channel=channel,
            cursor=cursor,
            limit=limit,
            held_by=log_limited_to(principal),
        )
    return DeliveryPage(items=[_delivery_public(row) for row in rows], next_cursor=next_cursor)


async def _delivery(ctx: NotifierContext, principal: Principal, delivery_id: str) -> Delivery:
    """The delivery, when ``principal`` may see it: of its tenant and, for a key bound to
    departments, of a signal whose case one of them holds now; otherwise a 404, as for a delivery
    that does not exist (the same rule as the listing)."""
    departments = log_limited_to(principal)
    async with ctx.runtime.sessions() as session:
        row = await session.get(Delivery, delivery_id)
        link = (
            await session.get(SignalLink, row.signal_id)
            if departments and row is not None and row.signal_id is not None
            else None
        )
    if row is None or row.tenant != principal.tenant:
        raise Problem(404, "no such delivery", slug="unknown-delivery")
    if departments and not (
        link is not None and link.tenant == row.tenant and service.held_by_any(link.holders, departments)
    ):
        raise Problem(404, "no such delivery", slug="unknown-delivery")
    return row


@deliveries_router.get(
    "/v1/deliveries/{delivery_id}",
    response_model=DeliveryDetail,
    summary="One delivery with every attempt",
    responses=_PROBLEMS,
)
async def get_delivery(delivery_id: str, request: Request, principal: Admin) -> DeliveryDetail:
    ctx = _context(request)
    row = await _delivery(ctx, principal, delivery_id)
    async with ctx.runtime.sessions() as session:
        attempts = await service.attempts_of(session, delivery_id)
    return DeliveryDetail(
        **_delivery_public(row).model_dump(by_alias=False),
        attempt_log=[AttemptPublic.model_validate(a, from_attributes=True) for a in attempts],
    )


@deliveries_router.post(
    "/v1/deliveries/{delivery_id}/retry",
    status_code=202,
    response_model=DeliveryPublic,
    summary="Try a failed (or waiting) delivery again now, with the same webhook-id",
    responses=_PROBLEMS,
)
async def retry_delivery(delivery_id: str, request: Request, principal: Admin) -> DeliveryPublic:
    ctx = _context(request)
    await _delivery(ctx, principal, delivery_id)
    now = utcnow()
    async with ctx.runtime.sessions() as session, session.begin():
        row = await session.get(Delivery, delivery_id, with_for_update=True)
        assert row is not None
        if row.status not in ("failed", "scheduled"):
            raise Problem(409, f"a delivery that is {row.status} cannot be retried", slug="not-retryable")
        if row.channel == "webhook":
            endpoint = await session.get(Endpoint, row.endpoint_id) if row.endpoint_id else None
            if endpoint is None or not endpoint.enabled:
                raise Problem(
                    409, "the endpoint is disabled or removed; enable it first", slug="endpoint-disabled"
                )
        row.status, row.status_reason, row.next_attempt_at, row.updated_at = (
            "scheduled",
            "manual retry",
            now,
            now,
        )
        session.add(row)
    ctx.wake()
    return _delivery_public(row)


# --- templates -----------------------------------------------------------------------------------


@templates_router.get(
    "/v1/templates", response_model=TemplateList, summary="Message templates and their variables"
)
async def list_templates(request: Request, principal: Admin) -> TemplateList:
    book = _context(request).templates
    items = [
        TemplateInfo(name=name, language=language, source=book.source_of(principal.tenant, name, language))
        for name in messages.TEMPLATES
        for language in messages.languages_of(name)
    ]
    return TemplateList(items=items, variables=messages.TEMPLATE_VARIABLES)


@templates_router.post(
    "/v1/templates/{name}/preview",
    response_model=TemplatePreview,
    summary="Render a template (or a draft of it) with example values",
    responses=_PROBLEMS,
)
async def preview_template(
    name: str, request: Request, principal: Admin, body: TemplatePreviewRequest | None = None
) -> TemplatePreview:
    ctx = _context(request)
    body = body or TemplatePreviewRequest()
    if name not in messages.TEMPLATES:
        raise Problem(
            404, f"no template {name!r}; known: {', '.join(messages.TEMPLATES)}", slug="unknown-template"
        )
    tenant = ctx.runtime.tenants.get(principal.tenant)
    values = {
        **messages.example_values(name, body.language, ctx.settings.public_base_url),
        "municipality": tenant.name if tenant else principal.tenant,
        **body.values,
    }
    try:
        rendered = ctx.templates.render(
            principal.tenant, name, body.language, values, draft_text=body.text, draft_html=body.html
        )
    except messages.TemplateProblem as exc:
        raise Problem(
            422,
            "the template does not render",
            slug="invalid-template",
            errors=[{"pointer": f"/{exc.part}", "detail": str(exc)}],
        ) from None
    return TemplatePreview(
        name=name, language=body.language, subject=rendered.subject, text=rendered.text, html=rendered.html
    )
