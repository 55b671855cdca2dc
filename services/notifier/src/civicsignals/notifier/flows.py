"""Notifier's orchestration: events from the bus become deliveries in the database.

The consumers never send anything themselves. Each records, in one transaction with its inbox
claim, what must go out and when (a :class:`~civicsignals.notifier.models.Delivery` with its
``next_attempt_at``); the dispatcher (``dispatch.py``) sends what is due. So a message survives any
restart, a redelivered event adds nothing, and several replicas share the sending.

- ``signal.received``: remember the signal's language and whether it has a contact; schedule the
  acknowledgement to go ``acknowledgement_wait_s`` later at the latest.
- ``signal.routed``: remember the case and its partners; the acknowledgement, now with the service
  promise and expected date, is due at once; one webhook per subscribed endpoint of each partner.
- ``case.status_changed``: a status mail for the resident, coalesced per case over
  ``coalesce_window_s``; one webhook per subscribed endpoint of the case's partners.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from nats.aio.msg import Msg
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common.bus import ConsumerSpec, NotReady
from civicsignals.common.events import (
    CaseStatusChanged,
    CloudEvent,
    SignalReceived,
    SignalRouted,
    read_data,
    utcnow,
)
from civicsignals.common.inbox import claim
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.notifier import messages, service
from civicsignals.notifier.messages import TemplateBook
from civicsignals.notifier.models import Delivery, SignalLink
from civicsignals.notifier.secretbox import SecretBox
from civicsignals.notifier.settings import NotifierSettings
from civicsignals.notifier.signing import message_id

log = logging.getLogger(__name__)

RECEIVED_CONSUMER = "notifier-signal-received"
ROUTED_CONSUMER = "notifier-signal-routed"
STATUS_CONSUMER = "notifier-case-status"
ROUTED_WAIT_DELIVERIES = 3
"""How many deliveries of a status change wait for its case's ``signal.routed`` (which travels on
another consumer and may be handled a moment later) before it goes on without knowing the partners."""


@dataclass
class NotifierContext:
    runtime: ServiceRuntime
    settings: NotifierSettings
    contacts: service.IntakeContacts
    templates: TemplateBook
    box: SecretBox
    http: httpx.AsyncClient
    wake_dispatcher: list[Any] = field(default_factory=list)

    def wake(self) -> None:
        """Tell the dispatcher that deliveries were committed that may be due now."""
        for wake in self.wake_dispatcher:
            wake()


def short_type(event_type: str) -> str:
    """``nl.civicsignals.signal.routed.v1`` → ``signal.routed`` (what endpoints subscribe to)."""
    parts = event_type.split(".")
    return ".".join(parts[2:-1]) if len(parts) >= 5 else event_type


def acknowledgement_id(tenant: str, signal_id: str) -> str:
    return message_id(tenant, signal_id, messages.ACKNOWLEDGEMENT)


async def _delivery_by_message_id(session: AsyncSession, mid: str) -> Delivery | None:
    return (await session.exec(select(Delivery).where(Delivery.message_id == mid))).first()


async def _link(session: AsyncSession, tenant: str, signal_id: str) -> SignalLink:
    link = await session.get(SignalLink, signal_id)
    if link is None:
        link = SignalLink(signal_id=signal_id, tenant=tenant)
        session.add(link)
    return link


def _merge_payload(delivery: Delivery, values: dict[str, Any]) -> None:
    payload = json.loads(delivery.payload)
    payload.update({key: value for key, value in values.items() if value is not None})
    delivery.payload = messages.dumps(payload)


# --- the consumers -------------------------------------------------------------------------------


async def _alone(
    ctx: NotifierContext, consumer: str, event: CloudEvent, apply: Callable[[AsyncSession], Awaitable[None]]
) -> bool:
    """Apply one event in a transaction of its own with its inbox claim (tools and tests; the
    consumers commit a fetched batch together)."""
    async with ctx.runtime.sessions() as session, session.begin():
        if not await claim(session, consumer, event.id):
            return False
        await apply(session)
    ctx.wake()
    return True


async def apply_signal_received(ctx: NotifierContext, session: AsyncSession, event: CloudEvent) -> None:
    """Remember the signal; schedule its acknowledgement (sent at once when routing answers)."""
    received = read_data(event, SignalReceived)
    now = utcnow()
    link = await _link(session, event.tenant, received.signal_id)
    link.tracking_code = received.tracking_code
    link.language = received.language or link.language
    link.has_contact = received.has_contact
    mid = acknowledgement_id(event.tenant, received.signal_id)
    ack = await _delivery_by_message_id(session, mid)
    if not received.has_contact:
        if ack is not None and ack.status == "scheduled":
            # signal.routed came first and scheduled it; there is nobody to write to.
            ack.status, ack.status_reason, ack.next_attempt_at = "skipped", "no_contact", None
        return
    if ack is None:
        session.add(
            Delivery(
                message_id=mid,
                tenant=event.tenant,
                channel="email",
                template=messages.ACKNOWLEDGEMENT,
                event_id=event.id,
                event_type=event.type,
                event_time=event.time,
                signal_id=received.signal_id,
                payload=messages.dumps(
                    {"tracking_code": received.tracking_code, "language": received.language}
                ),
                next_attempt_at=now + timedelta(seconds=ctx.settings.acknowledgement_wait_s),
            )
        )
    elif ack.status == "scheduled":
        _merge_payload(ack, {"tracking_code": received.tracking_code, "language": received.language})


async def on_signal_received(ctx: NotifierContext, event: CloudEvent) -> bool:
    """``apply_signal_received`` in a transaction of its own; False for an event handled before."""
    return await _alone(
        ctx, RECEIVED_CONSUMER, event, lambda session: apply_signal_received(ctx, session, event)
    )


async def apply_signal_routed(ctx: NotifierContext, session: AsyncSession, event: CloudEvent) -> None:
    """Release the acknowledgement with the service promise; webhooks to the case's partners."""
    routed = read_data(event, SignalRouted)
    now = utcnow()
    link = await _link(session, event.tenant, routed.signal_id)
    link.case_id = routed.case_id
    link.tracking_code = routed.tracking_code
    link.partners = list(routed.partners)
    link.service_promise = routed.service_promise
    link.due_at = routed.due_at
    if link.has_contact is not False:
        values = {
            "tracking_code": routed.tracking_code,
            "service_promise": routed.service_promise,
            "due_at": routed.due_at.isoformat() if routed.due_at else None,
        }
        mid = acknowledgement_id(event.tenant, routed.signal_id)
        ack = await _delivery_by_message_id(session, mid)
        if ack is None:
            ack = Delivery(
                message_id=mid,
                tenant=event.tenant,
                channel="email",
                template=messages.ACKNOWLEDGEMENT,
                event_id=event.id,
                event_type=event.type,
                event_time=event.time,
                signal_id=routed.signal_id,
                case_id=routed.case_id,
                payload=messages.dumps({"language": link.language}),
                next_attempt_at=now,
            )
            session.add(ack)
        if ack.status == "scheduled":
            _merge_payload(ack, values)
            ack.case_id = routed.case_id
            ack.event_id, ack.event_type, ack.event_time = event.id, event.type, event.time
            ack.next_attempt_at = now
            ack.updated_at = now
    await fan_out(session, event, routed.partners, signal_id=routed.signal_id, case_id=routed.case_id)


async def on_signal_routed(ctx: NotifierContext, event: CloudEvent) -> bool:
    """``apply_signal_routed`` in a transaction of its own; False for an event handled before."""
    return await _alone(ctx, ROUTED_CONSUMER, event, lambda session: apply_signal_routed(ctx, session, event))


async def apply_case_status_changed(
    ctx: NotifierContext, session: AsyncSession, event: CloudEvent, deliveries: int = 1
) -> None:
    """A status mail (coalesced per case) and webhooks to the case's partners."""
    changed = read_data(event, CaseStatusChanged)
    now = utcnow()
    link = await session.get(SignalLink, changed.signal_id)
    if (link is None or link.partners is None) and deliveries < ROUTED_WAIT_DELIVERIES:
        # Before any change: the event comes again, by when signal.routed has been handled.
        raise NotReady("signal.routed of this case has not been handled yet")
    if messages.status_mail_wanted(changed.to, changed.sequence) and (
        link is None or link.has_contact is not False
    ):
        await _coalesce_status_mail(ctx, session, event, changed, link, now)
    partners = list(link.partners or []) if link is not None else []
    await fan_out(session, event, partners, signal_id=changed.signal_id, case_id=changed.case_id)


async def on_case_status_changed(ctx: NotifierContext, event: CloudEvent, deliveries: int = 1) -> bool:
    """``apply_case_status_changed`` in a transaction of its own; False for an event handled before."""
    return await _alone(
        ctx,
        STATUS_CONSUMER,
        event,
        lambda session: apply_case_status_changed(ctx, session, event, deliveries),
    )


async def _coalesce_status_mail(
    ctx: NotifierContext,
    session: AsyncSession,
    event: CloudEvent,
    changed: CaseStatusChanged,
    link: SignalLink | None,
    now: datetime,
) -> None:
    """Merge the change into the case's mail still waiting out its window, or start a new one.

    The window runs from the first change, not the last, so a case that keeps changing still gets
    a mail every window. The mail carries the latest status (by sequence) and that change's note.
    """
    key = f"case:{event.tenant}:{changed.case_id}"
    values = {
        "status": changed.to,
        "public_note": changed.public_note,
        "tracking_code": changed.tracking_code,
        "language": link.language if link else None,
    }
    waiting = (await session.exec(select(Delivery).where(Delivery.coalesce_key == key))).first()
    if waiting is not None and waiting.status == "scheduled":
        if changed.sequence > waiting.sequence:
            payload = json.loads(waiting.payload)
            payload.update(values)
            waiting.payload = messages.dumps(payload)
            waiting.template = messages.template_for_status(changed.to)
            waiting.sequence = changed.sequence
            waiting.event_id, waiting.event_type, waiting.event_time = event.id, event.type, event.time
            waiting.updated_at = now
        return
    session.add(
        Delivery(
            message_id=message_id(event.id, "email"),
            tenant=event.tenant,
            channel="email",
            template=messages.template_for_status(changed.to),
            event_id=event.id,
            event_type=event.type,
            event_time=event.time,
            signal_id=changed.signal_id,
            case_id=changed.case_id,
            payload=messages.dumps(values),
            coalesce_key=key,
            sequence=changed.sequence,
            next_attempt_at=now + timedelta(seconds=ctx.settings.coalesce_window_s),
        )
    )


async def fan_out(
    session: AsyncSession, event: CloudEvent, partner_codes: list[str], *, signal_id: str, case_id: str
) -> int:
    """One webhook delivery per enabled endpoint of each partner that subscribed to this event.

    The body is the CloudEvent as it came from the bus (it holds no personal data, DESIGN §2); the
    ``webhook-id`` derives from the event and the endpoint, so a redelivery adds nothing.
    """
    wanted = short_type(event.type)
    body = event.to_json().decode()
    count = 0
    targets = await service.enabled_endpoints(session, event.tenant, partner_codes)
    missing = set(partner_codes) - {partner.code for partner, _ in targets}
    if missing:
        log.info(
            "event %s names partners without an enabled endpoint: %s", event.id, ", ".join(sorted(missing))
        )
    for partner, endpoint in targets:
        if wanted not in endpoint.event_types:
            continue
        # No look-up first: the inbox claim makes a redelivered event add nothing, and the unique
        # message_id turns a race between replicas into a rolled-back (and retried) transaction.
        session.add(
            Delivery(
                message_id=message_id(event.id, endpoint.id),
                tenant=event.tenant,
                channel="webhook",
                event_id=event.id,
                event_type=event.type,
                event_time=event.time,
                signal_id=signal_id,
                case_id=case_id,
                partner_id=partner.id,
                partner_code=partner.code,
                endpoint_id=endpoint.id,
                payload=body,
                next_attempt_at=utcnow(),
            )
        )
        count += 1
    return count


def consumers(ctx: NotifierContext) -> list[ConsumerSpec]:
    """The three consumers; each commits a fetched batch in one transaction, then wakes the dispatcher."""

    async def on_received(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        await apply_signal_received(ctx, session, event)

    async def on_routed(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        await apply_signal_routed(ctx, session, event)

    async def on_status(session: AsyncSession, event: CloudEvent, msg: Msg) -> None:
        await apply_case_status_changed(ctx, session, event, deliveries=msg.metadata.num_delivered or 1)

    return [
        ConsumerSpec(
            RECEIVED_CONSUMER, SignalReceived.subscription(), apply=on_received, after_commit=ctx.wake
        ),
        ConsumerSpec(ROUTED_CONSUMER, SignalRouted.subscription(), apply=on_routed, after_commit=ctx.wake),
        ConsumerSpec(
            STATUS_CONSUMER, CaseStatusChanged.subscription(), apply=on_status, after_commit=ctx.wake
        ),
    ]
