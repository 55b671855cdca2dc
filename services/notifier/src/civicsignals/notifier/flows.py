"""Notifier's orchestration: acknowledge every consenting reporter, once per signal."""

from __future__ import annotations

from dataclasses import dataclass

from nats.aio.msg import Msg
from sqlmodel import select

from civicsignals.common.bus import ConsumerSpec
from civicsignals.common.events import CloudEvent, SignalReceived, read_data, utcnow
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.notifier import service
from civicsignals.notifier.messages import TemplateBook, build_email
from civicsignals.notifier.models import Delivery
from civicsignals.notifier.settings import NotifierSettings

ACKNOWLEDGEMENT = "acknowledgement"


@dataclass
class NotifierContext:
    runtime: ServiceRuntime
    settings: NotifierSettings
    contacts: service.IntakeContacts
    templates: TemplateBook


async def _delivery(ctx: NotifierContext, event_id: str, template: str) -> Delivery | None:
    async with ctx.runtime.sessions() as session:
        query = select(Delivery).where(
            Delivery.event_id == event_id, Delivery.channel == "email", Delivery.template == template
        )
        return (await session.exec(query)).first()


async def _record(
    ctx: NotifierContext, event: CloudEvent, signal_id: str, template: str, status: str
) -> None:
    async with ctx.runtime.sessions() as session, session.begin():
        existing = (
            await session.exec(
                select(Delivery).where(
                    Delivery.event_id == event.id, Delivery.channel == "email", Delivery.template == template
                )
            )
        ).first()
        delivery = existing or Delivery(
            tenant=event.tenant,
            event_id=event.id,
            signal_id=signal_id,
            channel="email",
            template=template,
            status=status,
        )
        delivery.status = status
        delivery.attempts += 1
        if status == "sent":
            delivery.sent_at = utcnow()
        session.add(delivery)


async def acknowledge(ctx: NotifierContext, event: CloudEvent) -> str:
    """Send the acknowledgement with the tracking code to a reporter who consented; returns the outcome."""
    received = read_data(event, SignalReceived)
    done = await _delivery(ctx, event.id, ACKNOWLEDGEMENT)
    if done is not None and done.status != "failed":
        return done.status
    if not received.has_contact:
        return "skipped_no_contact"
    contact = await ctx.contacts.fetch(event.tenant, received.signal_id)
    if contact is None or not contact.email:
        await _record(ctx, event, received.signal_id, ACKNOWLEDGEMENT, "skipped_no_contact")
        return "skipped_no_contact"
    if not contact.consent:
        await _record(ctx, event, received.signal_id, ACKNOWLEDGEMENT, "skipped_no_consent")
        return "skipped_no_consent"
    tenant = ctx.runtime.tenants.get(event.tenant)
    base = ctx.settings.public_base_url.rstrip("/")
    rendered = ctx.templates.render(
        event.tenant,
        ACKNOWLEDGEMENT,
        received.language or contact.language,
        {
            "name": contact.name,
            "tracking_code": received.tracking_code,
            "tracking_url": f"{base}/v1/tracking/{received.tracking_code}",
            "municipality": tenant.name if tenant else event.tenant,
        },
    )
    mail = build_email(rendered, sender=ctx.settings.mail_from, recipient=contact.email, message_key=event.id)
    await service.send_mail(ctx.settings, mail)
    await _record(ctx, event, received.signal_id, ACKNOWLEDGEMENT, "sent")
    return "sent"


def consumers(ctx: NotifierContext) -> list[ConsumerSpec]:
    async def on_received(event: CloudEvent, _msg: Msg) -> None:
        await acknowledge(ctx, event)

    return [ConsumerSpec("notifier-signal-received", SignalReceived.subscription(), on_received)]
