"""Intake's orchestration: what is stored with which event, exactly once, and what intake follows.

Every write that publishes does both in one transaction through the outbox (DESIGN §2). Every
``POST`` that creates runs under :func:`run_once`, the ``Idempotency-Key`` protocol of DESIGN §5.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from nats.aio.msg import Msg
from pydantic import BaseModel
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common import wording
from civicsignals.common.auth import Principal
from civicsignals.common.bus import Apply, ConsumerSpec
from civicsignals.common.events import (
    CaseDepartmentsChanged,
    CaseStatusChanged,
    CloudEvent,
    ConversationReceived,
    DepartmentAssigned,
    FeedbackReceived,
    SignalAttachmentAdded,
    SignalClassified,
    SignalReceived,
    SignalRouted,
    make_event,
    read_data,
    utcnow,
)
from civicsignals.common.groupcommit import GroupCommit
from civicsignals.common.ids import new_id
from civicsignals.common.outbox import enqueue, outbox_row
from civicsignals.common.problems import Problem
from civicsignals.common.ratelimit import TokenBucketLimiter
from civicsignals.common.redaction import redact
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.common.tenants import Tenant
from civicsignals.intake import attachments, caseupdates, service
from civicsignals.intake.batching import Rows, row_writer
from civicsignals.intake.crypto import FieldCipher
from civicsignals.intake.models import (
    RESIDENT_ACTIONS,
    Attachment,
    AttachmentInfo,
    AttachmentList,
    AttachmentPublic,
    ContactPublic,
    ContactsPublic,
    Conversation,
    ConversationCreate,
    ConversationCreated,
    Feedback,
    FeedbackAccepted,
    FeedbackCreate,
    IdempotencyRecord,
    Location,
    ResidentAttachmentAccepted,
    ResidentUpdateAccepted,
    ResidentUpdateCreate,
    Signal,
    SignalCreate,
    SignalCreated,
    TrackingPublic,
)
from civicsignals.intake.open311.catalogue import CatalogueCache
from civicsignals.intake.residentmoves import REOPENABLE
from civicsignals.intake.settings import IntakeSettings
from civicsignals.intake.tenantconfig import (
    Area,
    AreaCache,
    bounding_box,
    closed_statuses,
)

log = logging.getLogger(__name__)

ResponseT = TypeVar("ResponseT", bound=BaseModel)


@dataclass
class IntakeContext:
    runtime: ServiceRuntime
    settings: IntakeSettings
    cipher: FieldCipher
    areas: AreaCache = field(default_factory=AreaCache)
    catalogues: CatalogueCache = field(default_factory=CatalogueCache)
    writer: GroupCommit[Rows, None] = field(init=False)
    key_limiter: TokenBucketLimiter = field(init=False)
    public_limiter: TokenBucketLimiter = field(init=False)
    _http: httpx.AsyncClient | None = None

    def __post_init__(self) -> None:
        self.writer = row_writer(self.runtime.sessions, self.runtime.events_committed)
        self.key_limiter = TokenBucketLimiter(self.settings.rate_limit_per_s, self.settings.rate_limit_burst)
        self.public_limiter = TokenBucketLimiter(
            self.settings.public_rate_limit_per_s, self.settings.public_rate_limit_burst
        )

    def status_url(self, tracking_code: str) -> str:
        return f"{self.settings.public_base_url.rstrip('/')}/v1/tracking/{tracking_code}"

    def tenant(self, code: str) -> Tenant | None:
        return self.runtime.tenants.get(code)

    def locate(self, tenant_code: str, location: Location | None, pointer: str = "/location") -> Area | None:
        """Check the point against the tenant's bounding box and find its area (None if no area)."""
        if location is None:
            return None
        tenant = self.tenant(tenant_code)
        if tenant is None:
            return None
        box = bounding_box(tenant)
        if box is not None and not box.contains(location.lat, location.lon):
            raise Problem(
                422,
                "the location is outside the municipality",
                slug="location-outside-tenant",
                errors=[
                    {
                        "pointer": pointer,
                        "detail": f"({location.lat}, {location.lon}) is outside the bounding box "
                        f"lat {box.min_lat}..{box.max_lat}, lon {box.min_lon}..{box.max_lon}",
                    }
                ],
            )
        index = self.areas.get(tenant)
        return index.locate(location.lat, location.lon) if index is not None else None

    @property
    def http(self) -> httpx.AsyncClient:
        """One pooled client for calls to other services (routing); never follows redirects."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10.0, follow_redirects=False)
        return self._http

    async def close(self) -> None:
        await self.writer.close()
        await stop_background_tasks(self.runtime)
        if self._http is not None:
            await self._http.aclose()
            self._http = None


async def stop_background_tasks(runtime: ServiceRuntime, *, patience_s: float = 0.5) -> None:
    """Cancel the runtime's loops before ``runtime.stop`` does, repeating until each has ended.

    Workaround: on Python 3.11 ``asyncio.wait_for`` can swallow a cancellation that arrives just
    as its inner wait completes (fixed in 3.12). The outbox relay waits for its wake-up that way,
    and intake wakes it after every group commit, so a single cancel sometimes left the relay
    running and ``runtime.stop`` waiting for it forever. A second cancel always gets through.
    (The lasting fix is ``asyncio.timeout`` in ``OutboxRelay.run``.)
    """
    tasks = [task for task in getattr(runtime, "_tasks", []) if not task.done()]
    for task in tasks:
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=patience_s)


# -- exactly once ----------------------------------------------------------------------------------


async def run_once(
    ctx: IntakeContext,
    tenant: str,
    idempotency_key: str | None,
    fingerprint: str,
    action: Callable[[str], Awaitable[ResponseT]],
    find: Callable[[AsyncSession, str], Awaitable[ResponseT | None]],
    model: type[ResponseT],
    *,
    namespace: str | None = None,
) -> tuple[ResponseT, bool]:
    """Run ``action(resource_id)`` under an ``Idempotency-Key`` (DESIGN §5); returns (response, replayed).

    Keys are the tenant's (its API clients choose them); a ``namespace`` keeps the keys of callers
    without an API key apart, such as a resident's by their signal, so that two residents who
    chose the same key never meet.

    The key is claimed in its own transaction first, together with the id of the object the
    request will create (``resource_id``), so a concurrent request with the same key sees it in
    flight (409) instead of creating a second object. The object and the key's completion commit
    separately, so a request may die in between; whoever meets the claim later looks the reserved
    object up with ``find`` before anything else and, when it is there, answers with it (and
    completes the key) instead of creating another. A claim whose object never appeared is taken
    over after ``idempotency_abandon_after_s`` with the same reserved id, so even a first attempt
    that was only slow, not dead, cannot commit a second object beside the retry's (the primary
    key refuses one of them). A failing action releases the key; a cancelled one leaves its claim,
    because its write may still commit (the group commit is shielded from cancellation).
    """
    if idempotency_key is None:
        return await action(new_id()), False
    if not 1 <= len(idempotency_key) <= 255:
        raise Problem(
            400,
            "the Idempotency-Key header must be 1 to 255 characters",
            slug="invalid-idempotency-key",
            errors=[{"pointer": "", "detail": "header Idempotency-Key has a bad length"}],
        )
    if namespace is not None:
        idempotency_key = f"{namespace}|{idempotency_key}"
    resource_id = new_id()
    claimed_at = utcnow()
    try:
        async with ctx.runtime.sessions() as session, session.begin():
            session.add(
                IdempotencyRecord(
                    tenant=tenant,
                    key=idempotency_key,
                    request_hash=fingerprint,
                    resource_id=resource_id,
                    created_at=claimed_at,
                )
            )
    except IntegrityError:
        claim_or_answer = await _meet_existing_claim(ctx, tenant, idempotency_key, fingerprint, find, model)
        if isinstance(claim_or_answer, tuple):
            resource_id, claimed_at = claim_or_answer
        else:
            return claim_or_answer, True
    try:
        result = await action(resource_id)
    except Exception:
        # A first attempt that was slow rather than dead may have committed this very id (then
        # ours failed on its primary key): its object is the answer to this key.
        async with ctx.runtime.sessions() as session:
            existing = await find(session, resource_id)
        if existing is not None:
            await _complete(ctx, tenant, idempotency_key, existing)
            return existing, True
        async with ctx.runtime.sessions() as session, session.begin():
            await session.exec(
                delete(IdempotencyRecord).where(
                    col(IdempotencyRecord.tenant) == tenant,
                    col(IdempotencyRecord.key) == idempotency_key,
                    col(IdempotencyRecord.status_code).is_(None),
                    col(IdempotencyRecord.created_at) == claimed_at,  # only our own claim
                )
            )
        raise
    await _complete(ctx, tenant, idempotency_key, result)
    return result, False


async def _meet_existing_claim(
    ctx: IntakeContext,
    tenant: str,
    idempotency_key: str,
    fingerprint: str,
    find: Callable[[AsyncSession, str], Awaitable[ResponseT | None]],
    model: type[ResponseT],
) -> ResponseT | tuple[str, datetime]:
    """The key is taken: the stored or committed answer, a 409/422, or (resource id, claim time)
    when this request has taken over an abandoned claim whose object was never committed."""
    in_flight = Problem(
        409,
        "a request with this Idempotency-Key is still in flight; retry shortly",
        slug="idempotency-in-flight",
        headers={"Retry-After": "1"},
    )
    async with ctx.runtime.sessions() as session:
        record = await session.get(IdempotencyRecord, (tenant, idempotency_key))
        if record is None:  # removed by a failing first request just now: let the client retry
            raise in_flight
        if record.request_hash != fingerprint:
            raise Problem(
                422, "this Idempotency-Key was used with another request", slug="idempotency-key-reused"
            )
        if record.status_code is not None and record.response is not None:
            return model.model_validate(record.response)
        reserved = record.resource_id
        claimed_at = record.created_at
        existing = await find(session, reserved) if reserved is not None else None
    if existing is not None:
        # Committed, but its request died (or has not yet answered) before completing the key.
        await _complete(ctx, tenant, idempotency_key, existing)
        return existing
    now = utcnow()
    if now - claimed_at <= timedelta(seconds=ctx.settings.idempotency_abandon_after_s):
        raise in_flight
    resource_id = reserved or new_id()  # claims written before resource_id existed have none
    async with ctx.runtime.sessions() as session, session.begin():
        # Compare and set: of two retries taking over at once, only one finds the old claim time.
        taken = await session.exec(
            update(IdempotencyRecord)
            .where(
                col(IdempotencyRecord.tenant) == tenant,
                col(IdempotencyRecord.key) == idempotency_key,
                col(IdempotencyRecord.status_code).is_(None),
                col(IdempotencyRecord.created_at) == claimed_at,
            )
            .values(created_at=now, resource_id=resource_id)
        )
        if taken.rowcount != 1:
            raise in_flight
    log.info("idempotency: took over an abandoned claim (tenant %s)", tenant)
    return resource_id, now


async def _complete(ctx: IntakeContext, tenant: str, idempotency_key: str, result: BaseModel) -> None:
    """Store the answer under the key, so every later request with it is replayed."""
    async with ctx.runtime.sessions() as session, session.begin():
        await session.exec(
            update(IdempotencyRecord)
            .where(col(IdempotencyRecord.tenant) == tenant, col(IdempotencyRecord.key) == idempotency_key)
            .values(status_code=201, response=result.model_dump(mode="json"))
        )


# -- signals ---------------------------------------------------------------------------------------


async def receive_signal(
    ctx: IntakeContext,
    tenant: str,
    payload: SignalCreate,
    source: str,
    *,
    service_code: str | None = None,
    area: Area | None = None,
    signal_id: str | None = None,
    media: CheckedFile | None = None,
) -> SignalCreated:
    """Store the signal, its sealed contact and its ``signal.received`` event in one transaction
    (shared with concurrent requests by the group commit); ``signal_id`` is the id reserved with
    the request's Idempotency-Key. A ``media`` file sent with the signal (Open311's ``media``) is
    written to the volume first and counted in the same transaction, with its
    ``signal.attachment_added``; if the transaction fails, the file is removed again."""
    signal = service.signal_row(
        tenant, payload, source, area=area, service_code=service_code, signal_id=signal_id
    )
    rows: list[tuple[str, dict[str, Any]]] = [
        ("signal", signal),
        ("status_entry", service.status_row(signal)),
    ]
    if payload.reporter is not None and signal["has_contact"]:
        rows.append(("contact", service.contact_row(ctx.cipher, signal, payload.reporter)))
    stored = None
    if media is not None:
        attachment_id = new_id()
        stored = await asyncio.to_thread(
            attachments.store,
            ctx.settings.attachments_dir,
            tenant,
            signal["id"],
            attachment_id,
            media.content,
            media.kind,
        )
        signal["attachments"] = 1
        row = service.attachment_row(signal["id"], tenant, attachment_id, stored, signal["received_at"])
        rows.append(("attachment", row))
    event = make_event(tenant=tenant, service="intake", data=service.signal_received_from_row(signal))
    rows.append(("outbox", outbox_row(SignalReceived.bus_subject(tenant), event)))
    if stored is not None:
        added = SignalAttachmentAdded(signal_id=signal["id"], attachments=1)
        attached = make_event(tenant=tenant, service="intake", data=added)
        rows.append(("outbox", outbox_row(SignalAttachmentAdded.bus_subject(tenant), attached)))
    try:
        await ctx.writer.submit(rows)
    except BaseException:
        if stored is not None:
            stored.path.unlink(missing_ok=True)
        raise
    return SignalCreated(
        id=signal["id"],
        tracking_code=signal["tracking_code"],
        status_url=ctx.status_url(signal["tracking_code"]),
    )


async def receive_signal_once(
    ctx: IntakeContext,
    tenant: str,
    payload: SignalCreate,
    source: str,
    idempotency_key: str | None,
    *,
    service_code: str | None = None,
    endpoint: str = "signals",
    media: CheckedFile | None = None,
) -> tuple[SignalCreated, bool]:
    # The location (and a file sent with the signal) is checked before the key is claimed, so a
    # refused request leaves nothing behind.
    area = ctx.locate(tenant, payload.location)
    if idempotency_key is None:  # the common case: no fingerprint to compute, no key to claim
        created = await receive_signal(
            ctx, tenant, payload, source, service_code=service_code, area=area, media=media
        )
        return created, False
    if media is not None:  # another file under the same key is another request
        endpoint = f"{endpoint}|media:{hashlib.sha256(media.content).hexdigest()}"
    return await run_once(
        ctx,
        tenant,
        idempotency_key,
        service.request_fingerprint(payload, endpoint),
        lambda signal_id: receive_signal(
            ctx,
            tenant,
            payload,
            source,
            service_code=service_code,
            area=area,
            signal_id=signal_id,
            media=media,
        ),
        lambda session, signal_id: find_signal(ctx, session, tenant, signal_id),
        SignalCreated,
    )


async def find_signal(
    ctx: IntakeContext, session: AsyncSession, tenant: str, signal_id: str
) -> SignalCreated | None:
    """The answer to the request that created this signal, if it was committed."""
    signal = await session.get(Signal, signal_id)
    if signal is None or signal.tenant != tenant:
        return None
    return SignalCreated(
        id=signal.id, tracking_code=signal.tracking_code, status_url=ctx.status_url(signal.tracking_code)
    )


async def read_contact(ctx: IntakeContext, tenant: str, signal_id: str, actor: str) -> ContactPublic | None:
    """A reporter's contact for notifier: :func:`read_contacts` for one signal."""
    answer = await read_contacts(ctx, tenant, [signal_id], actor)
    return answer.contacts[0] if answer.contacts else None


async def read_contacts(ctx: IntakeContext, tenant: str, signal_ids: list[str], actor: str) -> ContactsPublic:
    """Reporters' contacts for notifier, in one query, each id answered once in the order asked.

    Every signal's read is audited on its own, found or not, and the contacts are handed out only
    after the audit records have committed. The records go through the group commit with the
    signals being written, not in a transaction of their own: on SQLite a transaction per read
    queued for the one write lock with every signal's, at one read per acknowledgement mail."""
    wanted = list(dict.fromkeys(signal_ids))
    async with ctx.runtime.sessions() as session:
        found = await service.read_contacts(session, ctx.cipher, tenant, wanted)
    await ctx.writer.submit(
        [
            (
                "audit",
                service.audit_row(
                    tenant,
                    actor,
                    "contact.read",
                    f"signal:{signal_id}",
                    "ok" if signal_id in found else "not_found",
                ),
            )
            for signal_id in wanted
        ]
    )
    return ContactsPublic(
        contacts=[found[signal_id] for signal_id in wanted if signal_id in found],
        missing=[signal_id for signal_id in wanted if signal_id not in found],
    )


# -- conversations ---------------------------------------------------------------------------------


async def receive_conversation(
    ctx: IntakeContext,
    tenant: str,
    payload: ConversationCreate,
    source: str,
    conversation_id: str | None = None,
) -> ConversationCreated:
    conversation = service.build_conversation(tenant, payload, source, conversation_id=conversation_id)
    async with ctx.runtime.sessions() as session, session.begin():
        session.add(conversation)
        event = make_event(
            tenant=tenant, service="intake", data=service.conversation_received_data(conversation)
        )
        enqueue(session, ConversationReceived.bus_subject(tenant), event)
    ctx.runtime.events_committed()
    return ConversationCreated(signal_id=conversation.id)


async def receive_conversation_once(
    ctx: IntakeContext, tenant: str, payload: ConversationCreate, source: str, idempotency_key: str | None
) -> tuple[ConversationCreated, bool]:
    return await run_once(
        ctx,
        tenant,
        idempotency_key,
        service.request_fingerprint(payload, "conversations"),
        lambda conversation_id: receive_conversation(ctx, tenant, payload, source, conversation_id),
        find_conversation(tenant),
        ConversationCreated,
    )


def find_conversation(tenant: str) -> Callable[[AsyncSession, str], Awaitable[ConversationCreated | None]]:
    async def find(session: AsyncSession, conversation_id: str) -> ConversationCreated | None:
        conversation = await session.get(Conversation, conversation_id)
        if conversation is None or conversation.tenant != tenant:
            return None
        return ConversationCreated(signal_id=conversation.id)

    return find


# -- attachments -----------------------------------------------------------------------------------


async def add_attachment(
    ctx: IntakeContext,
    tenant: str,
    signal_id: str,
    content: bytes,
    filename: str | None,
    declared_type: str | None,
    idempotency_key: str | None = None,
) -> tuple[AttachmentPublic, bool]:
    """Sniff, store on the volume, then count it on the signal with its event in one transaction;
    under an ``Idempotency-Key`` at most once (returns (attachment, replayed))."""
    async with ctx.runtime.sessions() as session:
        signal = await session.get(Signal, signal_id)
    if signal is None or signal.tenant != tenant or signal.erased_at is not None:
        raise Problem(404, "no signal has this id", slug="unknown-signal")
    fingerprint = hashlib.sha256(
        f"attachments|{signal_id}|{hashlib.sha256(content).hexdigest()}".encode()
    ).hexdigest()

    async def attach(attachment_id: str) -> AttachmentPublic:
        kind = check_attachment(ctx, signal.attachments, content, filename, declared_type)
        return await store_attachment(ctx, signal, content, kind, attachment_id)

    return await run_once(
        ctx, tenant, idempotency_key, fingerprint, attach, find_attachment, AttachmentPublic
    )


async def find_attachment(session: AsyncSession, attachment_id: str) -> AttachmentPublic | None:
    """The answer to the request that stored this attachment, if it was committed."""
    row = await session.get(Attachment, attachment_id)
    if row is None:
        return None
    signal = await session.get(Signal, row.signal_id)
    return _attachment_public(row, signal.attachments if signal is not None else 1)


def _attachment_public(row: Attachment, count: int) -> AttachmentPublic:
    """What a portal is told of a stored attachment; ``count`` is the signal's number of them."""
    return AttachmentPublic(
        id=row.id,
        signal_id=row.signal_id,
        media_type=row.media_type,
        size=row.size,
        sha256=row.sha256,
        attachments=count,
    )


#: The scopes with which staff read signals (a partner reads those forwarded to it).
STAFF_READ_SCOPES = ("cases:read", "signals:read")


async def readable_signal(ctx: IntakeContext, principal: Principal, signal_id: str) -> Signal:
    """A signal of the caller's tenant that the caller may see; 404 otherwise (as if it did not
    exist). A key bound to departments sees the signals whose case they hold now, responsible or
    informed (``holders``; for a case that has not moved since migration 0006, every department it
    reached); a partner organisation's key (``partner:<code>``) the signals whose case was
    forwarded to it (routing never takes a partner off a case)."""
    async with ctx.runtime.sessions() as session:
        signal = await session.get(Signal, signal_id)
    if signal is None or signal.tenant != principal.tenant or signal.erased_at is not None:
        raise Problem(404, "no signal has this id", slug="unknown-signal")
    if any(principal.allows(scope) for scope in STAFF_READ_SCOPES):
        holding = signal.holders if signal.holders is not None else signal.departments or ()
        reached = {signal.responsible or "", *holding}
        sees = not principal.departments or any(principal.sees_department(code) for code in reached)
    else:
        sees = bool(principal.partners & set(signal.partners or ()))
    if not sees:
        raise Problem(404, "no signal has this id", slug="unknown-signal")
    return signal


async def list_attachments(ctx: IntakeContext, principal: Principal, signal_id: str) -> AttachmentList:
    """The signal's attachments, oldest first (what staff see before they open one)."""
    signal = await readable_signal(ctx, principal, signal_id)
    async with ctx.runtime.sessions() as session:
        rows = await session.exec(
            select(Attachment)
            .where(col(Attachment.signal_id) == signal.id)
            .order_by(col(Attachment.created_at))
        )
        items = [AttachmentInfo.model_validate(row, from_attributes=True) for row in rows.all()]
    return AttachmentList(signal_id=signal.id, items=items)


async def open_attachment(
    ctx: IntakeContext, principal: Principal, signal_id: str, attachment_id: str
) -> tuple[Path, str]:
    """The stored file and its media type, for staff to look at. Photos may show people, so each
    opening is audited as a contact read is (``attachment.read``), committed before the file goes."""
    signal = await readable_signal(ctx, principal, signal_id)
    async with ctx.runtime.sessions() as session:
        row = await session.get(Attachment, attachment_id)
    path = attachments.stored_path(ctx.settings.attachments_dir, signal.tenant, signal.id, attachment_id)
    if row is None or row.signal_id != signal.id or not path.is_file():
        raise Problem(404, "this signal has no attachment with this id", slug="unknown-attachment")
    await ctx.writer.submit(
        [
            (
                "audit",
                service.audit_row(
                    signal.tenant, principal.actor, "attachment.read", f"attachment:{row.id}", "ok"
                ),
            )
        ]
    )
    return path, row.media_type


def check_attachment(
    ctx: IntakeContext, attached: int, content: bytes, filename: str | None, declared_type: str | None
) -> str:
    """Refuse a file before anything is stored or sent: too large (413), not a photo or PDF, or
    not what its name or type claims (415), one too many for a signal that has ``attached``
    files already (409). Returns its kind as sniffed (``attachments.sniff``), for
    :func:`store_attachment`."""
    if len(content) > ctx.settings.max_attachment_bytes:
        raise Problem(
            413,
            f"an attachment may be at most {ctx.settings.max_attachment_bytes} bytes",
            slug="attachment-too-large",
            errors=[{"pointer": "/file", "detail": "the file is too large"}],
        )
    try:
        kind = attachments.sniff(content)
        attachments.check_claims(kind, filename, declared_type)
    except attachments.AttachmentRefused as exc:
        raise Problem(
            exc.status,
            str(exc),
            slug="attachment-refused",
            errors=[{"pointer": "/file", "detail": str(exc)}],
        ) from None
    if attached >= ctx.settings.max_attachments_per_signal:
        raise _too_many_attachments(ctx)
    return kind


@dataclass(frozen=True)
class CheckedFile:
    """A file :func:`check_attachment` passed, with the kind it sniffed."""

    content: bytes
    kind: str


def check_new_signal_file(ctx: IntakeContext, upload: Upload) -> CheckedFile:
    """Check a file sent together with a new signal (which has no attachments yet)."""
    kind = check_attachment(ctx, 0, upload.content, upload.filename, upload.declared_type)
    return CheckedFile(content=upload.content, kind=kind)


def _too_many_attachments(ctx: IntakeContext) -> Problem:
    return Problem(
        409,
        f"a signal can have at most {ctx.settings.max_attachments_per_signal} attachments",
        slug="too-many-attachments",
    )


async def store_attachment(
    ctx: IntakeContext, signal: Signal, content: bytes, kind: str, attachment_id: str | None = None
) -> AttachmentPublic:
    """Store a file :func:`check_attachment` passed (``kind`` is what it returned), and count it
    with its event in one transaction."""
    attachment_id = attachment_id or new_id()
    stored = await asyncio.to_thread(
        attachments.store,
        ctx.settings.attachments_dir,
        signal.tenant,
        signal.id,
        attachment_id,
        content,
        kind,
    )
    try:
        async with ctx.runtime.sessions() as session, session.begin():
            # A conditional increment, so concurrent uploads never pass the limit together.
            result = await session.exec(
                update(Signal)
                .where(col(Signal.id) == signal.id)
                .where(col(Signal.attachments) < ctx.settings.max_attachments_per_signal)
                .values(attachments=Signal.attachments + 1)
            )
            if not result.rowcount:
                raise _too_many_attachments(ctx)
            row = Attachment(
                **service.attachment_row(signal.id, signal.tenant, attachment_id, stored, utcnow())
            )
            session.add(row)
            refreshed = await session.get(Signal, signal.id, populate_existing=True)
            count = refreshed.attachments if refreshed is not None else 1
            event = make_event(
                tenant=signal.tenant,
                service="intake",
                data=SignalAttachmentAdded(signal_id=signal.id, attachments=count),
            )
            enqueue(session, SignalAttachmentAdded.bus_subject(signal.tenant), event)
    except BaseException:
        stored.path.unlink(missing_ok=True)
        raise
    ctx.runtime.events_committed()
    return _attachment_public(row, count)


# -- tracking and feedback -------------------------------------------------------------------------


@dataclass(frozen=True)
class Tracked:
    """A signal as its resident sees it, with what their pages need around it."""

    view: TrackingPublic
    language: str
    """What the pages are written in: the resident's language as the tenant answers in it
    (``wording.resident_language``), so the page says what the mails say."""
    municipality: str
    timezone: str
    """The tenant's clock, in which the pages write dates and times (as its e-mails do)."""
    status_path: str
    """The tracking page's path under the public base URL (``/v1/tracking/<code>``): the pages link
    and post by path, so they stay on the origin that served them, behind any proxy prefix."""

    @property
    def feedback_path(self) -> str:
        return f"{self.status_path}/feedback"

    @property
    def actions_path(self) -> str:
        return f"{self.status_path}/updates"


async def tracking(ctx: IntakeContext, tracking_code: str) -> Tracked | None:
    """The public view of the signal with this code, or None for a code that does not exist."""
    async with ctx.runtime.sessions() as session:
        signal = await service.find_by_tracking_code(session, tracking_code)
        if signal is None:
            return None
        view = await _tracking_view(ctx, session, signal)
    tenant = ctx.tenant(signal.tenant)
    return Tracked(
        view=view,
        language=wording.resident_language(signal.language, tenant),
        municipality=tenant.name if tenant is not None else signal.tenant,
        timezone=wording.timezone_of(tenant),
        status_path=urlsplit(ctx.status_url(signal.tracking_code)).path,
    )


async def _tracking_view(ctx: IntakeContext, session: AsyncSession, signal: Signal) -> TrackingPublic:
    """The public view as of now, under the signal's tenant's reopening window."""
    within_days = wording.reopen_within_days(ctx.tenant(signal.tenant))
    return await service.tracking_view(session, signal, reopen_within_days=within_days, now=utcnow())


#: The statuses in which a case has ended with an outcome the resident can rate: the satisfaction
#: form is accepted in these only, and the tracking page asks for it in exactly these (a portal
#: asks when ``status`` is one of them and ``feedback_given`` is false). Not while the case runs
#: (an early answer would take the one answer a signal has), and not for a duplicate or a
#: withdrawn signal, which ended without an outcome of their own.
FEEDBACK_STATUSES: frozenset[str] = frozenset({"resolved", "closed", "rejected"})


def _no_feedback_now(ctx: IntakeContext, signal: Signal) -> Problem:
    """409 for feedback on a case that has not ended (or ended without an outcome to rate)."""
    tenant = ctx.tenant(signal.tenant)
    if tenant is not None and signal.status in closed_statuses(tenant):
        return Problem(
            409,
            f"a signal that is {signal.status} is not rated; feedback can be given on a case that "
            "was resolved, closed or rejected",
            slug="feedback-not-asked",
        )
    return Problem(
        409,
        f"the case has not ended yet (it is {signal.status}); feedback can be given once it is "
        "resolved, closed or rejected",
        slug="case-not-ended",
    )


async def submit_feedback(
    ctx: IntakeContext, tracking_code: str, payload: FeedbackCreate
) -> FeedbackAccepted:
    """The satisfaction form: once per signal and only once its case has ended
    (:data:`FEEDBACK_STATUSES`), the comment redacted, ``feedback.received`` out."""
    async with ctx.runtime.sessions() as session:
        signal = await service.find_by_tracking_code(session, tracking_code)
        given = signal is not None and await session.get(Feedback, signal.id) is not None
    if signal is None:
        raise Problem(404, "no signal has this tracking code", slug="unknown-tracking-code")
    if given:
        raise _feedback_already_given()
    if signal.status not in FEEDBACK_STATUSES:
        raise _no_feedback_now(ctx, signal)
    comment = redact(payload.comment.strip()) if payload.comment and payload.comment.strip() else None
    try:
        async with ctx.runtime.sessions() as session, session.begin():
            session.add(
                Feedback(
                    signal_id=signal.id,
                    tenant=signal.tenant,
                    satisfied=payload.satisfied,
                    score=payload.score,
                    comment=comment,
                )
            )
            await session.flush()
            data = FeedbackReceived(
                signal_id=signal.id,
                case_id=signal.case_id,
                satisfied=payload.satisfied,
                score=payload.score,
                comment=comment,
            )
            event = make_event(tenant=signal.tenant, service="intake", data=data)
            enqueue(session, FeedbackReceived.bus_subject(signal.tenant), event)
    except IntegrityError:  # another answer was stored meanwhile
        raise _feedback_already_given() from None
    ctx.runtime.events_committed()
    return FeedbackAccepted(
        tracking_code=signal.tracking_code, satisfied=payload.satisfied, score=payload.score
    )


def _feedback_already_given() -> Problem:
    return Problem(409, "feedback was already given for this signal", slug="feedback-already-given")


# -- the resident's own actions --------------------------------------------------------------------


def _not_now(view: TrackingPublic, action: str) -> Problem:
    """409 for a move the case does not allow now; ``allowed`` lists those it does."""
    allowed = sorted(view.actions)
    until = view.reopen_until
    # Only when the window is the reason: within it, a 409 from routing means the case moved on.
    if (
        action == "reopen"
        and until is not None
        and view.status in REOPENABLE
        and "reopen" not in view.actions
    ):
        return Problem(
            409,
            f"the case ended too long ago to be reopened (until {until.isoformat()}); please make a new report",
            slug="reopen-window-passed",
            allowed=allowed,
            reopen_until=until.isoformat(),
        )
    return Problem(
        409,
        f"a signal that is {view.status} cannot be given a {action} now",
        slug="resident-action-not-possible",
        allowed=allowed,
    )


@dataclass(frozen=True)
class Upload:
    """A file a resident sent with their page's form or to ``…/attachments``."""

    content: bytes
    filename: str | None
    declared_type: str | None


async def resident_update(
    ctx: IntakeContext, tracking_code: str, payload: ResidentUpdateCreate, photo: Upload | None = None
) -> ResidentUpdateAccepted:
    """The resident answers a question, reopens, or withdraws (``RESIDENT_ACTIONS``): passed on to
    routing on their behalf with intake's service key, the text redacted first like everything that
    leaves intake. The same action with the same text on the same state of the case is one update
    at routing (a double click, a retry), however often it is sent.

    A ``photo`` (the answer to "can you send a photo?") is checked before the move is sent, and
    stored once routing made it: a refused file changes nothing, and a move refused by routing
    stores no file."""
    note = payload.note
    if note is None and payload.action in ("reply", "reopen"):
        raise Problem(
            422,
            "the request has invalid fields",
            slug="invalid-request",
            errors=[{"pointer": "/text", "detail": f"a {payload.action} needs a text"}],
        )
    async with ctx.runtime.sessions() as session:
        signal = await service.find_by_tracking_code(session, tracking_code)
        view = None if signal is None else await _tracking_view(ctx, session, signal)
    if signal is None or view is None:
        raise Problem(404, "no signal has this tracking code", slug="unknown-tracking-code")
    if signal.case_id is None or payload.action not in view.actions:  # no case: no move offered
        raise _not_now(view, payload.action)
    if photo is not None:
        if signal.erased_at is not None:
            raise _erased()
        kind = check_attachment(ctx, signal.attachments, photo.content, photo.filename, photo.declared_type)
    to = RESIDENT_ACTIONS[payload.action][0]
    fingerprint = f"{signal.id}|{signal.status_sequence}|{payload.action}|{note or ''}"
    update = caseupdates.CaseUpdate(
        case_id=signal.case_id,
        status=to,
        public_note=redact(note) if note else None,
        update_id="resident:" + hashlib.sha256(fingerprint.encode()).hexdigest()[:40],
        on_behalf_of_resident=True,
    )
    unavailable = Problem(
        503,
        "the case service cannot take this now; please try again in a minute",
        slug="case-service-unavailable",
        headers={"Retry-After": "60"},
    )
    try:
        key = caseupdates.service_key(ctx.settings.service_keys_dir, signal.tenant)
        await caseupdates.send(ctx.http, ctx.settings.routing_url, key, update)
    except (caseupdates.NoServiceKey, caseupdates.RoutingUnavailable):
        raise unavailable from None
    except caseupdates.RoutingRefused as refused:
        if refused.status == 409:  # the case moved on since intake last heard of it
            raise _not_now(view, payload.action) from None
        log.error("routing refused a resident's %s (%s): %s", payload.action, refused.status, refused.detail)
        raise unavailable from None
    log.info("resident %s on signal %s passed on to routing", payload.action, signal.id)
    if photo is not None:
        await _store_once(ctx, signal, photo.content, kind)
    return ResidentUpdateAccepted(tracking_code=signal.tracking_code, action=payload.action, status=to)


async def resident_attachment(
    ctx: IntakeContext, tracking_code: str, photo: Upload, idempotency_key: str | None = None
) -> tuple[ResidentAttachmentAccepted, bool]:
    """A photo or PDF the resident adds to their open signal by its tracking code (public, as the
    tracking page is); refused once the case has ended. The same file sent again is stored once;
    under an ``Idempotency-Key`` (a portal or app sending for the resident) also when two copies
    arrive at once, and another file under the key is a 422. Returns (answer, replayed)."""
    async with ctx.runtime.sessions() as session:
        signal = await service.find_by_tracking_code(session, tracking_code)
    if signal is None:
        raise Problem(404, "no signal has this tracking code", slug="unknown-tracking-code")
    if signal.erased_at is not None:
        raise _erased()
    tenant = ctx.tenant(signal.tenant)
    if tenant is not None and signal.status in closed_statuses(tenant):
        raise Problem(
            409,
            f"a signal that is {signal.status} takes no more attachments",
            slug="case-ended",
        )
    kind = check_attachment(ctx, signal.attachments, photo.content, photo.filename, photo.declared_type)
    digest = hashlib.sha256(photo.content).hexdigest()

    def accepted(count: int) -> ResidentAttachmentAccepted:
        return ResidentAttachmentAccepted(
            tracking_code=signal.tracking_code,
            media_type=attachments.CANONICAL_TYPE[kind],
            size=len(photo.content),
            attachments=count,
        )

    async def store(attachment_id: str) -> ResidentAttachmentAccepted:
        return accepted(await _store_once(ctx, signal, photo.content, kind, attachment_id))

    async def find(session: AsyncSession, attachment_id: str) -> ResidentAttachmentAccepted | None:
        stored = await session.get(Attachment, attachment_id)
        current = await session.get(Signal, signal.id)
        if stored is None or stored.signal_id != signal.id or current is None:
            return None
        return accepted(current.attachments)

    return await run_once(
        ctx,
        signal.tenant,
        idempotency_key,
        hashlib.sha256(f"resident-attachments|{signal.id}|{digest}".encode()).hexdigest(),
        store,
        find,
        ResidentAttachmentAccepted,
        namespace=f"tracking:{signal.id}",
    )


def _erased() -> Problem:
    """A resident's file for a signal whose person's data was erased on request: none is taken.
    The tracking page still shows the signal, so this is not a 404."""
    return Problem(
        409,
        "the personal data of this signal was erased on request; it takes no new files",
        slug="signal-erased",
    )


async def _store_once(
    ctx: IntakeContext, signal: Signal, content: bytes, kind: str, attachment_id: str | None = None
) -> int:
    """Store the resident's file unless the signal already has this very file (a form sent twice);
    the signal's number of attachments after it."""
    digest = hashlib.sha256(content).hexdigest()
    async with ctx.runtime.sessions() as session:
        known = await session.exec(
            select(Attachment.id).where(
                col(Attachment.signal_id) == signal.id, col(Attachment.sha256) == digest
            )
        )
        if known.first() is not None:
            current = await session.get(Signal, signal.id)
            return current.attachments if current is not None else signal.attachments
    return (await store_attachment(ctx, signal, content, kind, attachment_id)).attachments


# -- what intake follows ---------------------------------------------------------------------------


def consumers(ctx: IntakeContext, *, take_turns: bool = False) -> list[ConsumerSpec]:
    """Intake follows the case so that the public tracking page and Open311 show its status, and
    the departments' feeds so that it knows whose keys may open a signal's attachments; each
    consumer applies a fetched batch in one transaction with its inbox claims.

    All five change signal rows from what ``read_ahead`` read. PostgreSQL locks those rows
    (``service.read_ahead``); on SQLite, where a read locks nothing, the app asks them to
    ``take_turns`` (one intake process: one lock, ``ConsumerSpec.exclusive``)."""

    async def on_status_changed(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        await service.apply_status_change(session, read_data(event, CaseStatusChanged), event.time)

    async def on_routed(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        await service.apply_routed(session, read_data(event, SignalRouted))

    async def on_classified(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        await service.apply_classified(session, read_data(event, SignalClassified))

    async def on_department_assigned(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        await service.apply_department_assigned(session, read_data(event, DepartmentAssigned))

    async def on_departments_changed(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        await service.apply_departments_changed(session, read_data(event, CaseDepartmentsChanged))

    async def read_ahead(session: AsyncSession, events: list[CloudEvent]) -> None:
        ids = {sid for event in events if isinstance(sid := event.data.get("signal_id"), str)}
        status = any(event.type == CaseStatusChanged.event_type() for event in events)
        await service.read_ahead(session, ids, status_entries=status)

    turns = asyncio.Lock() if take_turns else None
    applies: list[tuple[str, str, Apply]] = [
        ("intake-case-status", CaseStatusChanged.subscription(), on_status_changed),
        ("intake-signal-routed", SignalRouted.subscription(), on_routed),
        ("intake-signal-classified", SignalClassified.subscription(), on_classified),
        ("intake-dept-assigned", DepartmentAssigned.subscription(), on_department_assigned),
        ("intake-case-departments", CaseDepartmentsChanged.subscription(), on_departments_changed),
    ]
    return [
        ConsumerSpec(durable, subject, apply=apply, prepare=read_ahead, exclusive=turns)
        for durable, subject, apply in applies
    ]
