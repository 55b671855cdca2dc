"""Notifier's orchestration: events from the bus become deliveries in the database.

The consumers never send anything themselves. Each records, in one transaction with its inbox
claim, what must go out and when (a :class:`~civicsignals.notifier.models.Delivery` with its
``next_attempt_at``); the dispatcher (``dispatch.py``) sends what is due. So a message survives any
restart, a redelivered event adds nothing, and several replicas share the sending.

- ``signal.received``: remember the signal's language and whether it has a contact; schedule the
  acknowledgement to go ``acknowledgement_wait_s`` later at the latest.
- ``signal.routed``: remember the case and its partners, and the classifier's language for a
  signal whose portal and intake gave none; the acknowledgement, now with the service promise and
  expected date, is due at once; one webhook per subscribed endpoint of each partner.
- ``case.status_changed``: a status mail for the resident, coalesced per case over
  ``coalesce_window_s``; one webhook per subscribed endpoint of the case's partners.
- ``signal.attachment_added``: one webhook per subscribed endpoint of the case's partners, so a
  partner learns that the resident (or the portal) sent a photo or PDF, and reads it from intake.
- ``signal.erased``: the person's data of the signal was erased at intake (AVG article 17). Its
  resident mails that wait are skipped (``erased``) and none is scheduled from then on; every
  endpoint of the case's partners that receives the case's data gets one ``signal.erased``
  webhook (article 19: tell every recipient).
- ``case.departments_changed``: the departments that hold the case now (``signal.routed`` names
  them at sequence 1), kept on the signal's link with the sequence they are of, so the delivery
  log shows a department-bound key the deliveries of the cases its departments hold, and no
  longer those of a case that left them. Nothing is sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol

from nats.aio.msg import Msg
from sqlalchemy import JSON, Integer, bindparam, update
from sqlalchemy import event as sa_event
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common.bus import ConsumerSpec, NotReady
from civicsignals.common.db import stage_insert
from civicsignals.common.events import (
    CaseDepartmentsChanged,
    CaseStatusChanged,
    CloudEvent,
    SignalAttachmentAdded,
    SignalErased,
    SignalReceived,
    SignalRouted,
    case_holders,
    make_event,
    read_data,
    utcnow,
)
from civicsignals.common.ids import new_id
from civicsignals.common.runtime import ServiceRuntime
from civicsignals.notifier import messages, service
from civicsignals.notifier.mailer import SmtpPool
from civicsignals.notifier.messages import TemplateBook
from civicsignals.notifier.models import (
    ATTEMPTS,
    CLAIMED_COLUMNS,
    DELIVERIES,
    SIGNAL_LINKS,
    WEBHOOK_EVENT_TYPES,
    Claimed,
    Delivery,
    Endpoint,
    Partner,
    SignalLink,
    in_flight_attempt,
)
from civicsignals.notifier.secretbox import SecretBox
from civicsignals.notifier.settings import NotifierSettings
from civicsignals.notifier.signing import message_id
from civicsignals.notifier.webhook_client import WebhookClient

log = logging.getLogger(__name__)

RECEIVED_CONSUMER = "notifier-signal-received"
ROUTED_CONSUMER = "notifier-signal-routed"
STATUS_CONSUMER = "notifier-case-status"
ATTACHMENT_CONSUMER = "notifier-signal-attachment-added"
ERASED_CONSUMER = "notifier-signal-erased"
DEPARTMENTS_CONSUMER = "notifier-case-departments"
ERASED = "erased"
"""The ``status_reason`` of a resident mail that was not sent because the person's data was erased."""
ROUTED_WAIT = timedelta(minutes=2)
"""How long a status change that does not name its partners (an event from before routing added
them) waits for its case's ``signal.routed`` (which travels on another consumer and is normally
handled a moment later, under load seconds later) before it goes on without knowing the partners.
By the event's age, not its deliveries: a count of quick redeliveries ran out under load, and
partners then missed status webhooks."""


class DispatcherHandle(Protocol):
    """The dispatcher, as the consumers see it: woken when deliveries were committed, and taking
    those they claimed as they created them (:meth:`~civicsignals.notifier.dispatch.Dispatcher.offer`)."""

    def wake(self) -> None: ...

    def accepting(self) -> bool: ...

    def offer(self, claimed: list[Claimed]) -> None: ...


@dataclass
class NotifierContext:
    runtime: ServiceRuntime
    settings: NotifierSettings
    contacts: service.IntakeContacts
    templates: TemplateBook
    box: SecretBox
    http: WebhookClient
    mailer: SmtpPool
    dispatcher: DispatcherHandle | None = None

    def wake(self) -> None:
        """Tell the dispatcher that deliveries were committed that may be due now."""
        if self.dispatcher is not None:
            self.dispatcher.wake()


def short_type(event_type: str) -> str:
    """``nl.civicsignals.signal.routed.v1`` → ``signal.routed`` (what endpoints subscribe to)."""
    parts = event_type.split(".")
    return ".".join(parts[2:-1]) if len(parts) >= 5 else event_type


def acknowledgement_id(tenant: str, signal_id: str) -> str:
    return message_id(tenant, signal_id, messages.ACKNOWLEDGEMENT)


@dataclass
class BatchView:
    """What a transaction's events need of the database, read before any of them writes.

    ``prepare`` fills it with one query per kind for every event of a consumer's batch; the applies
    then only look things up here and add rows, so nothing is read after the first write: the
    transaction holds SQLite's write lock only for the final flush (and PostgreSQL gets three
    queries a batch, not three an event). Rows an apply adds are registered too, so a later event
    of the same batch (a second status change of one case) sees them.
    """

    links: dict[str, SignalLink] = field(default_factory=dict)
    by_message_id: dict[str, Delivery] = field(default_factory=dict)
    by_coalesce_key: dict[str, Delivery] = field(default_factory=dict)
    endpoints: dict[str, list[tuple[Partner, Endpoint]]] = field(default_factory=dict)
    """Per tenant, the enabled endpoints of the partners the batch names."""
    claim_due_now: bool = False
    """Whether deliveries the batch makes due at once are claimed right there (the dispatcher runs):
    new webhooks, and the acknowledgement that ``signal.routed`` releases."""
    claimed: list[Claimed] = field(default_factory=list)
    """Those claimed so far: handed to the dispatcher once the transaction has committed."""
    erasure_told: dict[str, set[str]] = field(default_factory=dict)
    """Per signal that a ``signal.erased`` of the batch names, the endpoints that have its
    ``signal.erased`` webhook already (from an earlier erasure of it, or an earlier event of the
    batch): an erasure repeated at intake, a new event, tells no endpoint twice."""
    holder_moves: dict[str, tuple[list[str], int]] = field(default_factory=dict)
    """Per signal, the departments that hold its case as of the highest sequence the batch's events
    named, and that sequence; :func:`settle_holders` writes them before the commit."""
    KEY: ClassVar[str] = "notifier.batch"

    @staticmethod
    def of(session: AsyncSession) -> BatchView:
        view = session.info.get(BatchView.KEY)
        if not isinstance(view, BatchView):
            raise RuntimeError("notifier's apply ran without its prepare")
        return view

    def link(self, session: AsyncSession, tenant: str, signal_id: str) -> SignalLink:
        """The signal's link, created (and added) when this is the first event about it."""
        link = self.links.get(signal_id)
        if link is None:
            link = self.links[signal_id] = SignalLink(signal_id=signal_id, tenant=tenant)
            session.add(link)
        return link

    def add(self, session: AsyncSession, delivery: Delivery) -> Delivery:
        session.add(delivery)
        self.by_message_id[delivery.message_id] = delivery
        if delivery.coalesce_key:
            self.by_coalesce_key[delivery.coalesce_key] = delivery
        return delivery

    def enabled_endpoints(self, tenant: str, codes: list[str]) -> list[tuple[Partner, Endpoint]]:
        wanted = set(codes)
        return [pair for pair in self.endpoints.get(tenant, []) if pair[0].code in wanted]


def _signal_id(event: CloudEvent) -> str | None:
    value = event.data.get("signal_id")
    return value if isinstance(value, str) else None


async def prepare(ctx: NotifierContext, session: AsyncSession, events: list[CloudEvent]) -> None:
    """Read, in one query each, the links, deliveries and endpoints that ``events`` will touch.

    Tolerant of events that do not fit their schema: their apply raises, alone, as it should.
    """
    view = BatchView()
    session.info[BatchView.KEY] = view
    dispatcher = ctx.dispatcher
    if dispatcher is not None and dispatcher.accepting():
        view.claim_due_now = True

        def hand_over(_session: Any) -> None:
            dispatcher.offer(view.claimed)

        sa_event.listen(session.sync_session, "after_commit", hand_over, once=True)
    signal_ids = {sid for event in events if (sid := _signal_id(event))}
    if signal_ids:
        links = await session.exec(select(SignalLink).where(col(SignalLink.signal_id).in_(signal_ids)))
        view.links = {link.signal_id: link for link in links.all()}
    message_ids = {acknowledgement_id(e.tenant, sid) for e in events if (sid := _signal_id(e))}
    coalesce_keys = {
        status_mail_key(e.tenant, str(e.data.get("case_id")))
        for e in events
        if e.type == CaseStatusChanged.event_type()
    }
    erased_ids = {sid for e in events if e.type == SignalErased.event_type() and (sid := _signal_id(e))}
    if message_ids or coalesce_keys:
        wanted = col(Delivery.message_id).in_(message_ids) | col(Delivery.coalesce_key).in_(coalesce_keys)
        if erased_ids:  # and the erasure webhooks those signals have had
            wanted |= (
                col(Delivery.signal_id).in_(erased_ids)
                & (col(Delivery.channel) == "webhook")
                & (col(Delivery.event_type) == SignalErased.event_type())
            )
        deliveries = await session.exec(select(Delivery).where(wanted))
        for delivery in deliveries.all():
            view.by_message_id[delivery.message_id] = delivery
            if delivery.coalesce_key:
                view.by_coalesce_key[delivery.coalesce_key] = delivery
            if (
                delivery.event_type == SignalErased.event_type()
                and delivery.signal_id
                and delivery.endpoint_id
            ):
                view.erasure_told.setdefault(delivery.signal_id, set()).add(delivery.endpoint_id)
    codes: dict[str, set[str]] = {}
    for event in events:
        named = event.data.get("partners")  # routed, and status changes since routing names them
        if named is None:
            link = view.links.get(_signal_id(event) or "")
            named = link.partners if link is not None else None
        if isinstance(named, list):
            codes.setdefault(event.tenant, set()).update(str(code) for code in named)
    for tenant, tenant_codes in codes.items():
        view.endpoints[tenant] = await service.enabled_endpoints(session, tenant, sorted(tenant_codes))


def _merge_payload(
    delivery: Delivery, values: dict[str, Any], unless_set: dict[str, Any] | None = None
) -> None:
    """Write the values that are not None into a delivery's payload; those of ``unless_set`` only
    where the payload has none (the classifier's language never replaces the portal's)."""
    payload = json.loads(delivery.payload)
    payload.update({key: value for key, value in values.items() if value is not None})
    for key, value in (unless_set or {}).items():
        if value is not None and payload.get(key) is None:
            payload[key] = value
    delivery.payload = messages.dumps(payload)


# --- the consumers -------------------------------------------------------------------------------


def _acknowledgement(event: CloudEvent, signal_id: str, payload: dict[str, Any], due: datetime) -> Delivery:
    """A resident's acknowledgement, scheduled by whichever of ``signal.received`` and
    ``signal.routed`` comes first (the other one updates it)."""
    now = utcnow()
    return Delivery(
        # Every column given: a default_factory left to pydantic costs an inspection of the factory
        # each time, a large share of building the object.
        id=new_id(),
        message_id=acknowledgement_id(event.tenant, signal_id),
        tenant=event.tenant,
        channel="email",
        template=messages.ACKNOWLEDGEMENT,
        event_id=event.id,
        event_type=event.type,
        event_time=event.time,
        signal_id=signal_id,
        payload=messages.dumps(payload),
        next_attempt_at=due,
        created_at=now,
        updated_at=now,
    )


async def apply_signal_received(ctx: NotifierContext, session: AsyncSession, event: CloudEvent) -> None:
    """Remember the signal; schedule its acknowledgement (sent at once when routing answers)."""
    received = read_data(event, SignalReceived)
    now = utcnow()
    view = BatchView.of(session)
    link = view.link(session, event.tenant, received.signal_id)
    link.tracking_code = received.tracking_code
    link.language = received.language or link.language
    # An erasure applied before this event (a redelivery, or one that came late) stays in force.
    link.has_contact = received.has_contact and link.erased_at is None
    mid = acknowledgement_id(event.tenant, received.signal_id)
    ack = view.by_message_id.get(mid)
    if not link.has_contact:
        if ack is not None and ack.status == "scheduled":
            # signal.routed came first and scheduled it; there is nobody to write to.
            reason = ERASED if link.erased_at is not None else "no_contact"
            ack.status, ack.status_reason, ack.next_attempt_at = "skipped", reason, None
        return
    if ack is None:
        payload = {"tracking_code": received.tracking_code, "language": received.language}
        due = now + timedelta(seconds=ctx.settings.acknowledgement_wait_s)
        view.add(session, _acknowledgement(event, received.signal_id, payload, due))
    elif ack.status == "scheduled":
        _merge_payload(ack, {"tracking_code": received.tracking_code, "language": received.language})


async def apply_signal_routed(ctx: NotifierContext, session: AsyncSession, event: CloudEvent) -> None:
    """Release the acknowledgement with the service promise; webhooks to the case's partners."""
    routed = read_data(event, SignalRouted)
    now = utcnow()
    view = BatchView.of(session)
    link = view.link(session, event.tenant, routed.signal_id)
    link.case_id = routed.case_id
    link.tracking_code = routed.tracking_code
    # a forward applied before this event (status changes travel on another consumer) stays known
    _add_partners(link, routed.partners)
    # likewise a move between departments: routing is the case's first change (sequence 1)
    keep_holders(view, link, routed.responsible, routed.informed, ROUTED_SEQUENCE)
    link.service_promise = routed.service_promise
    link.due_at = routed.due_at
    # The language the portal gave or intake detected (signal.received) wins, in either order of
    # the two events (apply_signal_received overwrites with it); the classifier's fills the gap,
    # for the acknowledgement and for the status mails that read the link later.
    if link.language is None and routed.language is not None:
        link.language = routed.language
    if _may_mail(link):
        values = {
            "tracking_code": routed.tracking_code,
            "service_promise": routed.service_promise,
            "due_at": routed.due_at.isoformat() if routed.due_at else None,
        }
        mid = acknowledgement_id(event.tenant, routed.signal_id)
        ack = view.by_message_id.get(mid)
        if ack is None:
            ack = view.add(
                session, _acknowledgement(event, routed.signal_id, {"language": link.language}, now)
            )
        if ack.status == "scheduled":
            _merge_payload(ack, values, unless_set={"language": routed.language})
            ack.case_id = routed.case_id
            ack.event_id, ack.event_type, ack.event_time = event.id, event.type, event.time
            ack.updated_at = now
            if view.claim_due_now and ack not in session.new:
                _claim_now(ctx, session, ack, now)
            else:  # the dispatcher claims it (a new row: its attempt could not be written before it)
                ack.next_attempt_at = now
    fan_out(ctx, session, event, routed.partners, signal_id=routed.signal_id, case_id=routed.case_id)


async def apply_case_status_changed(ctx: NotifierContext, session: AsyncSession, event: CloudEvent) -> None:
    """A status mail (coalesced per case) and webhooks to the case's partners."""
    changed = read_data(event, CaseStatusChanged)
    now = utcnow()
    link = BatchView.of(session).links.get(changed.signal_id)
    partners = _partners_after(event, changed, link)
    if partners is None and now - event.time < ROUTED_WAIT:
        # Before any change: the event comes again, by when signal.routed has been handled.
        raise NotReady("signal.routed of this case has not been handled yet")
    if messages.status_mail_wanted(changed.to, changed.sequence, changed.actor) and (
        link is None or _may_mail(link)
    ):
        _coalesce_status_mail(ctx, session, event, changed, link, now)
    if link is not None and "partners" in event.data:
        _add_partners(link, changed.partners)  # a case forwarded later: its attachments reach them too
    fan_out(ctx, session, event, partners or [], signal_id=changed.signal_id, case_id=changed.case_id)


async def apply_attachment_added(ctx: NotifierContext, session: AsyncSession, event: CloudEvent) -> None:
    """Webhooks to the case's partners: the signal has a new photo or PDF. Only the count travels
    (DESIGN §2); the partner lists and opens the files at intake with its own key.

    A portal sends its photos right after the signal, so this event usually comes before the
    case's ``signal.routed``: it waits for it (redelivered) as a status change without partners
    does, and after ``ROUTED_WAIT`` goes to nobody.
    """
    added = read_data(event, SignalAttachmentAdded)
    link = BatchView.of(session).links.get(added.signal_id)
    if link is None or link.partners is None or link.case_id is None:
        if utcnow() - event.time < ROUTED_WAIT:
            raise NotReady("signal.routed of this signal has not been handled yet")
        log.info("event %s: the signal's routing is not known; no partner is told", event.id)
        return
    fan_out(ctx, session, event, list(link.partners), signal_id=added.signal_id, case_id=link.case_id)


async def apply_signal_erased(ctx: NotifierContext, session: AsyncSession, event: CloudEvent) -> None:
    """The person's data of the signal was erased at intake (AVG article 17): no resident mail of
    it goes out any more, and the case's partners are told (article 19).

    Resident mails that wait (the acknowledgement before its time, a status mail in its
    coalescing window, one waiting for a retry) are skipped with reason ``erased`` without an
    attempt: intake would answer "no contact" by now, but the mail must not even ask. One that
    is being sent at this moment is left to its attempt, which records what really happened.
    The link remembers the erasure, so a status change (or a late ``signal.received`` or
    ``signal.routed``) schedules no mail after it.

    The webhook goes to every enabled endpoint of the case's partners that receives the case's
    data (:func:`tells_of_erasure`), once per endpoint and signal. Like ``attachment_added`` it
    waits for the case's ``signal.routed`` (redelivered, before any change) and after
    ``ROUTED_WAIT`` goes to nobody; the mails are skipped then all the same.
    """
    erased = read_data(event, SignalErased)
    view = BatchView.of(session)
    known = view.links.get(erased.signal_id)
    case_id = (known.case_id if known is not None else None) or erased.case_id
    routed = known is not None and known.partners is not None and case_id is not None
    if not routed and utcnow() - event.time < ROUTED_WAIT:
        raise NotReady("signal.routed of this signal has not been handled yet")
    link = view.link(session, event.tenant, erased.signal_id)
    link.has_contact = False
    if link.erased_at is None:  # a repeated erasure keeps the first time
        link.erased_at = erased.erased_at
    skipped = await _skip_resident_mails(session, event.tenant, erased.signal_id)
    if not routed or case_id is None or link.partners is None:
        log.info(
            "event %s: signal %s erased (%d mails skipped); its routing is not known, no partner is told",
            event.id,
            erased.signal_id,
            skipped,
        )
        return
    told = view.erasure_told.setdefault(erased.signal_id, set())
    targets = fan_out(
        ctx,
        session,
        event,
        list(link.partners),
        signal_id=erased.signal_id,
        case_id=case_id,
        receives=lambda endpoint: endpoint.id not in told and tells_of_erasure(endpoint),
    )
    told.update(targets)
    log.info(
        "event %s: signal %s erased; %d mails skipped, %d endpoints told",
        event.id,
        erased.signal_id,
        skipped,
        len(targets),
    )


async def apply_case_departments_changed(
    ctx: NotifierContext, session: AsyncSession, event: CloudEvent
) -> None:
    """The case moved between departments: keep the departments that hold it now, so the delivery
    log shows the signal to their department-bound keys and no longer to those of a department it
    left. Nothing goes out (a department's own system learns it on its feed).

    An event about a signal notifier has no link for yet (routing's events and intake's
    ``signal.received`` travel on other consumers, in any order) creates the link, as the other
    events do, so the move is not lost: a ``signal.routed`` applied later keeps it (sequence 1 is
    older than any move)."""
    changed = read_data(event, CaseDepartmentsChanged)
    view = BatchView.of(session)
    link = view.link(session, event.tenant, changed.signal_id)
    keep_holders(view, link, changed.responsible, changed.informed, changed.sequence)


def tells_of_erasure(endpoint: Endpoint) -> bool:
    """Whether an endpoint gets ``signal.erased``: when it receives any of a case's data (it is
    subscribed to one of ``WEBHOOK_EVENT_TYPES``), whatever else its list says. Article 19 asks to
    tell every recipient; a subscription is not a way to opt out of that."""
    return any(kind in endpoint.event_types for kind in WEBHOOK_EVENT_TYPES)


async def tell_missed_erasures(
    ctx: NotifierContext, session: AsyncSession, partner: Partner, endpoint: Endpoint
) -> int:
    """An endpoint enabled again learns of the erasures it missed while it was disabled (AVG
    article 19: every recipient is told); how many ``signal.erased`` webhooks that schedules.

    It gets one for every erased signal of its partner's cases that it received data of (a
    webhook of another type delivered to it) and has no ``signal.erased`` delivery for: a disabled
    endpoint is left out when the erasure fans out. One that failed there is tried again at once.
    The event is notifier's own (the bus's copy is long acknowledged), with the erasure's ids
    and time; ``webhook-id`` and the check before make a second enabling tell no one twice.
    """
    if not tells_of_erasure(endpoint):
        return 0
    erased = await session.exec(
        select(SignalLink).where(
            SignalLink.tenant == endpoint.tenant,
            col(SignalLink.erased_at).is_not(None),
            col(SignalLink.case_id).is_not(None),
        )
    )
    links = {link.signal_id: link for link in erased.all() if partner.code in (link.partners or [])}
    if not links:
        return 0
    erased_type = SignalErased.event_type()
    deliveries = await session.exec(
        select(Delivery).where(Delivery.endpoint_id == endpoint.id, col(Delivery.signal_id).in_(list(links)))
    )
    received: set[str] = set()
    told: set[str] = set()
    now = utcnow()
    retried = 0
    for delivery in deliveries.all():
        assert delivery.signal_id is not None
        if delivery.event_type != erased_type:
            if delivery.status == "delivered":
                received.add(delivery.signal_id)
            continue
        told.add(delivery.signal_id)
        if delivery.status == "failed":  # failed while the endpoint was failing: once more, now
            delivery.status, delivery.status_reason = "scheduled", "endpoint enabled again"
            delivery.next_attempt_at = delivery.updated_at = now
            session.add(delivery)
            retried += 1
    view = BatchView(endpoints={endpoint.tenant: [(partner, endpoint)]})
    session.info[BatchView.KEY] = view
    scheduled = 0
    for signal_id in sorted(received - told):
        link = links[signal_id]
        assert link.case_id is not None and link.erased_at is not None
        data = SignalErased(signal_id=signal_id, case_id=link.case_id, erased_at=link.erased_at)
        event = make_event(tenant=endpoint.tenant, service="notifier", data=data)
        scheduled += len(
            fan_out(
                ctx,
                session,
                event,
                [partner.code],
                signal_id=signal_id,
                case_id=link.case_id,
                receives=lambda candidate: candidate.id == endpoint.id,
            )
        )
    return scheduled + retried


async def _skip_resident_mails(session: AsyncSession, tenant: str, signal_id: str) -> int:
    """Mark the signal's resident mails that still wait as ``skipped`` (``erased``); how many.

    One guarded UPDATE, not the rows read ahead: only a mail still ``scheduled`` when the
    statement runs changes, so one the dispatcher claimed meanwhile keeps its attempt (and its
    fence) intact. The coalescing key goes, so a later change of the case may start a mail of its
    own for another signal of it. Partners' contacts' mails have no signal, and webhooks are not
    e-mail: neither is touched."""
    d = DELIVERIES.c
    result = await session.exec(
        update(DELIVERIES)
        .where(
            d.tenant == tenant,
            d.signal_id == signal_id,
            d.channel == "email",
            d.status == "scheduled",
        )
        .values(
            status="skipped",
            status_reason=ERASED,
            next_attempt_at=None,
            coalesce_key=None,
            updated_at=utcnow(),
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _may_mail(link: SignalLink) -> bool:
    """Whether the resident of a known signal may get mail: a contact, not known to be absent,
    and no erasure."""
    return link.has_contact is not False and link.erased_at is None


def _add_partners(link: SignalLink, partners: list[str]) -> None:
    """Routing only ever adds partners to a case, so the union is right in any order of events.
    The link is written only when a partner is new: most status changes name no new one."""
    known = list(link.partners or [])
    added = [code for code in partners if code not in known]
    if added or link.partners is None:
        link.partners = [*known, *added]


ROUTED_SEQUENCE = 1
"""The case sequence of ``signal.routed``: the case's first change, older than any move."""


def newer_holders(
    known_sequence: int, responsible: str, informed: list[str], sequence: int
) -> list[str] | None:
    """The holders a change of ``sequence`` names, when it is newer than what is known (of
    ``known_sequence``); None when it is not. Routing's events come on several consumers and are
    redelivered, in any order: only the set of the highest sequence counts, and a change of a lower
    or equal sequence (an older move, a repeat, a ``signal.routed`` after a move) changes nothing."""
    if sequence <= known_sequence:
        return None
    return case_holders(responsible, informed)


def keep_holders(
    view: BatchView, link: SignalLink, responsible: str, informed: list[str], sequence: int
) -> bool:
    """Note the departments that hold the signal's case as of ``sequence`` for
    :func:`settle_holders`, unless a newer set is known (on the link, or from an earlier event of
    the batch); whether it was newer.

    Not written to the link object: its other attributes reach the database with the ORM's flush,
    which would write whatever the link held when the batch read it, and so undo a move that
    another consumer committed meanwhile (``signal.routed`` and the moves travel on two)."""
    noted = view.holder_moves.get(link.signal_id)
    known = max(link.holders_sequence, noted[1] if noted is not None else 0)
    holders = newer_holders(known, responsible, informed, sequence)
    if holders is None:
        return False
    view.holder_moves[link.signal_id] = (holders, sequence)
    return True


_MOVE_HOLDERS = (
    update(SIGNAL_LINKS)
    .where(
        SIGNAL_LINKS.c.signal_id == bindparam("moved_signal"),
        SIGNAL_LINKS.c.holders_sequence < bindparam("moved_sequence", type_=Integer),
    )
    .values(
        holders=bindparam("moved_holders", type_=JSON),
        holders_sequence=bindparam("moved_sequence", type_=Integer),
    )
)
"""One signal's holders as of a sequence, only over older ones: the database compares, so two
transactions that each read the link before the other wrote still keep the newest set."""


async def settle_holders(session: AsyncSession) -> None:
    """Write the holders the batch's events named (:func:`keep_holders`), once per signal, just
    before the commit: one guarded UPDATE each (after the flush that inserts the links new in the
    batch), so whichever transaction commits last, the set of the highest sequence stays. In
    signal order, so two batches that move the same signals lock their rows in the same order."""
    moves = BatchView.of(session).holder_moves
    if not moves:
        return
    await session.flush()
    connection = await session.connection()
    await connection.execute(
        _MOVE_HOLDERS,
        [
            {"moved_signal": signal_id, "moved_holders": holders, "moved_sequence": sequence}
            for signal_id, (holders, sequence) in sorted(moves.items())
        ],
    )
    moves.clear()


def _partners_after(
    event: CloudEvent, changed: CaseStatusChanged, link: SignalLink | None
) -> list[str] | None:
    """The partners a status change goes to: those the event names (routing sends the case's
    partners as they are after the change, so a case forwarded later reaches its new partner);
    for an event from before that field, those of the case's ``signal.routed``; None while
    neither is known.

    Routing publishes ``signal.routed`` and the first change together, and notifier follows
    them on two consumers: waiting for the one to apply the other sent about half of the first
    changes back for redelivery under bench/pipeline's load, and their webhooks a second late.
    """
    if "partners" in event.data:
        return list(changed.partners)
    return list(link.partners) if link is not None and link.partners is not None else None


def _claim_now(ctx: NotifierContext, session: AsyncSession, delivery: Delivery, now: datetime) -> None:
    """Claim a delivery that is due now, in this transaction, as the dispatcher's claim would
    (see :func:`fan_out`); it goes to the dispatcher once the transaction has committed."""
    delivery.status = "sending"
    delivery.attempts += 1
    delivery.coalesce_key = None
    delivery.next_attempt_at = now + timedelta(seconds=ctx.settings.lease_s(delivery.channel))
    # A staged row: the delivery is already in the database (staged rows go in before the flush
    # of ORM changes, so a delivery new in this transaction is left to the dispatcher's claim).
    stage_insert(session, ATTEMPTS, in_flight_attempt(delivery.id, delivery.attempts, now))
    columns = {name: getattr(delivery, name) for name in CLAIMED_COLUMNS}
    BatchView.of(session).claimed.append(Claimed.of(columns, number=delivery.attempts, endpoint=None))


def status_mail_key(tenant: str, case_id: str) -> str:
    """The key under which a case's status mail waits out its window (at most one at a time)."""
    return f"case:{tenant}:{case_id}"


def _coalesce_status_mail(
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
    view = BatchView.of(session)
    key = status_mail_key(event.tenant, changed.case_id)
    values = {
        "status": changed.to,
        "public_note": changed.public_note,
        "tracking_code": changed.tracking_code,
        "language": link.language if link else None,
    }
    waiting = view.by_coalesce_key.get(key)
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
    view.add(
        session,
        Delivery(
            id=new_id(),
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
            created_at=now,
            updated_at=now,
        ),
    )


def fan_out(
    ctx: NotifierContext,
    session: AsyncSession,
    event: CloudEvent,
    partner_codes: list[str],
    *,
    signal_id: str,
    case_id: str,
    receives: Callable[[Endpoint], bool] | None = None,
) -> list[str]:
    """One webhook delivery per enabled endpoint of each partner that subscribed to this event
    (or, with ``receives``, for which that says so); the ids of those endpoints.

    The body is the CloudEvent as it came from the bus (it holds no personal data, DESIGN §2); the
    ``webhook-id`` derives from the event and the endpoint, so a redelivery adds nothing.

    While the dispatcher runs, each delivery is created claimed, as the dispatcher's claim would
    leave it (``sending``, attempt 1 ``in_flight``, the lease as ``next_attempt_at``), and handed
    to the dispatcher after the commit: no claim transaction to queue for SQLite's write lock, no
    wait for the next claim. A process that dies first leaves it to its lease, like any claim.
    """
    wanted = short_type(event.type)
    body = event.to_json().decode()
    view = BatchView.of(session)
    targets = view.enabled_endpoints(event.tenant, partner_codes)
    missing = set(partner_codes) - {partner.code for partner, _ in targets}
    if missing:
        log.info(
            "event %s names partners without an enabled endpoint: %s", event.id, ", ".join(sorted(missing))
        )
    now = utcnow()
    claim = view.claim_due_now
    lease = now + timedelta(seconds=ctx.settings.lease_s("webhook"))
    reached: list[str] = []
    for partner, endpoint in targets:
        if not (receives(endpoint) if receives is not None else wanted in endpoint.event_types):
            continue
        delivery_id = new_id()
        # No look-up first: the inbox claim makes a redelivered event add nothing, and the unique
        # message_id turns a race between replicas into a rolled-back (and retried) transaction.
        # A row, not a Delivery object: staged, it is inserted with the batch's others at the commit.
        row = {
            "id": delivery_id,
            "message_id": message_id(event.id, endpoint.id),
            "tenant": event.tenant,
            "channel": "webhook",
            "template": None,
            "event_id": event.id,
            "event_type": event.type,
            "event_time": event.time,
            "signal_id": signal_id,
            "case_id": case_id,
            "partner_id": partner.id,
            "partner_code": partner.code,
            "endpoint_id": endpoint.id,
            "payload": body,
            "coalesce_key": None,
            "sequence": 0,
            "status": "sending" if claim else "scheduled",
            "status_reason": None,
            "attempts": 1 if claim else 0,
            "next_attempt_at": lease if claim else now,
            "last_status_code": None,
            "last_error": None,
            "created_at": now,
            "updated_at": now,
            "delivered_at": None,
        }
        stage_insert(session, DELIVERIES, row)
        if claim:
            stage_insert(session, ATTEMPTS, in_flight_attempt(delivery_id, 1, now))
            view.claimed.append(Claimed.of(row, number=1, endpoint=endpoint))
        reached.append(endpoint.id)
    return reached


def consumers(ctx: NotifierContext) -> list[ConsumerSpec]:
    """The six consumers; each reads ahead for a fetched batch, writes the departments holding a
    case that its events named (``signal.routed``, ``case.departments_changed``) just before it
    commits the batch in one transaction, then wakes the dispatcher."""

    async def on_received(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        await apply_signal_received(ctx, session, event)

    async def on_routed(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        await apply_signal_routed(ctx, session, event)

    async def on_status(session: AsyncSession, event: CloudEvent, msg: Msg) -> None:
        await apply_case_status_changed(ctx, session, event)

    async def on_attachment(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        await apply_attachment_added(ctx, session, event)

    async def on_erased(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        await apply_signal_erased(ctx, session, event)

    async def on_departments(session: AsyncSession, event: CloudEvent, _msg: Msg) -> None:
        await apply_case_departments_changed(ctx, session, event)

    async def read_ahead(session: AsyncSession, events: list[CloudEvent]) -> None:
        await prepare(ctx, session, events)

    return [
        ConsumerSpec(
            durable,
            subject,
            apply=apply,
            prepare=read_ahead,
            settle=settle_holders,
            after_commit=ctx.wake,
        )
        for durable, subject, apply in (
            (RECEIVED_CONSUMER, SignalReceived.subscription(), on_received),
            (ROUTED_CONSUMER, SignalRouted.subscription(), on_routed),
            (STATUS_CONSUMER, CaseStatusChanged.subscription(), on_status),
            (ATTACHMENT_CONSUMER, SignalAttachmentAdded.subscription(), on_attachment),
            (ERASED_CONSUMER, SignalErased.subscription(), on_erased),
            (DEPARTMENTS_CONSUMER, CaseDepartmentsChanged.subscription(), on_departments),
        )
    ]
