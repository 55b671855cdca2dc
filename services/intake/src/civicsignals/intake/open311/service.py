"""Open311 reads and the form of ``POST requests``, framework-free.

What Open311 shows publicly about a request (GET requests is public by the spec) is what the
tracking page would show, and no more: coordinates rounded to about 100 m, the area and district
as the address, no postcode, no photos, and no words of the resident's. The one exception is a
request an Open311 client posted here itself (:func:`posted_via_open311`): such clients (like
FixMyStreet) publish their reports anyway, so its description is shown, redacted. A resident who
wrote through a portal, the phone line or any other channel never agreed to publication, and
redaction does not remove other people's names, so those requests have no description.

Only reports (kind ``report``) are listed: a request posted via Open311 always, under the
``service_code`` it was posted with (even when the classifier later chose a topic that is not an
Open311 service, so its client keeps following it); any other report only when its service (the
classifier's subtopic, else the hint) is one of the tenant's Open311 services. Complaints,
questions and conversations are never Open311 requests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common.events import RESIDENT_ACTOR
from civicsignals.common.redaction import redact
from civicsignals.common.tenants import Tenant
from civicsignals.intake.models import Signal, StatusEntry
from civicsignals.intake.open311.catalogue import Catalogue, Service
from civicsignals.intake.open311.render import w3_time
from civicsignals.intake.service import coarse
from civicsignals.intake.tenantconfig import closed_statuses, open311_public_descriptions

MAX_RANGE = timedelta(days=90)
MAX_RESULTS = 1000
LISTED_KINDS = ("report",)

_ATTRIBUTE = re.compile(r"^attribute\[([^\]]+)\](\[\])?$")


class Open311Error(ValueError):
    """A request the spec answers with an error array; ``status`` is 400, 403 or 404."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status


@dataclass
class RequestForm:
    """The fields of a form-encoded ``POST requests`` (or ``servicerequestupdates``)."""

    fields: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, list[str]] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        value = self.fields.get(name)
        return value if value not in (None, "") else None


def parse_form(items: Iterable[tuple[str, Any]]) -> RequestForm:
    """Split ``attribute[code]`` / ``attribute[code][]`` from the plain fields (first value wins)."""
    form = RequestForm()
    for name, value in items:
        if not isinstance(value, str):
            continue  # a file in a multipart form: Open311 has no file fields
        match = _ATTRIBUTE.fullmatch(name)
        if match:
            form.attributes.setdefault(match.group(1), []).append(value)
        elif name not in form.fields:
            form.fields[name] = value
    return form


def parse_time(value: str | None, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise Open311Error(400, f"{name} must be a W3C date-time, e.g. 2010-01-01T00:00:00Z") from None
    if parsed.tzinfo is None:
        raise Open311Error(400, f"{name} must include a time zone (Z or +HH:MM)")
    return parsed.astimezone(UTC)


def date_range(start: datetime | None, end: datetime | None, now: datetime) -> tuple[datetime, datetime]:
    """The spec's defaults: the most recent 90 days, and never a span of more than 90 days."""
    if start is None and end is None:
        return now - MAX_RANGE, now
    if start is None:
        assert end is not None
        return end - MAX_RANGE, end
    if end is None:
        return start, start + MAX_RANGE
    if end < start:
        raise Open311Error(400, "end_date is before start_date")
    if end - start > MAX_RANGE:
        raise Open311Error(400, "start_date and end_date may not span more than 90 days")
    return start, end


def split_list(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def service_json(service: Service) -> dict[str, Any]:
    return {
        "service_code": service.service_code,
        "service_name": service.service_name,
        "description": service.description,
        "metadata": service.metadata,
        "type": service.type,
        "keywords": service.keywords,
        "group": service.group,
    }


def definition_json(service: Service) -> dict[str, Any]:
    return {
        "service_code": service.service_code,
        "attributes": [
            {
                "variable": attribute.variable,
                "code": attribute.code,
                "datatype": attribute.datatype,
                "required": attribute.required,
                "datatype_description": attribute.datatype_description,
                "order": attribute.order,
                "description": attribute.description,
                "values": [{"key": v.key, "name": v.name} for v in attribute.values],
            }
            for attribute in sorted(service.attributes, key=lambda a: a.order)
        ],
    }


OPEN311_CHANNEL = "open311"

# A request an Open311 client posted to ``POST requests``: channel open311, with the service_code
# it was posted under. Only that route and the importer set ``service_code``, and the importer's
# history (``imported``) came through another system, so it follows the general rule.
_POSTED_VIA_OPEN311 = and_(
    col(Signal.channel) == OPEN311_CHANNEL,
    col(Signal.service_code).is_not(None),
    ~col(Signal.imported),
)
# The service_code a request is listed under (the SQL twin of :func:`_code_of`).
_PUBLIC_CODE = case(
    (_POSTED_VIA_OPEN311, col(Signal.service_code)),
    else_=func.coalesce(Signal.subtopic, Signal.service_code),
)


def posted_via_open311(signal: Signal) -> bool:
    """Whether an Open311 client posted this request here (the Python twin of the SQL above)."""
    return signal.channel == OPEN311_CHANNEL and signal.service_code is not None and not signal.imported


def _code_of(signal: Signal) -> str | None:
    if posted_via_open311(signal):
        return signal.service_code
    return signal.subtopic or signal.service_code


def _description(signal: Signal, tenant: Tenant) -> str | None:
    """The redacted text, only for a request an Open311 client posted (and not erased since), and
    only when the tenant shows descriptions (``open311.public_descriptions``, default true).

    Anything else has none: ``None`` is the spec's empty ``<description></description>`` in XML
    and ``"description": null`` in JSON, as in the spec's own example of GET requests.
    """
    if posted_via_open311(signal) and signal.erased_at is None and open311_public_descriptions(tenant):
        return signal.text_redacted
    return None


def public_note(entry: StatusEntry) -> str | None:
    """A change's note as Open311's public lists show it: redacted, and only the municipality's or
    a partner's. The resident's own answer from their tracking page is theirs, not for publication
    (the tracking page, which only they open, shows it)."""
    if not entry.note or entry.actor == RESIDENT_ACTOR:
        return None
    return redact(entry.note)


def _address(signal: Signal, tenant: Tenant) -> str | None:
    """Most specific to most general, coarse on purpose: area, district, municipality."""
    parts = [p for p in (signal.area, signal.district) if p]
    if not parts:
        return None
    return ", ".join([*parts, tenant.name])


def _agency(signal: Signal, tenant: Tenant) -> str | None:
    if not signal.responsible:
        return None
    department = tenant.departments.get(signal.responsible) or {}
    return str(department.get("name") or signal.responsible)


def request_json(
    signal: Signal, last: StatusEntry | None, tenant: Tenant, catalogue: Catalogue, closed: frozenset[str]
) -> dict[str, Any]:
    code = _code_of(signal)
    service = catalogue.get(code) if code else None
    return {
        "service_request_id": signal.id,
        "status": "closed" if signal.status in closed else "open",
        "status_notes": public_note(last) if last is not None else None,
        "service_name": service.service_name if service else None,
        "service_code": code,
        "description": _description(signal, tenant),
        "agency_responsible": _agency(signal, tenant),
        "service_notice": signal.service_promise,
        "requested_datetime": w3_time(signal.received_at),
        "updated_datetime": w3_time(signal.status_updated_at or signal.received_at),
        "expected_datetime": w3_time(signal.expected_by),
        "address": _address(signal, tenant),
        "address_id": None,
        "zipcode": None,
        "lat": coarse(signal.lat),
        "long": coarse(signal.lon),
        "media_url": None,
    }


def _listed(query: Any, tenant: Tenant, catalogue: Catalogue) -> Any:
    return query.where(
        col(Signal.tenant) == tenant.code,
        col(Signal.kind).in_(LISTED_KINDS),
        or_(_POSTED_VIA_OPEN311, _PUBLIC_CODE.in_(list(catalogue.by_code))),
    )


async def _last_entries(session: AsyncSession, signals: list[Signal]) -> dict[str, StatusEntry]:
    if not signals:
        return {}
    rows = (
        await session.exec(
            select(StatusEntry)
            .where(col(StatusEntry.signal_id).in_([s.id for s in signals]))
            .order_by(col(StatusEntry.signal_id), col(StatusEntry.sequence))
        )
    ).all()
    last: dict[str, StatusEntry] = {}
    for entry in rows:
        last[entry.signal_id] = entry
    return last


async def find_requests(
    session: AsyncSession,
    tenant: Tenant,
    catalogue: Catalogue,
    *,
    ids: list[str] | None = None,
    service_codes: list[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    statuses: list[str] | None = None,
) -> list[dict[str, Any]]:
    """GET requests: ``ids`` overrides every other filter, as the spec says."""
    closed = closed_statuses(tenant)
    query = _listed(select(Signal), tenant, catalogue)
    if ids:
        query = query.where(col(Signal.id).in_(ids[:MAX_RESULTS]))
    else:
        if service_codes:
            query = query.where(_PUBLIC_CODE.in_(service_codes))
        if start is not None:
            query = query.where(col(Signal.received_at) >= start)
        if end is not None:
            query = query.where(col(Signal.received_at) <= end)
        wanted = set(statuses or ())
        if wanted and wanted != {"open", "closed"}:
            in_closed = col(Signal.status).in_(sorted(closed))
            query = query.where(in_closed if wanted == {"closed"} else ~in_closed)
    query = query.order_by(col(Signal.received_at).desc()).limit(MAX_RESULTS)
    signals = list((await session.exec(query)).all())
    last = await _last_entries(session, signals)
    return [request_json(s, last.get(s.id), tenant, catalogue, closed) for s in signals]


async def find_request(
    session: AsyncSession, tenant: Tenant, catalogue: Catalogue, request_id: str
) -> Signal | None:
    query = _listed(select(Signal), tenant, catalogue).where(col(Signal.id) == request_id)
    return (await session.exec(query)).first()


# -- mySociety servicerequestupdates ---------------------------------------------------------------

# Case status -> the status an update reports (mySociety's extended states, lower case as
# FixMyStreet writes them; "open"/"closed" for the rest).
UPDATE_STATUS = {
    "received": "open",
    "triage": "investigating",
    "assigned": "action_scheduled",
    "in_progress": "in_progress",
    "waiting_on_resident": "open",
    "forwarded": "internal_referral",
    "resolved": "fixed",
    "closed": "closed",
    "reopened": "open",
    "rejected": "no_further_action",
    "duplicate": "duplicate",
    "cancelled": "closed",
}

# An update's status (any case) -> the case status routing is asked to set. OPEN on a case that
# has ended is a reopening instead (see :func:`case_status_for`); REOPEN is SocietyWorks' explicit
# form of it (their Open311 OpenAPI lists it among the update states). PLANNED and FOR_TRIAGE are
# in mySociety's open311-adapter's list of update states too: work that is planned is under way
# for the resident, and "for triage" hands the case back to the triage department (routing lets
# the responsible department do that; a partner's FOR_TRIAGE is its refusal, an error array).
CASE_STATUS = {
    "open": "in_progress",
    "reopen": "reopened",
    "in_progress": "in_progress",
    "action_scheduled": "in_progress",
    "planned": "in_progress",
    "for_triage": "triage",
    "investigating": "in_progress",
    "fixed": "resolved",
    "closed": "closed",
    "duplicate": "duplicate",
    "not_councils_responsibility": "rejected",
    "no_further_action": "closed",
    "internal_referral": "forwarded",
}


def case_status_for(status: str, current: str, ended: frozenset[str]) -> str | None:
    """The case status an update's ``status`` asks routing for, given the case's current one.

    ``OPEN`` means "work on it": ``in_progress`` while the case runs, but the reopen move once it
    has ended (resolved, closed, rejected …), since routing has no way from there to
    ``in_progress``. Routing's lifecycle still has the final say (it refuses, say, to reopen a
    cancelled case), and its refusal is an error array. ``None``: not a status we know.
    """
    key = status.strip().lower()
    if key == "open" and current in ended:
        return "reopened"
    return CASE_STATUS.get(key)


async def find_updates(
    session: AsyncSession, tenant: Tenant, catalogue: Catalogue, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """Status changes (not the first "received") of listed requests, oldest first."""
    query = _listed(
        select(StatusEntry, Signal).join(Signal, col(Signal.id) == col(StatusEntry.signal_id)),
        tenant,
        catalogue,
    )
    query = (
        query.where(col(StatusEntry.sequence) > 0, col(StatusEntry.at) >= start, col(StatusEntry.at) <= end)
        .order_by(col(StatusEntry.at), col(StatusEntry.id))
        .limit(MAX_RESULTS)
    )
    rows = (await session.exec(query)).all()
    return [
        {
            "update_id": f"{signal.id}-{entry.sequence}",
            "service_request_id": signal.id,
            "status": UPDATE_STATUS.get(entry.status, "open"),
            "updated_datetime": w3_time(entry.at),
            "description": public_note(entry),
            "media_url": None,
        }
        for entry, signal in rows
    ]
