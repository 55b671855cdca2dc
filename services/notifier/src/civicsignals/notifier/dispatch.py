"""The dispatcher: sends the deliveries that are due, records every attempt, retries by schedule.

One pass: **claim** the due deliveries in one transaction (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so replicas never claim the same one), recording for each a new attempt and a lease
(``next_attempt_at`` = now + every time-out the attempt may wait on + margin); **send** outside any
transaction; **record** the outcome, the next attempt or the end, and the ``notification.*`` event
(outbox) in one transaction, but only if the delivery is still held by this attempt (a fence on the
attempt number, so an attempt that outlived its lease changes nothing).

When the process dies:
- after the claim, before the send: the lease runs out, the delivery is claimed again, the dead
  attempt is marked ``abandoned``; nothing was sent, so nothing is sent twice;
- after the send, before the record: the same, and the message goes again, with the same
  ``webhook-id`` (and e-mail ``Message-ID``), which is how Standard Webhooks receivers recognise a
  repeat. No scheme can close this window without the receiver's help; this makes it detectable.
The retry schedule lives in the database (``attempts`` and ``next_attempt_at``), so a restart
continues it where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import Message
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.common import wording
from civicsignals.common.bus import PermanentError, TransientError
from civicsignals.common.db import is_postgres
from civicsignals.common.events import (
    CloudEvent,
    NotificationDelivered,
    NotificationFailed,
    make_event,
    utcnow,
)
from civicsignals.common.groupcommit import GroupCommit
from civicsignals.common.outbox import OUTBOX_TABLE, enqueue, outbox_row
from civicsignals.common.tasks import cancel_and_wait, cancel_requested
from civicsignals.common.tenants import Tenant
from civicsignals.notifier import messages, metrics, service
from civicsignals.notifier.addresses import UnsafeEndpoint, check_endpoint
from civicsignals.notifier.flows import NotifierContext
from civicsignals.notifier.mailsigning import DkimSigner, signer_of
from civicsignals.notifier.models import (
    ATTEMPTS,
    CLAIMED_COLUMNS,
    DELIVERIES,
    ENDPOINTS,
    Attempt,
    Claimed,
    Delivery,
    Endpoint,
    Partner,
    in_flight_attempt,
)
from civicsignals.notifier.schedule import Outcome, Verdict, judge, retry_delay
from civicsignals.notifier.signing import InvalidSecret, message_id, webhook_headers
from civicsignals.notifier.webhook_client import WebhookTimeout, WebhookUnreachable

log = logging.getLogger(__name__)

USER_AGENT = "civicsignals-notifier/1"
SKIPPED = "skipped"
RECORD_BACKLOG_FACTOR = 4
"""Attempts that have sent and wait for their record: at most this many times the sending slots."""
RECORD_LINGER_S = 0.1
"""How long the recording of an attempt waits for others to join its transaction."""
DRAIN_TIMEOUT_S = 10.0
"""How long a shutdown lets the attempts under way finish and be recorded before it cancels them."""
STOP_TIMEOUT_S = 5.0
"""How long a shutdown then waits for what it cancelled; leases bring back what is left."""

# The hot paths (claiming, recording an attempt that delivered or was skipped) write with Core
# statements on the tables, several rows per statement, instead of through ORM objects: building,
# tracking and flushing a SQLModel object cost about a tenth of a millisecond of CPU each, and a
# signal's three deliveries needed a dozen of them here. The rare outcomes (retries, failures,
# disabling an endpoint) keep the ORM path, where the rules are.
FAST_RECORD = (Outcome.DELIVERED.value, SKIPPED)
"""Outcomes recorded by :meth:`Dispatcher._record_fast`: they touch no endpoint state beyond its last
success, and neither disable anything nor schedule anything."""


CHANNELS = ("webhook", "email")


@dataclass
class Lane:
    """One channel's deliveries in the dispatcher: claimed and waiting, sending, not yet recorded."""

    queue: deque[Claimed] = field(default_factory=deque)
    sending: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


@dataclass
class Result:
    """What one attempt came to."""

    outcome: str
    reason: str
    next_attempt_at: datetime | None = None
    status_code: int | None = None
    error: str | None = None
    failure_class: str | None = None
    duration_s: float = 0.0
    counts_against_endpoint: bool = False

    @classmethod
    def of(cls, verdict: Verdict, **extra: Any) -> Result:
        return cls(
            outcome=verdict.outcome.value,
            reason=verdict.reason,
            next_attempt_at=verdict.next_attempt_at,
            **extra,
        )


def metric_partner(claimed: Claimed) -> str:
    if claimed.channel == "webhook":
        return claimed.partner_code or "unknown"
    return "partner-contact" if claimed.template == messages.ENDPOINT_DISABLED else "resident"


class Dispatcher:
    def __init__(self, ctx: NotifierContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self._skip_locked = is_postgres(ctx.settings.database_url)
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._lanes = {channel: Lane() for channel in CHANNELS}
        self._giving_back: set[asyncio.Task[None]] = set()
        self._senders: dict[str, tuple[Tenant | None, messages.Sender, DkimSigner | None]] = {}
        # An attempt's record waits a little for others to join it: the message has gone and the
        # slot is free, and every record transaction queues for SQLite's one write lock.
        self._recorder: GroupCommit[tuple[Claimed, Result], bool] = GroupCommit(
            ctx.runtime.sessions, self._record_batch, name="notifier-record", linger_s=RECORD_LINGER_S
        )

    def wake(self) -> None:
        self._wakeup.set()

    def accepting(self) -> bool:
        """Whether deliveries claimed elsewhere (by the consumer that created them) are taken."""
        return self._task is not None and not self._stopping

    def offer(self, claimed: Sequence[Claimed]) -> None:
        """Take deliveries that their consumer claimed as it created them, once that committed.

        Saves them a claim transaction and the wait for it (the webhooks of ``signal.routed``
        and ``case.status_changed``). Offered while the dispatcher stops, they are given back at
        once rather than left to their lease."""
        if not claimed:
            return
        if not self.accepting():
            task = asyncio.get_running_loop().create_task(self.release_unstarted(list(claimed)))
            self._giving_back.add(task)
            task.add_done_callback(self._giving_back.discard)
            return
        self._enqueue(claimed)
        self.wake()

    def _enqueue(self, claimed: Sequence[Claimed]) -> None:
        for item in claimed:
            self._lanes[item.channel if item.channel in self._lanes else "email"].queue.append(item)

    async def stop(self) -> None:
        """Stop claiming, let the attempts under way finish and be recorded, then stop the recorder.

        Only what is still running after ``DRAIN_TIMEOUT_S`` is cancelled: a cancelled attempt may
        have been sent without being recorded, so it is sent again once its lease ends (the same
        message id, but a second e-mail all the same), and a database call cancelled halfway can
        leave asyncpg waiting for ever (its issue 873). Deliveries claimed but not yet started
        are given back (:meth:`release_unstarted`)."""
        self._stopping = True
        self.wake()
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(
                [task], grace_s=DRAIN_TIMEOUT_S, timeout_s=STOP_TIMEOUT_S, what="dispatcher"
            )
        await self._recorder.close(timeout_s=STOP_TIMEOUT_S)
        if self._giving_back:
            await asyncio.wait(set(self._giving_back), timeout=STOP_TIMEOUT_S)

    async def run(self) -> None:
        """Dispatch until stopped: claim what is due in batches, send it through free slots.

        A claim takes up to ``scheduler_batch_size`` due deliveries into local queues, one per
        channel, and claims again when they are half empty: few, large claim transactions, since
        each one queues for the database's write lock. Attempts run as their own tasks; up to
        ``delivery_concurrency`` of each channel send at a time. The channels do not share slots:
        a resident's e-mail waits on intake for the address and on one of a few SMTP connections,
        and with shared slots a burst of them kept partners' webhooks waiting (under
        bench/pipeline's load, claim to receiver took 450 ms at p99 for a 9 ms request). A slot
        is held by the send only: an attempt that has sent gives it back while its outcome waits
        for the next group commit, and at most ``RECORD_BACKLOG_FACTOR`` times that many sent
        attempts of a channel may wait so, so a database that cannot keep up slows the sending
        instead of letting leases run out unrecorded. A queued delivery whose lease has too
        little left (slots stayed full) is not started: its lease runs out and it is claimed again.
        """
        self._task = asyncio.current_task()
        lanes = self._lanes
        batch = self.settings.scheduler_batch_size
        try:
            while not self._stopping:
                self._wakeup.clear()
                for lane in lanes.values():
                    self._start_queued(lane)
                claimed: list[Claimed] = []
                queued = sum(len(lane.queue) for lane in lanes.values())
                if queued <= batch // 2 and not self._stopping:
                    try:
                        claimed = await self.claim_due(batch - queued)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        if cancel_requested():  # the driver turned our cancel into an error of its own
                            raise asyncio.CancelledError from exc
                        log.exception("dispatcher: claiming failed; trying again")
                    self._enqueue(claimed)
                if claimed:
                    continue  # start them, and there may be more due right now
                if queued:
                    await self._wakeup.wait()  # slots are full: the next finished send wakes us
                    continue
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.scheduler_poll_interval_s):
                        await self._wakeup.wait()
            # Stopping: what was claimed but not started is due again at once, for the next
            # notifier; the attempts under way finish and record their outcome.
            await self.release_unstarted([item for lane in lanes.values() for item in lane.queue])
            running = {task for lane in lanes.values() for task in lane.tasks}
            if running:
                await asyncio.wait(running)
        finally:
            await cancel_and_wait(
                [task for lane in lanes.values() for task in lane.tasks],
                timeout_s=STOP_TIMEOUT_S,
                what="dispatcher attempts",
            )

    def _start_queued(self, lane: Lane) -> None:
        """Start the lane's queued deliveries while it has free sending slots and backlog room."""
        concurrency = self.settings.delivery_concurrency
        while (
            lane.queue
            and len(lane.sending) < concurrency
            and len(lane.tasks) < RECORD_BACKLOG_FACTOR * concurrency
        ):
            item = lane.queue.popleft()
            if time.monotonic() - item.claimed_at > self.settings.lease_margin_s / 2:
                log.info("dispatcher: %s waited too long for a slot; left to its lease", item.id)
                continue
            lane.sending.add(item.id)
            release = self._releaser(lane.sending, item.id)
            task = asyncio.create_task(self._attempt(item, release), name=f"notifier-attempt-{item.id}")
            lane.tasks.add(task)
            task.add_done_callback(lane.tasks.discard)
            task.add_done_callback(lambda _task: self._wakeup.set())
            task.add_done_callback(release)  # an attempt that failed before sending

    async def release_unstarted(self, items: Sequence[Claimed]) -> None:
        """Give back deliveries that were claimed but not started: due at once (not after their
        lease), their attempt ``abandoned``; only where the claim still holds."""
        if not items:
            return
        now = utcnow()
        held = [{"b_id": item.id, "b_number": item.number} for item in items]
        d, a = DELIVERIES.c, ATTEMPTS.c
        try:
            async with self.ctx.runtime.sessions() as session, session.begin():
                await session.exec(
                    update(DELIVERIES)
                    .where(
                        d.id == bindparam("b_id"), d.attempts == bindparam("b_number"), d.status == "sending"
                    )
                    .values(next_attempt_at=now, updated_at=now),
                    params=held,
                )
                await session.exec(
                    update(ATTEMPTS)
                    .where(
                        a.delivery_id == bindparam("b_id"),
                        a.number == bindparam("b_number"),
                        a.outcome == "in_flight",
                    )
                    .values(outcome="abandoned", finished_at=now, error="not started: notifier stopped"),
                    params=held,
                )
        except Exception:  # their leases bring them back all the same
            log.exception("dispatcher: could not give back %d unstarted deliveries", len(items))

    def _releaser(self, sending: set[str], delivery_id: str) -> Callable[..., None]:
        """Gives the attempt's sending slot back (once) and wakes the loop to fill it; also a
        done-callback of the attempt's task."""

        def release(_task: object = None) -> None:
            if delivery_id in sending:
                sending.discard(delivery_id)
                self._wakeup.set()

        return release

    async def dispatch_once(self) -> int:
        """One pass, waiting for every attempt it started (for tools and tests)."""
        claimed = await self.claim_due(self.settings.scheduler_batch_size)
        if claimed:
            await asyncio.gather(*(self._attempt(item) for item in claimed))
        return len(claimed)

    async def claim_due(self, limit: int) -> list[Claimed]:
        """Claim up to ``limit`` due deliveries: each gets an attempt row and a lease, in one commit.

        One SELECT of the due rows' columns, one UPDATE statement for all of them (executemany,
        each row its own attempt number and lease), one INSERT for their attempt rows."""
        now = utcnow()
        d = DELIVERIES.c
        async with self.ctx.runtime.sessions() as session, session.begin():
            query = (
                _columns(d.status, d.attempts, *(d[name] for name in CLAIMED_COLUMNS))
                .where(d.status.in_(("scheduled", "sending")))
                .where(d.next_attempt_at <= now)
                .order_by(d.next_attempt_at)
                .limit(limit)
            )
            if self._skip_locked:
                query = query.with_for_update(skip_locked=True)
            rows = list((await session.exec(query)).all())
            if not rows:
                metrics.DUE.set(0)
                return []
            endpoint_ids = {row.endpoint_id for row in rows if row.channel == "webhook" and row.endpoint_id}
            endpoints = (
                {
                    endpoint.id: endpoint
                    for endpoint in await session.exec(
                        select(Endpoint).where(col(Endpoint.id).in_(endpoint_ids))
                    )
                }
                if endpoint_ids
                else {}
            )
            died = [row.id for row in rows if row.status == "sending"]
            if died:
                # Their leases ran out: the process that held them died (or hung) mid-attempt.
                await session.exec(
                    update(ATTEMPTS)
                    .where(ATTEMPTS.c.delivery_id.in_(died), ATTEMPTS.c.outcome == "in_flight")
                    .values(outcome="abandoned", finished_at=now, error="the attempt's process died")
                )
            leases = {
                channel: now + timedelta(seconds=self.settings.lease_s(channel))
                for channel in {row.channel for row in rows}
            }
            await session.exec(
                update(DELIVERIES)
                .where(d.id == bindparam("b_id"))
                .values(
                    status="sending",
                    attempts=bindparam("b_attempts", type_=d.attempts.type),
                    coalesce_key=None,  # later changes of the case start a mail of their own
                    next_attempt_at=bindparam("b_lease", type_=d.next_attempt_at.type),
                    updated_at=now,
                ),
                params=[
                    {
                        "b_id": row.id,
                        "b_attempts": row.attempts + 1,
                        "b_lease": leases[row.channel],
                    }
                    for row in rows
                ],
            )
            await session.exec(
                insert(ATTEMPTS), params=[in_flight_attempt(row.id, row.attempts + 1, now) for row in rows]
            )
            claimed = [
                Claimed.of(
                    row._mapping,
                    number=row.attempts + 1,
                    endpoint=endpoints.get(row.endpoint_id) if row.endpoint_id else None,
                )
                for row in rows
            ]
        metrics.DUE.set(len(claimed))
        return claimed

    async def _attempt(self, claimed: Claimed, sent: Callable[[], None] = lambda: None) -> None:
        """Send, call ``sent`` (the slot is free again), then record the outcome."""
        started = time.perf_counter()
        try:
            if claimed.channel == "webhook":
                result = await self._send_webhook(claimed)
            else:
                result = await self._send_email(claimed)
        except Exception as exc:  # a bug must not leave the delivery claimed until its lease ends
            if cancel_requested():
                raise asyncio.CancelledError from exc
            log.exception("dispatcher: attempt %d of %s failed unexpectedly", claimed.number, claimed.id)
            result = self._retry(claimed, f"internal error: {type(exc).__name__}", "internal")
        result.duration_s = time.perf_counter() - started
        sent()
        labels = (metric_partner(claimed), claimed.channel)
        metrics.ATTEMPTS.labels(*labels, result.outcome).inc()
        metrics.ATTEMPT_DURATION.labels(*labels).observe(result.duration_s)
        if result.failure_class:
            metrics.FAILURES.labels(*labels, result.failure_class).inc()
        try:
            await self.record(claimed, result)
        except Exception:
            # Left claimed: its lease runs out and it is tried again (same message id).
            log.exception("dispatcher: could not record attempt %d of %s", claimed.number, claimed.id)

    def _retry(self, claimed: Claimed, reason: str, failure_class: str) -> Result:
        now = utcnow()
        delay = retry_delay(self.settings.retry_schedule_s, claimed.number)
        if delay is None:
            return Result(
                outcome=Outcome.FAILED.value,
                reason=f"gave up after {claimed.number} attempts; last: {reason}",
                error=reason,
                failure_class=failure_class,
            )
        return Result(
            outcome=Outcome.RETRY.value,
            reason=reason,
            next_attempt_at=now + timedelta(seconds=delay),
            error=reason,
            failure_class=failure_class,
        )

    # --- webhooks --------------------------------------------------------------------------------

    async def _send_webhook(self, claimed: Claimed) -> Result:
        now = utcnow()
        endpoint = claimed.endpoint
        if endpoint is None or not endpoint.enabled:
            reason = "endpoint_disabled" if endpoint is not None else "endpoint_deleted"
            return Result(outcome=Outcome.FAILED.value, reason=reason, error=reason)
        try:
            await check_endpoint(endpoint.url, allow_private=self.settings.allow_private_endpoints)
        except UnsafeEndpoint as exc:
            result = self._retry(claimed, f"refused: {exc}", "refused")
            result.counts_against_endpoint = True
            return result
        body = claimed.payload.encode()
        try:
            signing = service.secrets_in_force(endpoint, self.ctx.box, now)
            headers = webhook_headers(signing, claimed.message_id, int(time.time()), body)
        except (InvalidSecret, ValueError) as exc:
            return self._retry(claimed, f"cannot sign: {type(exc).__name__}", "secret")
        headers["content-type"] = "application/cloudevents+json; charset=utf-8"
        headers["user-agent"] = USER_AGENT
        try:
            answer = await self.ctx.http.post(
                endpoint.url, body, headers, timeout_s=self.settings.webhook_timeout_s
            )
        except WebhookTimeout:
            result = self._retry(claimed, f"timed out after {self.settings.webhook_timeout_s:g}s", "timeout")
            result.counts_against_endpoint = True
            return result
        except WebhookUnreachable as exc:
            result = self._retry(claimed, f"connection failed: {exc}", "connect")
            result.counts_against_endpoint = True
            return result
        verdict = judge(
            status_code=answer.status_code,
            error=None,
            retry_after=answer.retry_after,
            attempts=claimed.number,
            schedule=self.settings.retry_schedule_s,
            now=utcnow(),
            retry_after_cap_s=self.settings.retry_after_max_s,
        )
        code = answer.status_code
        failure_class = None
        if verdict.outcome is not Outcome.DELIVERED:
            failure_class = "redirect" if 300 <= code < 400 else f"http_{code // 100}xx"
        return Result.of(
            verdict,
            status_code=code,
            error=None if verdict.outcome is Outcome.DELIVERED else verdict.reason,
            failure_class=failure_class,
            counts_against_endpoint=verdict.outcome in (Outcome.RETRY, Outcome.FAILED),
        )

    # --- e-mail ----------------------------------------------------------------------------------

    async def _send_email(self, claimed: Claimed) -> Result:
        payload: dict[str, Any] = json.loads(claimed.payload)
        template = claimed.template or messages.STATUS_UPDATE
        tenant = self.ctx.runtime.tenants.get(claimed.tenant)
        municipality = tenant.name if tenant else claimed.tenant
        timezone = wording.timezone_of(tenant)
        name: str | None
        if template == messages.ENDPOINT_DISABLED:
            async with self.ctx.runtime.sessions() as session:
                partner = await session.get(Partner, claimed.partner_id) if claimed.partner_id else None
            if partner is None or not partner.contact_email:
                return Result(outcome=SKIPPED, reason="no_contact")
            recipient, language, name = partner.contact_email, partner.language, partner.name
            values: dict[str, Any] = {**payload, "partner_name": partner.name, "municipality": municipality}
        else:
            if not claimed.signal_id:
                return Result(outcome=SKIPPED, reason="no_contact")
            try:
                contact = await self.ctx.contacts.fetch(claimed.tenant, claimed.signal_id)
            except (TransientError, PermanentError) as exc:
                return self._retry(claimed, f"intake: {exc}", "intake")
            if contact is None or not contact.email:
                return Result(outcome=SKIPPED, reason="no_contact")
            if not contact.consent:
                return Result(outcome=SKIPPED, reason="no_consent")
            recipient, name = contact.email, contact.name
            # Intake's language (the portal's, or intake's own guess) as intake has it now wins
            # over the payload's, which is the classifier's when signal.routed came first or
            # intake had none; then Dutch. Turkish, Polish and Arabic where the tenant lists them.
            language = wording.resident_language(contact.language or payload.get("language"), tenant)
            values = self._resident_values(payload, template, language, municipality, timezone, name)
            values["reopen_within_days"] = wording.reopen_within_days(tenant)
        try:
            rendered = self.ctx.templates.render(claimed.tenant, template, language, values)
        except messages.TemplateProblem as exc:
            return self._retry(claimed, f"template {template} ({exc.part}): {exc}", "template")
        sender, signer = self._sender(claimed.tenant, tenant)
        mail: Message | messages.OutgoingMail = messages.encode_email(
            rendered,
            sender=sender.mail_from,
            recipient=recipient,
            message_id=claimed.message_id,
            domain=self.settings.mail_domain,
            reply_to=sender.reply_to,
        )
        if signer is not None:
            # RSA in pure Python (dkimpy): milliseconds of CPU, off the event loop's thread.
            mail = await asyncio.to_thread(signer.sign, mail)
        try:
            await self.ctx.mailer.send(mail)
        except TransientError as exc:
            return self._retry(claimed, str(exc), "smtp")
        return Result(outcome=Outcome.DELIVERED.value, reason="accepted by the SMTP server")

    def _sender(self, code: str, tenant: Tenant | None) -> tuple[messages.Sender, DkimSigner | None]:
        """The tenant's sender (:func:`messages.sender_of`) and DKIM signer
        (:func:`mailsigning.signer_of`), worked out once per version of its folder: the registry
        puts a new ``Tenant`` in place when ``tenant.yaml`` changes, so the same object means the
        same settings (and a bad value or key is warned about once, not per mail). A new key file
        under the same selector therefore applies once the tenant's folder is loaded again."""
        cached = self._senders.get(code)
        if cached is not None and cached[0] is tenant:
            return cached[1], cached[2]
        sender = messages.sender_of(tenant, self.settings.mail_from)
        signer = signer_of(tenant, self.settings.dkim_keys_dir, sender.mail_from)
        self._senders[code] = (tenant, sender, signer)
        return sender, signer

    def _resident_values(
        self,
        payload: dict[str, Any],
        template: str,
        language: str,
        municipality: str,
        timezone: str,
        name: str | None,
    ) -> dict[str, Any]:
        base = self.settings.public_base_url.rstrip("/")
        code = str(payload.get("tracking_code") or "")
        status = str(payload.get("status") or "")
        due_at = payload.get("due_at")
        return {
            "name": name,
            "municipality": municipality,
            "tracking_code": code,
            "tracking_url": f"{base}/v1/tracking/{code}",
            "service_promise": payload.get("service_promise"),
            "expected_by": wording.format_date(datetime.fromisoformat(due_at), language, timezone)
            if due_at
            else None,
            "status": status,
            "status_label": wording.STATUS_LABELS[language].get(status, status),
            "public_note": payload.get("public_note"),
            "feedback_urls": messages.feedback_urls(self.settings.public_base_url, code)
            if template == messages.RESOLUTION
            else [],
        }

    # --- recording -------------------------------------------------------------------------------

    async def record(self, claimed: Claimed, result: Result) -> None:
        """Write the attempt's outcome, its consequences and its event, if the claim still holds.

        Attempts that finish together are recorded in one transaction (group commit)."""
        events = await self._recorder.submit((claimed, result))
        if events:
            self.ctx.runtime.events_committed()
        if result.next_attempt_at is not None or events:
            self.wake()

    async def _record_batch(
        self, session: AsyncSession, batch: Sequence[tuple[Claimed, Result]]
    ) -> list[bool]:
        """Record finished attempts; the common outcomes (delivered, skipped) with a few Core
        statements for the whole batch (:meth:`_record_fast`), the others one by one through the
        ORM: their deliveries and attempt rows are read in one query each (locked on PostgreSQL)."""
        events: dict[int, bool] = {}
        fast = [(index, item) for index, item in enumerate(batch) if item[1].outcome in FAST_RECORD]
        slow = [(index, item) for index, item in enumerate(batch) if item[1].outcome not in FAST_RECORD]
        if fast:
            flags = await self._record_fast(session, [item for _, item in fast])
            events.update((index, flag) for (index, _), flag in zip(fast, flags, strict=True))
        if slow:
            ids = [claimed.id for _, (claimed, _) in slow]
            query = select(Delivery).where(col(Delivery.id).in_(ids))
            if self._skip_locked:
                query = query.with_for_update()
            deliveries = {delivery.id: delivery for delivery in (await session.exec(query)).all()}
            open_attempts = await session.exec(
                select(Attempt).where(col(Attempt.delivery_id).in_(ids), col(Attempt.outcome) == "in_flight")
            )
            attempts = {(attempt.delivery_id, attempt.number): attempt for attempt in open_attempts.all()}
            for index, (claimed, result) in slow:
                events[index] = await self._record_in(
                    session,
                    claimed,
                    result,
                    deliveries.get(claimed.id),
                    attempts.get((claimed.id, claimed.number)),
                )
        return [events[index] for index in range(len(batch))]

    async def _record_fast(
        self, session: AsyncSession, batch: Sequence[tuple[Claimed, Result]]
    ) -> list[bool]:
        """Delivered and skipped attempts, in Core statements for the whole batch.

        The same changes as :meth:`_record_in` makes for these outcomes: the attempt's outcome, the
        delivery's end, the endpoint's last success (only when it was failing or its last success is
        a minute old, so deliveries to one endpoint do not all write its row), and for a delivery
        ``notification.delivered`` in the outbox; all only while the claim holds (the fence on the
        attempt number is checked on the row read here, locked on PostgreSQL, and again in the
        UPDATE's WHERE).
        """
        now = utcnow()
        d = DELIVERIES.c
        query = _columns(
            d.id,
            d.status,
            d.attempts,
            d.tenant,
            d.channel,
            d.template,
            d.event_id,
            d.event_type,
            d.signal_id,
            d.case_id,
            d.partner_code,
        ).where(d.id.in_([claimed.id for claimed, _ in batch]))
        if self._skip_locked:
            query = query.with_for_update()
        rows = {row.id: row for row in (await session.exec(query)).all()}
        endpoint_ids = {
            claimed.endpoint_id
            for claimed, result in batch
            if claimed.channel == "webhook" and claimed.endpoint_id and result.outcome == Outcome.DELIVERED
        }
        e = ENDPOINTS.c
        endpoints = (
            {
                row.id: row
                for row in (
                    await session.exec(
                        _columns(e.id, e.failing_since, e.last_success_at).where(e.id.in_(endpoint_ids))
                    )
                ).all()
            }
            if endpoint_ids
            else {}
        )
        succeeded: set[str] = set()
        attempt_rows: list[dict[str, Any]] = []
        delivered_rows: list[dict[str, Any]] = []
        skipped_rows: list[dict[str, Any]] = []
        outbox_rows: list[dict[str, Any]] = []
        flags: list[bool] = []
        for claimed, result in batch:
            row = rows.get(claimed.id)
            if row is None or row.status != "sending" or row.attempts != claimed.number:
                log.warning("dispatcher: attempt %d of %s outlived its lease", claimed.number, claimed.id)
                flags.append(False)
                continue
            attempt_rows.append(
                {
                    "b_delivery_id": claimed.id,
                    "b_number": claimed.number,
                    "finished_at": now,
                    "outcome": result.outcome,
                    "status_code": result.status_code,
                    "error": result.error,
                    "duration_ms": round(result.duration_s * 1000, 3),
                }
            )
            change = {
                "b_id": claimed.id,
                "b_number": claimed.number,
                "last_status_code": result.status_code,
                "last_error": result.error,
            }
            labels = (metric_partner(claimed), claimed.channel)
            if result.outcome == SKIPPED:
                skipped_rows.append({**change, "status_reason": result.reason})
                metrics.DELIVERIES.labels(*labels, "skipped").inc()
                flags.append(False)
                continue
            delivered_rows.append(change)
            endpoint = endpoints.get(claimed.endpoint_id or "") if claimed.channel == "webhook" else None
            if (
                endpoint is not None
                and endpoint.id not in succeeded
                and (
                    endpoint.failing_since is not None
                    or endpoint.last_success_at is None
                    or now - endpoint.last_success_at > timedelta(seconds=60)
                )
            ):
                succeeded.add(endpoint.id)
            metrics.DELIVERIES.labels(*labels, "delivered").inc()
            metrics.LATENCY.labels(*labels).observe(max(0.0, (now - claimed.event_time).total_seconds()))
            outbox_rows.append(
                outbox_row(
                    NotificationDelivered.bus_subject(row.tenant),
                    _notification(row, NotificationDelivered, claimed.number),
                )
            )
            flags.append(True)
        if attempt_rows:
            a = ATTEMPTS.c
            await session.exec(
                update(ATTEMPTS).where(
                    a.delivery_id == bindparam("b_delivery_id"),
                    a.number == bindparam("b_number"),
                    a.outcome == "in_flight",
                ),
                params=attempt_rows,
            )
        held = (d.id == bindparam("b_id")) & (d.status == "sending") & (d.attempts == bindparam("b_number"))
        if delivered_rows:
            await session.exec(
                update(DELIVERIES)
                .where(held)
                .values(
                    status="delivered",
                    status_reason=None,
                    delivered_at=now,
                    next_attempt_at=None,
                    updated_at=now,
                ),
                params=delivered_rows,
            )
        if skipped_rows:
            await session.exec(
                update(DELIVERIES).where(held).values(status="skipped", next_attempt_at=None, updated_at=now),
                params=skipped_rows,
            )
        if succeeded:
            await session.exec(
                update(ENDPOINTS).where(e.id.in_(succeeded)).values(failing_since=None, last_success_at=now)
            )
        if outbox_rows:
            await session.exec(insert(OUTBOX_TABLE), params=outbox_rows)
        return flags

    async def _record_in(
        self,
        session: AsyncSession,
        claimed: Claimed,
        result: Result,
        delivery: Delivery | None,
        attempt: Attempt | None,
    ) -> bool:
        """One attempt's changes in the given transaction; True when they include an event."""
        now = utcnow()
        events = False
        if delivery is None or delivery.status != "sending" or delivery.attempts != claimed.number:
            log.warning("dispatcher: attempt %d of %s outlived its lease", claimed.number, claimed.id)
            return False
        if attempt is not None:
            attempt.finished_at, attempt.outcome = now, result.outcome
            attempt.status_code, attempt.error = result.status_code, result.error
            attempt.duration_ms = round(result.duration_s * 1000, 3)
            session.add(attempt)
        delivery.last_status_code = result.status_code
        delivery.last_error = result.error
        delivery.updated_at = now
        labels = (metric_partner(claimed), claimed.channel)
        # A success touches the endpoint only when it was failing or its last success is old, so
        # concurrent deliveries to one endpoint do not queue on its row; a failure locks it, since
        # it may disable the endpoint.
        endpoint = (
            await session.get(
                Endpoint,
                claimed.endpoint_id,
                # None, not False, without a lock: False makes Session.get skip its identity map
                # and read the row again for every attempt of the batch.
                with_for_update=True if self._skip_locked and result.outcome != Outcome.DELIVERED else None,
            )
            if claimed.endpoint_id and claimed.channel == "webhook"
            else None
        )
        if result.outcome == Outcome.DELIVERED:
            delivery.status, delivery.status_reason = "delivered", None
            delivery.delivered_at, delivery.next_attempt_at = now, None
            if endpoint is not None and (
                endpoint.failing_since is not None
                or endpoint.last_success_at is None
                or now - endpoint.last_success_at > timedelta(seconds=60)
            ):
                await session.exec(
                    update(Endpoint)
                    .where(col(Endpoint.id) == endpoint.id)
                    .values(failing_since=None, last_success_at=now)
                )
            metrics.DELIVERIES.labels(*labels, "delivered").inc()
            metrics.LATENCY.labels(*labels).observe(max(0.0, (now - claimed.event_time).total_seconds()))
            self._event(session, delivery, NotificationDelivered, claimed.number)
            events = True
        elif result.outcome == SKIPPED:
            delivery.status, delivery.status_reason, delivery.next_attempt_at = (
                "skipped",
                result.reason,
                None,
            )
            metrics.DELIVERIES.labels(*labels, "skipped").inc()
        elif result.outcome in (Outcome.RETRY, Outcome.THROTTLED):
            delivery.status, delivery.status_reason = "scheduled", result.reason
            delivery.next_attempt_at = result.next_attempt_at
        else:  # failed or gone
            delivery.status, delivery.status_reason, delivery.next_attempt_at = (
                "failed",
                result.reason,
                None,
            )
            metrics.DELIVERIES.labels(*labels, "failed").inc()
            if result.outcome != Outcome.GONE:  # for gone, disabling the endpoint says it (below)
                self._event(session, delivery, NotificationFailed, claimed.number, reason=result.reason)
            events = True
        if endpoint is not None:
            if result.outcome == Outcome.GONE:
                await self._disable(session, endpoint, delivery, "gone", result.reason, now)
                events = True
            elif result.counts_against_endpoint:
                endpoint.failing_since = endpoint.failing_since or now
                failing_for = (now - endpoint.failing_since).total_seconds()
                if endpoint.enabled and failing_for >= self.settings.endpoint_disable_after_s:
                    reason = f"failing since {endpoint.failing_since.isoformat()} without a success"
                    await self._disable(session, endpoint, delivery, "failing", reason, now)
                    if delivery.status == "scheduled":
                        delivery.status, delivery.next_attempt_at = "failed", None
                        delivery.status_reason = "endpoint_disabled"
                        metrics.DELIVERIES.labels(*labels, "failed").inc()
                    events = True
            if result.outcome != Outcome.DELIVERED:
                session.add(endpoint)
        session.add(delivery)
        return events

    def _event(
        self,
        session: AsyncSession,
        delivery: Delivery,
        model: type[NotificationDelivered] | type[NotificationFailed],
        attempts: int,
        **extra: str,
    ) -> None:
        event = _notification(delivery, model, attempts, **extra)
        enqueue(session, model.bus_subject(delivery.tenant), event)

    async def _disable(
        self,
        session: AsyncSession,
        endpoint: Endpoint,
        delivery: Delivery,
        why: str,
        reason: str,
        now: datetime,
    ) -> None:
        """Disable an endpoint and tell its partner: an event, and a mail to its contact if it has one."""
        if not endpoint.enabled:
            return
        endpoint.enabled = False
        endpoint.disabled_reason = why
        endpoint.disabled_at = now
        endpoint.updated_at = now
        partner = await session.get(Partner, endpoint.partner_id)
        code = partner.code if partner else "unknown"
        metrics.ENDPOINTS_DISABLED.labels(code, why).inc()
        log.warning("endpoint %s of partner %s disabled: %s", endpoint.id, code, why)
        self._event(
            session, delivery, NotificationFailed, delivery.attempts, reason=f"endpoint_disabled: {why}"
        )
        if partner is not None and partner.contact_email:
            session.add(
                Delivery(
                    message_id=message_id("endpoint-disabled", endpoint.id, now.isoformat()),
                    tenant=endpoint.tenant,
                    channel="email",
                    template=messages.ENDPOINT_DISABLED,
                    event_id=delivery.event_id,
                    event_type=delivery.event_type,
                    event_time=now,
                    partner_id=partner.id,
                    partner_code=partner.code,
                    endpoint_id=endpoint.id,
                    payload=messages.dumps(
                        {"endpoint_url": endpoint.url, "reason": reason, "disabled_at": now.isoformat()}
                    ),
                    next_attempt_at=now,
                )
            )


def _columns(*columns: Any) -> Any:
    """A SELECT of table columns: rows as named tuples, no ORM objects built (typed loosely: the
    typed overloads stop at four columns)."""
    return select(*columns)


def _notification(
    delivery: Any,
    model: type[NotificationDelivered] | type[NotificationFailed],
    attempts: int,
    **extra: str,
) -> CloudEvent:
    """The ``notification.*`` event of a delivery (an ORM object or a row with its columns)."""
    data = model(
        delivery_id=delivery.id,
        signal_id=delivery.signal_id,
        case_id=delivery.case_id,
        channel="webhook" if delivery.channel == "webhook" else "email",
        template=delivery.template,
        partner=delivery.partner_code,
        about_event=delivery.event_type,
        attempts=attempts,
        **extra,
    )
    return make_event(
        tenant=delivery.tenant, service="notifier", data=data, subject=delivery.signal_id or delivery.id
    )
