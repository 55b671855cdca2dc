"""Intake's HTTP routes: thin, they validate, authorise and call flows/service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, File, Header, Path, Query, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, ValidationError

from civicsignals.common.auth import Principal
from civicsignals.common.ids import normalise_tracking_code
from civicsignals.common.problems import Problem
from civicsignals.intake import attachments, flows, pages
from civicsignals.intake.access import authorised, public_limit, staff_or_partner
from civicsignals.intake.models import (
    RESIDENT_ACTIONS,
    AttachmentList,
    AttachmentPublic,
    ContactLookup,
    ContactPublic,
    ContactsPublic,
    ConversationCreate,
    ConversationCreated,
    FeedbackAccepted,
    FeedbackCreate,
    ResidentAttachmentAccepted,
    ResidentUpdateAccepted,
    ResidentUpdateCreate,
    SignalCreate,
    SignalCreated,
    TrackingPublic,
)

SignalWriter = Annotated[Principal, Depends(authorised("signals:write"))]
ContactReader = Annotated[Principal, Depends(authorised("contact:read"))]
PublicLimit = Depends(public_limit)
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="the same key and body replay the first response; another body is a 422",
        examples=["4c2f0d0e-5b6a-4d8e-9a51-0c6b2f7d1e33"],
    ),
]


def _problem(status: int, title: str, detail: str, slug: str, pointer: str | None = None) -> dict[str, Any]:
    example: dict[str, Any] = {
        "type": f"https://civicsignals.nl/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if pointer is not None:
        example["errors"] = [{"pointer": pointer, "detail": "this field is required"}]
    return {"application/problem+json": {"example": example}}


PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"pointer": {"type": "string"}, "detail": {"type": "string"}},
            },
        },
    },
}


def problem(
    status: int, description: str, title: str, detail: str, slug: str, pointer: str | None = None
) -> dict[str, Any]:
    content = _problem(status, title, detail, slug, pointer)
    content["application/problem+json"]["schema"] = PROBLEM_SCHEMA
    return {"description": description, "content": content}


AUTH_PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: problem(
        401, "Missing or invalid API key", "Unauthorized", "the API key is not valid", "unauthenticated"
    ),
    403: problem(
        403,
        "The key lacks the scope, or the origin is not the tenant's",
        "Forbidden",
        "this key lacks the scope 'signals:write'",
        "forbidden",
    ),
    429: problem(
        429,
        "Rate limit of the key reached (see Retry-After)",
        "Too Many Requests",
        "too many requests for this API key; retry after 1 s",
        "rate-limited",
    ),
}
WRITE_PROBLEMS: dict[int | str, dict[str, Any]] = {
    **AUTH_PROBLEMS,
    400: problem(
        400,
        "Malformed JSON or Idempotency-Key",
        "Bad Request",
        "the request body is not valid JSON",
        "malformed-request",
    ),
    409: problem(
        409,
        "The same Idempotency-Key is still in flight",
        "Conflict",
        "a request with this Idempotency-Key is still in flight; retry shortly",
        "idempotency-in-flight",
    ),
    413: problem(
        413,
        "Body too large",
        "Content Too Large",
        "the request body is larger than 1048576 bytes",
        "body-too-large",
    ),
    422: problem(
        422,
        "Invalid fields, one JSON pointer each",
        "Unprocessable Entity",
        "the request has invalid fields",
        "invalid-request",
        "/text",
    ),
}

router = APIRouter()
Body = TypeVar("Body", bound=BaseModel)


async def _json_body(request: Request, model: type[Body]) -> Body:
    """The body as ``model``, for a route that also takes another content type and so reads its own
    body: the same 400 (not JSON) and 422 (field pointers) as FastAPI's own validation gives."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None


def _context(request: Request) -> flows.IntakeContext:
    context: flows.IntakeContext = request.app.state.intake
    return context


@router.post(
    "/v1/signals",
    status_code=201,
    response_model=SignalCreated,
    tags=["signals"],
    summary="Post a signal from a portal or app",
    responses={
        201: {
            "description": "Stored; classification, routing and the acknowledgement follow",
            "content": {
                "application/json": {
                    "example": {
                        "id": "01JDX3W6Q5TB7V0N8K2M4R6P9S",
                        "tracking_code": "7KQ2-M9XD-4HTC",
                        "status_url": "http://127.0.0.1:8000/v1/tracking/7KQ2-M9XD-4HTC",
                    }
                }
            },
        },
        **WRITE_PROBLEMS,
    },
)
async def post_signal(
    payload: SignalCreate,
    principal: SignalWriter,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> SignalCreated:
    """Store a resident's signal; it is classified, routed and acknowledged from here on.

    The location must lie inside the municipality's bounding box (else a 422 pointing at
    `/location`); its area and district are derived from the tenant's area polygons. The same
    `Idempotency-Key` with the same body replays the first response; with another body it is a
    422; while the first request is still in flight it is a 409.
    """
    created, replayed = await flows.receive_signal_once(
        _context(request), principal.tenant, payload, source=principal.actor, idempotency_key=idempotency_key
    )
    response.headers["Location"] = f"/v1/signals/{created.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return created


#: How an upload is refused, the same for a portal's and a resident's.
ATTACHMENT_PROBLEMS: dict[int | str, dict[str, Any]] = {
    409: problem(
        409,
        "The signal has the most attachments allowed",
        "Conflict",
        "a signal can have at most 10 attachments",
        "too-many-attachments",
    ),
    413: problem(
        413,
        "File too large",
        "Content Too Large",
        "an attachment may be at most 10485760 bytes",
        "attachment-too-large",
    ),
    415: problem(
        415,
        "Not a JPEG, PNG, WebP, HEIC or PDF, or its name or type says otherwise",
        "Unsupported Media Type",
        "the file is named '*.jpg' but its content is PNG; send it with the right name",
        "attachment-refused",
    ),
    422: problem(
        422,
        "No file in the form",
        "Unprocessable Entity",
        "the request has invalid fields",
        "invalid-request",
        "/file",
    ),
}
UploadedFile = Annotated[UploadFile, File(description="the photo or PDF; its type is read from its content")]
#: The multipart body of an upload, as an example (OpenAPI cannot show a file's bytes).
UPLOAD_EXAMPLE = {
    "requestBody": {"content": {"multipart/form-data": {"example": {"file": "(the JPEG's bytes)"}}}}
}

SignalId = Annotated[
    str, Path(description="the signal's id (a ULID)", examples=["01JDX3W6Q5TB7V0N8K2M4R6P9S"])
]
AttachmentId = Annotated[
    str, Path(description="the attachment's id", examples=["01JDX3YB2C8Q4W6E9R1T3Y5U7I"])
]
TrackingCode = Annotated[
    str,
    Path(
        description="the resident's tracking code (upper or lower case, with or without dashes)",
        examples=["7KQ2-M9XD-4HTC"],
    ),
]


@router.post(
    "/v1/signals/{signal_id}/attachments",
    status_code=201,
    openapi_extra=UPLOAD_EXAMPLE,
    response_model=AttachmentPublic,
    tags=["signals"],
    summary="Attach a photo or PDF to a signal",
    responses={
        201: {
            "description": "Stored on the attachments volume; its count goes on the bus",
            "content": {
                "application/json": {
                    "example": {
                        "id": "01JDX3YB2C8Q4W6E9R1T3Y5U7I",
                        "signal_id": "01JDX3W6Q5TB7V0N8K2M4R6P9S",
                        "media_type": "image/jpeg",
                        "size": 482113,
                        "sha256": "9f2c…",
                        "attachments": 1,
                    }
                }
            },
        },
        **AUTH_PROBLEMS,
        400: WRITE_PROBLEMS[400],
        404: problem(
            404,
            "No signal of this tenant has this id",
            "Not Found",
            "no signal has this id",
            "unknown-signal",
        ),
        **ATTACHMENT_PROBLEMS,
    },
)
async def post_attachment(
    signal_id: SignalId,
    principal: SignalWriter,
    request: Request,
    response: Response,
    file: UploadedFile,
    idempotency_key: IdempotencyKey = None,
) -> AttachmentPublic:
    """Attach a photo (JPEG, PNG, WebP, HEIC) or PDF to a signal of the key's tenant.

    The type is sniffed from the content; a file whose name or declared type says otherwise,
    or that is a script, is refused with a 415. Only the number of attachments travels on the bus
    (`signal.attachment_added`); the file stays on intake's volume. With an `Idempotency-Key`, the
    same key and file replay the first answer (a retried upload is stored once); another file
    under the key is a 422, and a key still in flight a 409.
    """
    ctx = _context(request)
    content = await file.read(ctx.settings.max_attachment_bytes + 1)
    created, replayed = await flows.add_attachment(
        ctx, principal.tenant, signal_id, content, file.filename, file.content_type, idempotency_key
    )
    response.headers["Location"] = f"/v1/signals/{signal_id}/attachments/{created.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return created


SignalReader = Annotated[Principal, Depends(staff_or_partner(*flows.STAFF_READ_SCOPES))]
ATTACHMENT_READ_PROBLEMS = {
    **AUTH_PROBLEMS,
    404: problem(
        404,
        "No signal of this tenant (that the key's departments see) has this id, or no such attachment",
        "Not Found",
        "no signal has this id",
        "unknown-signal",
    ),
}


@router.get(
    "/v1/signals/{signal_id}/attachments",
    response_model=AttachmentList,
    tags=["signals"],
    summary="The photos and PDFs of a signal, for staff",
    responses={
        200: {
            "description": "Oldest first; open one with its id",
            "content": {
                "application/json": {
                    "example": {
                        "signal_id": "01JDX3W6Q5TB7V0N8K2M4R6P9S",
                        "items": [
                            {
                                "id": "01JDX3YB2C8Q4W6E9R1T3Y5U7I",
                                "media_type": "image/jpeg",
                                "size": 482113,
                                "sha256": "9f2c…",
                                "created_at": "2026-11-28T09:01:12Z",
                            }
                        ],
                    }
                }
            },
        },
        **ATTACHMENT_READ_PROBLEMS,
    },
)
async def get_attachments(signal_id: SignalId, principal: SignalReader, request: Request) -> AttachmentList:
    """Scope `cases:read` or `signals:read`; a key bound to departments sees the signals whose
    case reached its departments (responsible, informed, reassigned or escalated to), and a partner
    organisation's key (`partner:<code>`) the signals whose case was forwarded to it."""
    return await flows.list_attachments(_context(request), principal, signal_id)


@router.get(
    "/v1/signals/{signal_id}/attachments/{attachment_id}",
    response_class=FileResponse,
    tags=["signals"],
    summary="One photo or PDF of a signal (audited)",
    responses={
        200: {
            "description": "The file as stored, with its sniffed type",
            "content": {
                "image/jpeg": {},
                "image/png": {},
                "image/webp": {},
                "image/heic": {},
                "application/pdf": {},
            },
        },
        **ATTACHMENT_READ_PROBLEMS,
    },
)
async def get_attachment(
    signal_id: SignalId, attachment_id: AttachmentId, principal: SignalReader, request: Request
) -> FileResponse:
    """The bytes, for a department's screen. Each opening writes an audit record
    (`attachment.read`): photos may show people. Served so that a browser never runs it
    (`nosniff`, a sandboxing CSP) and never keeps it (`no-store`)."""
    path, media_type = await flows.open_attachment(_context(request), principal, signal_id, attachment_id)
    return FileResponse(
        path,
        media_type=media_type,
        filename=f"{attachment_id}{attachments.suffix_for(media_type)}",
        content_disposition_type="inline",
        headers={
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, no-store",
        },
    )


@router.post(
    "/v1/conversations",
    status_code=201,
    response_model=ConversationCreated,
    tags=["conversations"],
    summary="Post a phone or chat transcript from the contact centre",
    responses={
        201: {
            "description": "Stored redacted and published as conversation.received",
            "content": {"application/json": {"example": {"signal_id": "01JDX40A7B9C1D3E5F7G9H1J3K"}}},
        },
        **WRITE_PROBLEMS,
    },
)
async def post_conversation(
    payload: ConversationCreate,
    principal: SignalWriter,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ConversationCreated:
    """A passive signal: every turn is redacted before it is stored or published."""
    created, replayed = await flows.receive_conversation_once(
        _context(request), principal.tenant, payload, principal.actor, idempotency_key
    )
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return created


TRACKING_EXAMPLE = {
    "tracking_code": "7KQ2-M9XD-4HTC",
    "status": "in_progress",
    "kind": "report",
    "received_at": "2026-11-28T09:00:03Z",
    "history": [
        {"status": "received", "at": "2026-11-28T09:00:03Z", "note": None},
        {"status": "assigned", "at": "2026-11-28T09:00:05Z", "note": None},
        {"status": "in_progress", "at": "2026-11-29T10:12:00Z", "note": "De ploeg komt donderdag."},
    ],
    "expected_by": "2026-12-03T17:00:00Z",
    "service_promise": "Binnen 5 werkdagen opgeruimd",
    "feedback_given": False,
    "actions": ["withdraw"],
    "reopen_until": None,
}


HTML_PAGE = {"text/html": {"example": '<!doctype html><html lang="nl">…</html>'}}
UNKNOWN_CODE = problem(
    404, "No signal has this code", "Not Found", "no signal has this tracking code", "unknown-tracking-code"
)
UNKNOWN_CODE_PAGE = {
    "description": "No signal has this code (the same page for every unknown code)",
    "content": HTML_PAGE,
}


def _or_page(api: dict[str, Any]) -> dict[str, Any]:
    """One status answered as problem+json to an API client and as a page to a browser."""
    return {**api, "content": {**api["content"], **HTML_PAGE}}


def _json_or_form(
    model: type[BaseModel],
    example: dict[str, Any],
    form_schema: dict[str, Any],
    form_example: dict[str, Any],
    multipart_schema: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """OpenAPI's request body of a route that takes JSON from portals and the resident's page form
    (and, with ``multipart_schema``, the page's form with a file)."""
    content = {
        "application/json": {"schema": model.model_json_schema(), "example": example},
        pages.FORM_TYPE: {"schema": form_schema, "example": form_example},
    }
    if multipart_schema is not None:
        content[pages.MULTIPART_TYPE] = {
            "schema": multipart_schema,
            "example": {**form_example, "file": "(the photo's bytes, optional)"},
        }
    return {"requestBody": {"required": True, "content": content}}


async def _from_page_or_api(
    request: Request,
    tracking_code: TrackingCode,
    model: type[Body],
    from_page: Callable[[flows.IntakeContext, flows.Tracked, Any], Awaitable[Response]],
    from_api: Callable[[flows.IntakeContext, str, Body], Awaitable[BaseModel]],
    status_code: int,
) -> Response:
    """A resident's POST: the page's form (``application/x-www-form-urlencoded``) is answered with
    pages, JSON from a portal with JSON; both go through the same flow."""
    ctx, code = _context(request), normalise_tracking_code(tracking_code)
    if pages.is_form(request):
        tracked = await flows.tracking(ctx, code)
        if tracked is None:
            return pages.not_found_page()
        return await from_page(ctx, tracked, await request.form())
    accepted = await from_api(ctx, code, await _json_body(request, model))
    return JSONResponse(accepted.model_dump(mode="json"), status_code=status_code)


@router.get(
    "/v1/tracking/{tracking_code}",
    response_model=TrackingPublic,
    tags=["tracking"],
    summary="Public status of a signal, by its tracking code (JSON, or the resident's page in a browser)",
    dependencies=[PublicLimit],
    responses={
        200: {
            "description": "Status and history; no personal data. HTML when `Accept` prefers `text/html`.",
            "content": {"application/json": {"example": TRACKING_EXAMPLE}, **HTML_PAGE},
        },
        404: _or_page(UNKNOWN_CODE),
        429: AUTH_PROBLEMS[429],
    },
)
async def get_tracking(
    tracking_code: TrackingCode,
    request: Request,
    response: Response,
    sent: Annotated[
        str | None,
        Query(
            description="the page only: the resident's action just sent, to confirm it", examples=["reply"]
        ),
    ] = None,
) -> Response | TrackingPublic:
    """Public: anyone with the code sees the status and its history, never personal data.

    Codes carry 60 random bits and every unknown code answers the same 404, and requests are
    rate-limited per client address, so codes cannot be enumerated. The same URL is the
    resident's page in a browser (``pages``), the link in every e-mail.
    """
    tracked = await flows.tracking(_context(request), normalise_tracking_code(tracking_code))
    html = pages.wants_html(request)
    if tracked is None:
        if html:
            return pages.not_found_page()
        raise Problem(404, "no signal has this tracking code", slug="unknown-tracking-code")
    if html:
        return pages.tracking_page(tracked, sent=sent)
    response.headers["Vary"] = "Accept"
    return tracked.view


@router.get(
    "/v1/tracking/{tracking_code}/feedback",
    response_class=HTMLResponse,
    tags=["tracking"],
    summary="The satisfaction form, as the resolution e-mail's links open it",
    dependencies=[PublicLimit],
    responses={
        200: {"description": "The form, the score of the link chosen; records nothing", "content": HTML_PAGE},
        404: UNKNOWN_CODE_PAGE,
        429: AUTH_PROBLEMS[429],
    },
)
async def get_feedback_form(
    tracking_code: TrackingCode,
    request: Request,
    score: Annotated[
        str | None, Query(description="1 to 5: the score the link chose", examples=["4"])
    ] = None,
) -> Response:
    """A GET never records anything: mail scanners open links. The resident confirms the score."""
    tracked = await flows.tracking(_context(request), normalise_tracking_code(tracking_code))
    if tracked is None:
        return pages.not_found_page()
    return pages.feedback_page(tracked, pages.prefill(score))


FEEDBACK_FORM_SCHEMA = {
    "type": "object",
    "required": ["score", "satisfied"],
    "properties": {
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "satisfied": {"type": "string", "enum": ["yes", "no"]},
        "comment": {"type": "string", "maxLength": 2000},
    },
}


@router.post(
    "/v1/tracking/{tracking_code}/feedback",
    status_code=201,
    response_model=FeedbackAccepted,
    tags=["tracking"],
    summary="The resident's satisfaction with how their signal was handled",
    dependencies=[PublicLimit],
    openapi_extra=_json_or_form(
        FeedbackCreate,
        {"satisfied": True, "score": 4, "comment": "Snel opgelost, dank!"},
        FEEDBACK_FORM_SCHEMA,
        {"score": 4, "satisfied": "yes", "comment": "Snel opgelost, dank!"},
    ),
    responses={
        201: {
            "description": "Recorded and published as feedback.received (comment redacted)",
            "content": {
                "application/json": {
                    "example": {"tracking_code": "7KQ2-M9XD-4HTC", "satisfied": True, "score": 4}
                }
            },
        },
        303: {"description": "The HTML form was recorded: back to the tracking page"},
        404: _or_page(UNKNOWN_CODE),
        409: _or_page(
            problem(
                409,
                "Feedback is not asked now: the case has not ended yet (`…/case-not-ended`; asked once it"
                " is resolved, closed or rejected), it ended without an outcome to rate"
                " (`…/feedback-not-asked`: duplicate or withdrawn), or feedback was already given"
                " (`…/feedback-already-given`)",
                "Conflict",
                "the case has not ended yet (it is in_progress); feedback can be given once it is resolved,"
                " closed or rejected",
                "case-not-ended",
            )
        ),
        413: WRITE_PROBLEMS[413],
        400: WRITE_PROBLEMS[400],
        422: _or_page(
            problem(
                422,
                "Invalid fields",
                "Unprocessable Entity",
                "the request has invalid fields",
                "invalid-request",
                "/score",
            )
        ),
        429: AUTH_PROBLEMS[429],
    },
)
async def post_feedback(tracking_code: TrackingCode, request: Request) -> Response:
    """Public, like the tracking page: one answer per signal; the comment is redacted. JSON from a
    portal; ``application/x-www-form-urlencoded`` from the resident's page, answered with pages."""
    return await _from_page_or_api(
        request, tracking_code, FeedbackCreate, pages.post_feedback_form, flows.submit_feedback, 201
    )


RESIDENT_FORM_FIELDS: dict[str, Any] = {
    "action": {"type": "string", "enum": list(RESIDENT_ACTIONS)},
    "text": {"type": "string", "maxLength": 4000},
}
RESIDENT_FORM_SCHEMA = {"type": "object", "required": ["action"], "properties": RESIDENT_FORM_FIELDS}
#: The page's answer and reopening forms: the same fields and, optionally, a photo or PDF.
RESIDENT_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["action"],
    "properties": {
        **RESIDENT_FORM_FIELDS,
        "file": {"type": "string", "format": "binary", "description": "a photo or PDF (optional)"},
    },
}


@router.post(
    "/v1/tracking/{tracking_code}/updates",
    status_code=202,
    response_model=ResidentUpdateAccepted,
    tags=["tracking"],
    summary="The resident answers a question, reopens, or withdraws their signal",
    dependencies=[PublicLimit],
    openapi_extra=_json_or_form(
        ResidentUpdateCreate,
        {"action": "reply", "text": "De container staat achter het gemeentehuis."},
        RESIDENT_FORM_SCHEMA,
        {"action": "reopen", "text": "Er ligt weer afval naast de container."},
        RESIDENT_MULTIPART_SCHEMA,
    ),
    responses={
        202: {
            "description": "Routing made the change; the tracking page shows it once its event is back",
            "content": {
                "application/json": {
                    "example": {"tracking_code": "7KQ2-M9XD-4HTC", "action": "reply", "status": "in_progress"}
                }
            },
        },
        303: {"description": "The page's form was sent: back to the tracking page (`?sent=<action>`)"},
        400: WRITE_PROBLEMS[400],
        404: _or_page(UNKNOWN_CODE),
        409: _or_page(
            problem(
                409,
                "Not possible in the signal's status now (`allowed` lists what is)",
                "Conflict",
                "a signal that is resolved cannot be given a reply now",
                "resident-action-not-possible",
            )
        ),
        413: _or_page(ATTACHMENT_PROBLEMS[413]),
        415: _or_page(ATTACHMENT_PROBLEMS[415]),
        422: _or_page(
            problem(
                422,
                "Invalid fields (a reply or a reopening needs a text)",
                "Unprocessable Entity",
                "the request has invalid fields",
                "invalid-request",
                "/text",
            )
        ),
        429: AUTH_PROBLEMS[429],
        503: _or_page(
            problem(
                503,
                "The case service cannot take it now (see Retry-After); nothing was changed",
                "Service Unavailable",
                "the case service cannot take this now; please try again in a minute",
                "case-service-unavailable",
            )
        ),
    },
)
async def post_resident_update(tracking_code: TrackingCode, request: Request) -> Response:
    """Public, by the tracking code as for feedback: the resident's own moves in the case's
    lifecycle, made at routing on their behalf (``role resident``). JSON from a portal;
    ``application/x-www-form-urlencoded`` from the resident's page, answered with pages, or
    ``multipart/form-data`` when the page's answer or reopening carries a photo or PDF (checked
    before the move is sent, stored once routing made it; a portal posts it to
    ``…/attachments``)."""
    return await _from_page_or_api(
        request, tracking_code, ResidentUpdateCreate, pages.post_resident_form, flows.resident_update, 202
    )


@router.post(
    "/v1/tracking/{tracking_code}/attachments",
    status_code=201,
    response_model=ResidentAttachmentAccepted,
    tags=["tracking"],
    summary="The resident adds a photo or PDF to their open signal",
    dependencies=[PublicLimit],
    openapi_extra=UPLOAD_EXAMPLE,
    responses={
        201: {
            "description": "Stored with the signal; its count goes on the bus",
            "content": {
                "application/json": {
                    "example": {
                        "tracking_code": "7KQ2-M9XD-4HTC",
                        "media_type": "image/jpeg",
                        "size": 482113,
                        "attachments": 2,
                    }
                }
            },
        },
        400: WRITE_PROBLEMS[400],
        404: UNKNOWN_CODE,
        **ATTACHMENT_PROBLEMS,
        429: AUTH_PROBLEMS[429],
    },
)
async def post_resident_attachment(
    tracking_code: TrackingCode,
    request: Request,
    response: Response,
    file: UploadedFile,
    idempotency_key: IdempotencyKey = None,
) -> ResidentAttachmentAccepted:
    """Public, by the tracking code as the tracking page: a photo or PDF for a signal whose case
    has not ended (a `409` `…/case-ended` after it; then a new report is the way; `…/signal-erased`
    once the person's data was erased on request). The type is
    sniffed from the content, as for a portal's upload; the same file sent twice is stored once.
    With an `Idempotency-Key` (kept per signal), the same key and file replay the first answer
    even when both copies arrive at once; another file under the key is a `422`, a key still in
    flight a `409`. The resident's page sends a photo with an answer or a reopening
    (`POST …/updates`)."""
    ctx = _context(request)
    content = await file.read(ctx.settings.max_attachment_bytes + 1)
    accepted, replayed = await flows.resident_attachment(
        ctx,
        normalise_tracking_code(tracking_code),
        flows.Upload(content=content, filename=file.filename, declared_type=file.content_type),
        idempotency_key,
    )
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return accepted


CONTACT_EXAMPLE = {
    "signal_id": "01JDX3W6Q5TB7V0N8K2M4R6P9S",
    "tracking_code": "7KQ2-M9XD-4HTC",
    "name": "A. Bewoner",
    "email": "bewoner@example.org",
    "phone": None,
    "consent": True,
    "language": "nl",
}


@router.get(
    "/v1/signals/{signal_id}/contact",
    response_model=ContactPublic,
    tags=["internal"],
    summary="A reporter's contact data, for notifier (audited)",
    responses={
        200: {
            "description": "The decrypted contact",
            "content": {"application/json": {"example": CONTACT_EXAMPLE}},
        },
        **AUTH_PROBLEMS,
        404: problem(
            404,
            "No contact for this signal",
            "Not Found",
            "no contact data is kept for this signal",
            "no-contact",
        ),
    },
)
async def get_contact(signal_id: SignalId, principal: ContactReader, request: Request) -> ContactPublic:
    """Service-to-service only: every read is recorded in the audit log, found or not."""
    contact = await flows.read_contact(_context(request), principal.tenant, signal_id, principal.actor)
    if contact is None:
        raise Problem(404, "no contact data is kept for this signal", slug="no-contact")
    return contact


@router.post(
    "/v1/contacts/lookup",
    response_model=ContactsPublic,
    tags=["internal"],
    summary="Many reporters' contact data at once, for notifier (each read audited)",
    responses={
        200: {
            "description": "The decrypted contacts; the signals without one under ``missing``",
            "content": {
                "application/json": {
                    "example": {
                        "contacts": [CONTACT_EXAMPLE],
                        "missing": ["01JDX3W6Q5TB7V0N8K2M4R6P9T"],
                    }
                }
            },
        },
        **AUTH_PROBLEMS,
        400: problem(
            400, "Malformed JSON", "Bad Request", "the request body is not valid JSON", "malformed-request"
        ),
        413: WRITE_PROBLEMS[413],
        422: problem(
            422,
            "No signal ids, more than 100, or another field",
            "Unprocessable Entity",
            "the request has invalid fields",
            "invalid-request",
            "/signal_ids",
        ),
    },
)
async def lookup_contacts(
    lookup: ContactLookup, principal: ContactReader, request: Request
) -> ContactsPublic:
    """Service-to-service only, as ``GET /v1/signals/{signal_id}/contact`` for up to 100 signals:
    notifier asks once for the mails it is about to send, not once a mail. Every signal's read is
    recorded in the audit log, found or not."""
    return await flows.read_contacts(_context(request), principal.tenant, lookup.signal_ids, principal.actor)
