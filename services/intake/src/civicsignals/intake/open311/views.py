"""Open311 GeoReport v2 routes under ``/open311/v2/`` (XML and JSON, by the path's extension).

Errors on these routes are the spec's error arrays (``[{"code": 403, "description": "…"}]`` or
``<errors><error>…``) with the spec's HTTP codes: 403 for a missing or wrong ``api_key``, 404 for
what does not exist, 400 for everything else (a 422 of the JSON API is a 400 here). Two
exceptions keep their DESIGN §5 form: 413 (the body limit answers before any route) and 429 keeps
its ``Retry-After`` but is written as an error array too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from civicsignals.common.events import utcnow
from civicsignals.common.problems import Problem
from civicsignals.common.redaction import redact
from civicsignals.common.tenants import Tenant
from civicsignals.intake import flows
from civicsignals.intake.access import authorise_key, public_limit
from civicsignals.intake.models import Location, Reporter, Signal, SignalCreate
from civicsignals.intake.open311 import forward, render, schemas
from civicsignals.intake.open311.catalogue import AttributeError311, Catalogue, validate_attributes
from civicsignals.intake.open311.service import (
    CASE_STATUS,
    Open311Error,
    case_status_for,
    date_range,
    definition_json,
    find_request,
    find_requests,
    find_updates,
    parse_form,
    parse_time,
    service_json,
    split_list,
)
from civicsignals.intake.tenantconfig import closed_statuses

log = logging.getLogger(__name__)

Fmt = Literal["json", "xml"]
PROBLEM_TO_OPEN311 = {401: 403, 409: 400, 415: 400, 422: 400}
MAX_DESCRIPTION = 4000


def _fmt_of(request: Request) -> render.Format:
    return "json" if request.url.path.endswith(".json") else "xml"


class Open311Route(APIRoute):
    """Answers every error of an Open311 route in the spec's format and codes."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            fmt = _fmt_of(request)
            try:
                return await original(request)
            except Open311Error as exc:
                return render.errors(fmt, exc.status, [str(exc)])
            except Problem as exc:
                status = PROBLEM_TO_OPEN311.get(exc.status, exc.status)
                details = [
                    exc.detail,
                    *[f"{e.get('pointer', '')}: {e['detail']}".lstrip(": ") for e in exc.errors or []],
                ]
                return render.errors(fmt, status, details, headers=exc.headers)
            except RequestValidationError as exc:
                errors = exc.errors()
                if any(tuple(e.get("loc", ()))[:2] == ("path", "fmt") for e in errors):
                    return render.errors("xml", 404, ["the format must be .xml or .json"])
                details = [
                    f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg', 'invalid')}"
                    for e in errors
                ]
                return render.errors(fmt, 400, details)

        return handler


router = APIRouter(prefix="/open311", route_class=Open311Route, tags=["open311"])

FmtPath = Annotated[
    Fmt, Path(description="the response format: xml (the spec's default) or json", examples=["json"])
]
StartDate = Annotated[str | None, Query(description="W3C date-time", examples=["2026-11-01T00:00:00Z"])]
EndDate = Annotated[str | None, Query(description="W3C date-time", examples=["2026-11-28T00:00:00Z"])]
ServiceCode = Annotated[str, Path(description="a service_code of the service list", examples=["container"])]
RequestId = Annotated[
    str,
    Path(
        description="the service_request_id POST requests answered", examples=["01JDX3W6Q5TB7V0N8K2M4R6P9S"]
    ),
]
Token = Annotated[
    str,
    Path(
        description="the token POST requests answered (the same id)", examples=["01JDX3W6Q5TB7V0N8K2M4R6P9S"]
    ),
]
Jurisdiction = Annotated[
    str | None,
    Query(
        description="the tenant (municipality) code; optional when intake has a default jurisdiction",
        examples=["demo"],
    ),
]
PublicLimit = Depends(public_limit)


def _xml_example(text: str) -> dict[str, Any]:
    return {"text/xml": {"schema": {"type": "string"}, "example": text}}


def _responses(
    model: type[BaseModel], json_example: Any, xml_example: str, *errors: int
) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {
        200: {
            "description": "OK (the format follows the path's extension)",
            "content": {
                "application/json": {
                    "schema": model.model_json_schema(ref_template="#/components/schemas/{model}"),
                    "example": json_example,
                },
                **_xml_example(xml_example),
            },
        }
    }
    descriptions = {
        400: "jurisdiction_id or a required field was not provided, or is invalid",
        403: "missing or invalid api_key",
        404: "jurisdiction_id, service_code, request or format not found",
        429: "rate limit reached (see Retry-After)",
    }
    for status in errors:
        out[status] = {
            "description": descriptions[status],
            "content": {
                "application/json": {
                    "schema": schemas.ErrorList.model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    ),
                    "example": [{"code": status, "description": descriptions[status]}],
                },
                **_xml_example(
                    f'<?xml version="1.0" encoding="utf-8"?>\n<errors><error><code>{status}</code>'
                    f"<description>{descriptions[status]}</description></error></errors>"
                ),
            },
        }
    return out


def _ctx(request: Request) -> flows.IntakeContext:
    context: flows.IntakeContext = request.app.state.intake
    return context


def resolve_tenant(request: Request, jurisdiction_id: str | None) -> Tenant:
    ctx = _ctx(request)
    code = jurisdiction_id or ctx.settings.open311_default_jurisdiction
    if not code:
        raise Open311Error(400, "jurisdiction_id was not provided")
    tenant = ctx.tenant(code)
    if tenant is None:
        raise Open311Error(404, f"jurisdiction_id {code!r} was not found")
    return tenant


def _catalogue(request: Request, tenant: Tenant) -> Catalogue:
    return _ctx(request).catalogues.get(tenant)


# -- discovery and services ------------------------------------------------------------------------


@router.get(
    "/discovery.{fmt}",
    summary="Open311 service discovery",
    dependencies=[PublicLimit],
    response_class=Response,
    responses=_responses(
        schemas.DiscoveryOut,
        {
            "changeset": "2026-11-28T00:00:00Z",
            "contact": "Gemeente (via the municipality's website)",
            "key_service": "Ask the municipality for an API key",
            "endpoints": [
                {
                    "specification": "http://wiki.open311.org/GeoReport_v2",
                    "url": "http://127.0.0.1:8000/open311/v2",
                    "changeset": "2026-11-28T00:00:00Z",
                    "type": "production",
                    "formats": ["text/xml", "application/json"],
                }
            ],
        },
        '<?xml version="1.0" encoding="utf-8"?>\n<discovery><changeset>2026-11-28T00:00:00Z</changeset>…</discovery>',
        404,
        429,
    ),
)
async def discovery(fmt: FmtPath, request: Request) -> Response:
    """Where the GeoReport v2 endpoint is and which formats it speaks."""
    base = _ctx(request).settings.public_base_url.rstrip("/")
    changeset = "2026-11-28T00:00:00Z"
    body = {
        "changeset": changeset,
        "contact": "the municipality's contact centre",
        "key_service": "ask the municipality for an API key with the scope signals:write",
        "endpoints": [
            {
                "specification": "http://wiki.open311.org/GeoReport_v2",
                "url": f"{base}/open311/v2",
                "changeset": changeset,
                "type": "production",
                "formats": ["text/xml", "application/json"],
            }
        ],
    }
    return render.document(fmt, "discovery", body)


SERVICES_XML = """<?xml version="1.0" encoding="utf-8"?>
<services><service><service_code>container</service_code><service_name>Container</service_name><description>…</description><metadata>true</metadata><type>realtime</type><keywords>afval, Waste container, Waste</keywords><group>Afval</group></service></services>"""


@router.get(
    "/v2/services.{fmt}",
    summary="GET Service List",
    dependencies=[PublicLimit],
    response_class=Response,
    responses=_responses(
        schemas.ServiceList,
        [
            {
                "service_code": "container",
                "service_name": "Container",
                "description": "Deze subcategorie is bedoeld voor meldingen over afvalcontainers …",
                "metadata": True,
                "type": "realtime",
                "keywords": "afval, Waste container, Waste",
                "group": "Afval",
            }
        ],
        SERVICES_XML,
        400,
        404,
        429,
    ),
)
async def services(fmt: FmtPath, request: Request, jurisdiction_id: Jurisdiction = None) -> Response:
    """Every service of the tenant's taxonomy (one per subtopic); `metadata` says it has attributes."""
    tenant = resolve_tenant(request, jurisdiction_id)
    catalogue = _catalogue(request, tenant)
    return render.document(
        fmt, "services", [service_json(s) for s in catalogue.services], item_name="service"
    )


@router.get(
    "/v2/services/{service_code}.{fmt}",
    summary="GET Service Definition",
    dependencies=[PublicLimit],
    response_class=Response,
    responses=_responses(
        schemas.ServiceDefinitionOut,
        {
            "service_code": "container",
            "attributes": [
                {
                    "variable": True,
                    "code": "container_type",
                    "datatype": "singlevaluelist",
                    "required": True,
                    "datatype_description": None,
                    "order": 1,
                    "description": "Om welke container gaat het?",
                    "values": [{"key": "rest", "name": "Restafval"}, {"key": "glas", "name": "Glas"}],
                }
            ],
        },
        '<?xml version="1.0" encoding="utf-8"?>\n<service_definition><service_code>container</service_code>'
        "<attributes><attribute><variable>true</variable><code>container_type</code>…</attribute></attributes>"
        "</service_definition>",
        400,
        404,
        429,
    ),
)
async def service_definition(
    service_code: ServiceCode, fmt: FmtPath, request: Request, jurisdiction_id: Jurisdiction = None
) -> Response:
    """The attributes a request for this service takes (`attribute[code]` in POST requests)."""
    tenant = resolve_tenant(request, jurisdiction_id)
    service = _catalogue(request, tenant).get(service_code)
    if service is None:
        raise Open311Error(404, f"service_code {service_code!r} was not found")
    return render.document(fmt, "service_definition", definition_json(service))


# -- requests --------------------------------------------------------------------------------------

_REQUEST_FIELDS: dict[str, Any] = {
    name: {"type": "string"}
    for name in (
        "api_key",
        "jurisdiction_id",
        "service_code",
        "lat",
        "long",
        "address_string",
        "address_id",
        "email",
        "device_id",
        "account_id",
        "first_name",
        "last_name",
        "phone",
        "description",
        "media_url",
    )
}
_REQUEST_EXAMPLE = {
    "api_key": "cs_0123456789abcdef.secret",
    "jurisdiction_id": "demo",
    "service_code": "container",
    "lat": "52.0116",
    "long": "4.7105",
    "email": "bewoner@example.org",
    "description": "De glasbak op de Markt zit vol.",
    "attribute[container_type]": "glas",
}
POST_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["api_key", "service_code"],
                    "properties": _REQUEST_FIELDS,
                    "additionalProperties": {"type": "string"},
                },
                "example": _REQUEST_EXAMPLE,
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["api_key", "service_code"],
                    "properties": {
                        **_REQUEST_FIELDS,
                        "media": {
                            "type": "string",
                            "format": "binary",
                            "description": "the photo (JPEG, PNG, WebP, HEIC) or PDF itself (extension)",
                        },
                    },
                    "additionalProperties": {"type": "string"},
                },
                "example": {**_REQUEST_EXAMPLE, "media": "(the photo's bytes)"},
            },
        },
    }
}


@router.post(
    "/v2/requests.{fmt}",
    summary="POST Service Request",
    response_class=Response,
    openapi_extra=POST_REQUEST_BODY,
    responses=_responses(
        schemas.RequestCreatedList,
        [{"service_request_id": "01JDX3W6Q5TB7V0N8K2M4R6P9S", "service_notice": None, "account_id": None}],
        '<?xml version="1.0" encoding="utf-8"?>\n<service_requests><request><service_request_id>01JDX3W6Q5TB7V0N8K2M4R6P9S'
        "</service_request_id><service_notice /><account_id /></request></service_requests>",
        400,
        403,
        404,
        429,
    ),
)
async def post_request(
    fmt: FmtPath,
    request: Request,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Response:
    """Create a service request (form-encoded, with `api_key`): it becomes a signal of kind report.

    The `service_code` is stored as a hint (classification still runs); `attribute[code]` and
    `attribute[code][]` are checked against the service definition. Contact fields are sealed like
    a portal's reporter; `device_id` is not kept. The request is realtime: its id comes back at once.

    Media (the wiki's "Media Handling" extension, as Bloomington's and Infor's endpoints take it):
    a `multipart/form-data` POST may carry the photo itself in a file field `media`. It is checked
    like a portal's upload (type sniffed, size) before anything is stored, and stored with the
    signal in one transaction; a refused file is an error array and creates nothing. `media_url`
    stays a reference that is kept, never fetched.
    """
    raw = await request.form()
    form = parse_form(raw.multi_items())
    principal = authorise_key(request, form.get("api_key"), ("signals:write",))
    jurisdiction = form.get("jurisdiction_id")
    tenant = resolve_tenant(request, jurisdiction or principal.tenant)
    if tenant.code != principal.tenant:
        raise Open311Error(403, f"this api_key is not valid for jurisdiction_id {tenant.code!r}")
    service_code = form.get("service_code")
    if service_code is None:
        raise Open311Error(400, "service_code was not provided")
    service = _catalogue(request, tenant).get(service_code)
    if service is None:
        raise Open311Error(404, f"service_code {service_code!r} was not found")
    try:
        attributes = validate_attributes(service, form.attributes)
    except AttributeError311 as exc:
        raise Open311Error(400, str(exc)) from None
    payload = _signal_from_form(form, service.service_name, attributes)
    ctx = _ctx(request)
    media = raw.get("media")
    checked = None
    if isinstance(media, UploadFile) and media.filename:
        content = await media.read(ctx.settings.max_attachment_bytes + 1)
        upload = flows.Upload(content=content, filename=media.filename, declared_type=media.content_type)
        checked = flows.check_new_signal_file(ctx, upload)
    created, _replayed = await flows.receive_signal_once(
        ctx,
        tenant.code,
        payload,
        source=principal.actor,
        idempotency_key=idempotency_key,
        service_code=service.service_code,
        endpoint="open311",
        media=checked,
    )
    body = [{"service_request_id": created.id, "service_notice": None, "account_id": None}]
    return render.document(fmt, "service_requests", body, item_name="request")


def _signal_from_form(form: Any, service_name: str, attributes: dict[str, Any]) -> SignalCreate:
    lat, lon = form.get("lat"), form.get("long")
    if (lat is None) != (lon is None):
        raise Open311Error(400, "lat and long must be sent together")
    location = None
    if lat is not None and lon is not None:
        try:
            location = Location(lat=float(lat), lon=float(lon))
        except (ValueError, ValidationError):
            raise Open311Error(400, "lat and long must be WGS84 decimal degrees") from None
    elif form.get("address_string") is None and form.get("address_id") is None:
        raise Open311Error(400, "a location is required: lat & long, address_string or address_id")
    description = (form.get("description") or "").strip()
    if len(description) > MAX_DESCRIPTION:
        raise Open311Error(400, "description is longer than 4,000 characters")
    reporter = None
    name = " ".join(p for p in (form.get("first_name"), form.get("last_name")) if p) or None
    if form.get("email") or form.get("phone") or name:
        try:
            reporter = Reporter(name=name, email=form.get("email"), phone=form.get("phone"), consent=False)
        except ValidationError as exc:
            field = str(exc.errors()[0]["loc"][0]) if exc.errors() else "contact"
            raise Open311Error(400, f"{field} is not valid") from None
    open311 = {
        key: value
        for key, value in {
            "address_string": form.get("address_string"),
            "address_id": form.get("address_id"),
            "media_url": form.get("media_url"),
            "account_id": form.get("account_id"),
            "attributes": attributes or None,
        }.items()
        if value is not None
    }
    try:
        return SignalCreate(
            text=description or service_name,
            channel="open311",
            kind="report",
            location=location,
            reporter=reporter,
            source="open311",
            metadata={"open311": open311},
        )
    except ValidationError as exc:
        raise Open311Error(400, "; ".join(str(e.get("msg")) for e in exc.errors())) from None


REQUEST_EXAMPLE = {
    "service_request_id": "01JDX3W6Q5TB7V0N8K2M4R6P9S",
    "status": "open",
    "status_notes": "De ploeg komt donderdag.",
    "service_name": "Container",
    "service_code": "container",
    "description": "De glasbak op de Markt zit vol. Bel [PHONE].",
    "agency_responsible": "Stadsbeheer",
    "service_notice": "Binnen 5 werkdagen opgelost",
    "requested_datetime": "2026-11-28T09:00:03Z",
    "updated_datetime": "2026-11-29T10:12:00Z",
    "expected_datetime": "2026-12-03T17:00:00Z",
    "address": "binnenstad, centrum, Demo (gemeente)",
    "address_id": None,
    "zipcode": None,
    "lat": 52.012,
    "long": 4.711,
    "media_url": None,
}
REQUEST_XML = (
    '<?xml version="1.0" encoding="utf-8"?>\n<service_requests><request><service_request_id>01JDX3W6Q5TB7V0N8K2M4R6P9S'
    "</service_request_id><status>open</status>…</request></service_requests>"
)


@router.get(
    "/v2/requests.{fmt}",
    summary="GET Service Requests",
    dependencies=[PublicLimit],
    response_class=Response,
    responses=_responses(schemas.RequestList, [REQUEST_EXAMPLE], REQUEST_XML, 400, 404, 429),
)
async def get_requests(
    fmt: FmtPath,
    request: Request,
    jurisdiction_id: Jurisdiction = None,
    service_request_id: Annotated[
        str | None,
        Query(
            description="comma-separated ids; overrides every other filter",
            examples=["01JDX3W6Q5TB7V0N8K2M4R6P9S,01JDX3YB2C8Q4W6E9R1T3Y5U7I"],
        ),
    ] = None,
    service_code: Annotated[
        str | None, Query(description="comma-separated service codes", examples=["container,oplaadpunt"])
    ] = None,
    start_date: StartDate = None,
    end_date: EndDate = None,
    status: Annotated[
        str | None, Query(description="open, closed or both, comma-separated", examples=["open"])
    ] = None,
) -> Response:
    """Public, as in the spec: the most recent 90 days (never a wider span), at most 1000 requests.

    `description` (redacted) only for requests an Open311 client posted here; reports that came
    through any other channel are listed without it. A request posted here is always listed,
    under the `service_code` it was posted with. `status` is `open` and/or `closed`, in any case.
    """
    tenant = resolve_tenant(request, jurisdiction_id)
    statuses = [s.lower() for s in split_list(status)]  # the spec's open/closed, in any case
    if any(s not in ("open", "closed") for s in statuses):
        raise Open311Error(400, "status must be open, closed or both")
    start, end = date_range(parse_time(start_date, "start_date"), parse_time(end_date, "end_date"), utcnow())
    async with _ctx(request).runtime.sessions() as session:
        body = await find_requests(
            session,
            tenant,
            _catalogue(request, tenant),
            ids=split_list(service_request_id),
            service_codes=split_list(service_code),
            start=start,
            end=end,
            statuses=statuses,
        )
    return render.document(fmt, "service_requests", body, item_name="request")


@router.get(
    "/v2/requests/{service_request_id}.{fmt}",
    summary="GET Service Request",
    dependencies=[PublicLimit],
    response_class=Response,
    responses=_responses(schemas.RequestList, [REQUEST_EXAMPLE], REQUEST_XML, 400, 404, 429),
)
async def get_request(
    service_request_id: RequestId, fmt: FmtPath, request: Request, jurisdiction_id: Jurisdiction = None
) -> Response:
    """One request, as a list of one (the spec's shape)."""
    tenant = resolve_tenant(request, jurisdiction_id)
    async with _ctx(request).runtime.sessions() as session:
        body = await find_requests(session, tenant, _catalogue(request, tenant), ids=[service_request_id])
    if not body:
        raise Open311Error(404, f"service_request_id {service_request_id!r} was not found")
    return render.document(fmt, "service_requests", body, item_name="request")


@router.get(
    "/v2/tokens/{token}.{fmt}",
    summary="GET service_request_id from a token",
    dependencies=[PublicLimit],
    response_class=Response,
    responses=_responses(
        schemas.TokenList,
        [{"service_request_id": "01JDX3W6Q5TB7V0N8K2M4R6P9S", "token": "01JDX3W6Q5TB7V0N8K2M4R6P9S"}],
        '<?xml version="1.0" encoding="utf-8"?>\n<service_requests><request><service_request_id>01JDX3W6Q5TB7V0N8K2M4R6P9S'
        "</service_request_id><token>01JDX3W6Q5TB7V0N8K2M4R6P9S</token></request></service_requests>",
        400,
        404,
        429,
    ),
)
async def get_token(
    token: Token, fmt: FmtPath, request: Request, jurisdiction_id: Jurisdiction = None
) -> Response:
    """Every service is realtime, so POST never returns a token; a request's id is also its token."""
    tenant = resolve_tenant(request, jurisdiction_id)
    async with _ctx(request).runtime.sessions() as session:
        signal = await find_request(session, tenant, _catalogue(request, tenant), token)
    if signal is None:
        raise Open311Error(404, f"token {token!r} was not found")
    return render.document(
        fmt, "service_requests", [{"service_request_id": signal.id, "token": token}], item_name="request"
    )


# -- mySociety servicerequestupdates --------------------------------------------------------------


@router.get(
    "/v2/servicerequestupdates.{fmt}",
    summary="GET Service Request Updates (mySociety extension)",
    dependencies=[PublicLimit],
    response_class=Response,
    responses=_responses(
        schemas.UpdateList,
        [
            {
                "update_id": "01JDX3W6Q5TB7V0N8K2M4R6P9S-2",
                "service_request_id": "01JDX3W6Q5TB7V0N8K2M4R6P9S",
                "status": "in_progress",
                "updated_datetime": "2026-11-29T10:12:00Z",
                "description": "De ploeg komt donderdag.",
                "media_url": None,
            }
        ],
        '<?xml version="1.0" encoding="utf-8"?>\n<service_request_updates><request_update><update_id>'
        "01JDX3W6Q5TB7V0N8K2M4R6P9S-2</update_id>…</request_update></service_request_updates>",
        400,
        404,
        429,
    ),
)
async def get_updates(
    fmt: FmtPath,
    request: Request,
    jurisdiction_id: Jurisdiction = None,
    start_date: StartDate = None,
    end_date: EndDate = None,
) -> Response:
    """Status changes of the tenant's requests (from intake's own status history), oldest first."""
    tenant = resolve_tenant(request, jurisdiction_id)
    start, end = date_range(parse_time(start_date, "start_date"), parse_time(end_date, "end_date"), utcnow())
    async with _ctx(request).runtime.sessions() as session:
        body = await find_updates(session, tenant, _catalogue(request, tenant), start, end)
    return render.document(fmt, "service_request_updates", body, item_name="request_update")


POST_UPDATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["api_key", "service_request_id", "update_id", "status"],
                    "properties": {
                        "api_key": {"type": "string"},
                        "jurisdiction_id": {"type": "string"},
                        "service_request_id": {"type": "string"},
                        "update_id": {"type": "string"},
                        "updated_datetime": {"type": "string"},
                        "status": {"type": "string"},
                        "description": {"type": "string"},
                        "media_url": {"type": "string"},
                        "email": {"type": "string"},
                        "first_name": {"type": "string"},
                        "last_name": {"type": "string"},
                        "account_id": {"type": "string"},
                    },
                },
                "example": {
                    "api_key": "cs_0123456789abcdef.secret",
                    "jurisdiction_id": "demo",
                    "service_request_id": "01JDX3W6Q5TB7V0N8K2M4R6P9S",
                    "update_id": "woco-778",
                    "updated_datetime": "2026-11-30T08:00:00Z",
                    "status": "FIXED",
                    "description": "Container geleegd.",
                },
            }
        },
    }
}


@router.post(
    "/v2/servicerequestupdates.{fmt}",
    summary="POST Service Request Update (mySociety extension)",
    response_class=Response,
    openapi_extra=POST_UPDATE_BODY,
    responses=_responses(
        schemas.UpdateCreatedList,
        [{"update_id": "woco-778"}],
        '<?xml version="1.0" encoding="utf-8"?>\n<service_request_updates><request_update><update_id>woco-778'
        "</update_id></request_update></service_request_updates>",
        400,
        403,
        404,
        429,
    ),
)
async def post_update(fmt: FmtPath, request: Request) -> Response:
    """A partner or back office reports progress; routing applies it to the case.

    Needs an `api_key` with `cases:write`, or `partner:<code>` of a partner the case was
    forwarded to. The poster's name and e-mail are not kept; the description becomes the public
    note (redacted). `OPEN` on a case that has ended (and `REOPEN`) asks routing to reopen it;
    a move routing's lifecycle refuses is an error array (400).
    """
    form = parse_form((await request.form()).multi_items())
    principal = authorise_key(request, form.get("api_key"), ("cases:write", "partner:*"))
    tenant = resolve_tenant(request, form.get("jurisdiction_id") or principal.tenant)
    if tenant.code != principal.tenant:
        raise Open311Error(403, f"this api_key is not valid for jurisdiction_id {tenant.code!r}")
    request_id, update_id, status = form.get("service_request_id"), form.get("update_id"), form.get("status")
    for name, value in (("service_request_id", request_id), ("update_id", update_id), ("status", status)):
        if value is None:
            raise Open311Error(400, f"{name} was not provided")
    assert request_id is not None and update_id is not None and status is not None
    if status.strip().lower() not in CASE_STATUS:
        raise Open311Error(400, f"status must be one of {', '.join(s.upper() for s in CASE_STATUS)}")
    parse_time(form.get("updated_datetime"), "updated_datetime")
    if len(update_id) > 100:
        raise Open311Error(400, "update_id is longer than 100 characters")
    description = (form.get("description") or "").strip()
    if len(description) > MAX_DESCRIPTION:
        raise Open311Error(400, "description is longer than 4,000 characters")
    ctx = _ctx(request)
    async with ctx.runtime.sessions() as session:
        signal = await session.get(Signal, request_id)
    if signal is None or signal.tenant != tenant.code:
        raise Open311Error(404, f"service_request_id {request_id!r} was not found")
    if not principal.allows("cases:write"):
        partners = {s.split(":", 1)[1] for s in principal.scopes if s.startswith("partner:")}
        if not partners & set(signal.partners or []):
            raise Open311Error(403, "this api_key's partner does not work on this request")
    if signal.case_id is None:
        raise Open311Error(400, "this request has no case yet; retry shortly")
    case_status = case_status_for(status, signal.status, closed_statuses(tenant))
    assert case_status is not None  # checked above
    key = forward.service_key(ctx.settings.service_keys_dir, tenant.code)
    await forward.forward(
        ctx.http,
        ctx.settings.routing_url,
        key,
        forward.CaseUpdate(
            case_id=signal.case_id,
            status=case_status,
            public_note=redact(description) if description else None,
            update_id=f"open311:{principal.key_id}:{update_id}",
        ),
    )
    return render.document(
        fmt, "service_request_updates", [{"update_id": update_id}], item_name="request_update"
    )
