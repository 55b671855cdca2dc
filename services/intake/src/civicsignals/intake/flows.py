"""Intake's orchestration: a signal stored with its event, idempotent requests, followed case status."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from nats.aio.msg import Msg
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, delete

from civicsignals.common.bus import ConsumerSpec
from civicsignals.common.events import (
    CaseStatusChanged,
    CloudEvent,
    SignalReceived,
    SignalRouted,
    make_event,
    read_data,
    utcnow,
)
from civicsignals.common.inbox import claim
from civicsignals.common.outbox import enqueue
from civicsignals.common.problems import Problem
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.intake import service
from civicsignals.intake.crypto import FieldCipher
from civicsignals.intake.models import IdempotencyRecord, SignalCreate, SignalCreated
from civicsignals.intake.settings import IntakeSettings


@dataclass
class IntakeContext:
    runtime: ServiceRuntime
    settings: IntakeSettings
    cipher: FieldCipher

    def status_url(self, tracking_code: str) -> str:
        return f"{self.settings.public_base_url.rstrip('/')}/v1/tracking/{tracking_code}"


async def receive_signal(
    ctx: IntakeContext, tenant: str, payload: SignalCreate, source: str
) -> SignalCreated:
    """Store the signal, its sealed contact and its ``signal.received`` event in one transaction."""
    signal = service.build_signal(tenant, payload, source)
    async with ctx.runtime.sessions() as session, session.begin():
        session.add(signal)
        await session.flush()
        session.add(service.first_status(signal))
        if payload.reporter is not None and signal.has_contact:
            session.add(service.seal_contact(ctx.cipher, signal, payload.reporter))
        event = make_event(tenant=tenant, service="intake", data=service.signal_received_data(signal))
        enqueue(session, SignalReceived.bus_subject(tenant), event)
    ctx.runtime.events_committed()
    return SignalCreated(
        id=signal.id, tracking_code=signal.tracking_code, status_url=ctx.status_url(signal.tracking_code)
    )


async def receive_signal_once(
    ctx: IntakeContext, tenant: str, payload: SignalCreate, source: str, idempotency_key: str | None
) -> tuple[SignalCreated, bool]:
    """``receive_signal`` under an ``Idempotency-Key`` (DESIGN §5); returns (response, replayed).

    The key is claimed in its own transaction first, so a concurrent request with the same key
    sees it in flight (409) instead of creating a second signal. A claim left by a crashed request
    is taken over after ``idempotency_abandon_after_s``.
    """
    if idempotency_key is None:
        return await receive_signal(ctx, tenant, payload, source), False
    if not 1 <= len(idempotency_key) <= 255:
        raise Problem(
            400,
            "the Idempotency-Key header must be 1 to 255 characters",
            slug="invalid-idempotency-key",
            errors=[{"pointer": "", "detail": "header Idempotency-Key has a bad length"}],
        )
    fingerprint = service.request_fingerprint(payload)
    try:
        async with ctx.runtime.sessions() as session, session.begin():
            session.add(IdempotencyRecord(tenant=tenant, key=idempotency_key, request_hash=fingerprint))
    except IntegrityError:
        async with ctx.runtime.sessions() as session, session.begin():
            record = await session.get(IdempotencyRecord, (tenant, idempotency_key))
            if record is None:  # removed by a failing first request just now: let the client retry
                raise Problem(
                    409, "a request with this Idempotency-Key is in flight", slug="idempotency-in-flight"
                ) from None
            if record.request_hash != fingerprint:
                raise Problem(
                    422,
                    "this Idempotency-Key was used with another request body",
                    slug="idempotency-key-reused",
                ) from None
            if record.status_code is not None and record.response is not None:
                return SignalCreated.model_validate(record.response), True
            abandoned = utcnow() - record.created_at > timedelta(
                seconds=ctx.settings.idempotency_abandon_after_s
            )
            if not abandoned:
                raise Problem(
                    409,
                    "a request with this Idempotency-Key is still in flight; retry shortly",
                    slug="idempotency-in-flight",
                    headers={"Retry-After": "1"},
                ) from None
            record.created_at = utcnow()
            session.add(record)
    try:
        created = await receive_signal(ctx, tenant, payload, source)
    except BaseException:
        async with ctx.runtime.sessions() as session, session.begin():
            await session.exec(
                delete(IdempotencyRecord).where(
                    col(IdempotencyRecord.tenant) == tenant, col(IdempotencyRecord.key) == idempotency_key
                )
            )
        raise
    async with ctx.runtime.sessions() as session, session.begin():
        record = await session.get(IdempotencyRecord, (tenant, idempotency_key))
        if record is not None:
            record.status_code = 201
            record.response = created.model_dump(mode="json")
            session.add(record)
    return created, False


def consumers(ctx: IntakeContext) -> list[ConsumerSpec]:
    """Intake follows the case so that the public tracking page shows its status."""

    async def on_status_changed(event: CloudEvent, _msg: Msg) -> None:
        change = read_data(event, CaseStatusChanged)
        async with ctx.runtime.sessions() as session, session.begin():
            if await claim(session, "intake-case-status", event.id):
                await service.apply_status_change(session, change, event.time)

    async def on_routed(event: CloudEvent, _msg: Msg) -> None:
        routed = read_data(event, SignalRouted)
        async with ctx.runtime.sessions() as session, session.begin():
            if await claim(session, "intake-signal-routed", event.id):
                await service.apply_routed(session, routed)

    return [
        ConsumerSpec("intake-case-status", CaseStatusChanged.subscription(), on_status_changed),
        ConsumerSpec("intake-signal-routed", SignalRouted.subscription(), on_routed),
    ]
