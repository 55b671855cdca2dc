"""Partner webhooks end to end in-process: real NATS, real database, a real HTTP receiver.

Every webhook the receiver gets is verified with the ``standardwebhooks`` package, which is not
our implementation, including while a secret is being rotated.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import nats
from prometheus_client import REGISTRY
from standardwebhooks import Webhook, WebhookVerificationError

from civicsignals.common.bus import STREAM, stream_messages
from civicsignals.common.events import (
    CaseStatusChanged,
    CloudEvent,
    SignalAttachmentAdded,
    SignalRouted,
    make_event,
)
from civicsignals.common.ids import new_id
from civicsignals.devstack.ports import free_port

from .conftest import signal_received

TENANT = "gouda"


def routed(partners: list[str], signal_id: str | None = None, case_id: str | None = None) -> SignalRouted:
    return SignalRouted(
        signal_id=signal_id or new_id(),
        case_id=case_id or new_id(),
        tracking_code="7KQ2-M9XD-4HTC",
        responsible="wonen",
        partners=partners,
        priority="normal",
        rule_id="woonoverlast",
        service_promise="Binnen 5 werkdagen.",
    )


def status(
    routed_data: SignalRouted,
    to: str,
    sequence: int,
    note: str | None = None,
    partners: list[str] | None = None,
) -> CaseStatusChanged:
    return CaseStatusChanged(
        case_id=routed_data.case_id,
        signal_id=routed_data.signal_id,
        tracking_code=routed_data.tracking_code,
        to=to,
        public_note=note,
        actor="department",
        sequence=sequence,
        # as routing sends it: the case's partners after the change
        partners=list(routed_data.partners) if partners is None else partners,
        **{"from": "assigned"},
    )


def verifies(secret: str, received: Any) -> bool:
    try:
        Webhook(secret).verify(received.body, received.headers)
    except WebhookVerificationError:
        return False
    return True


async def bus_events(nats_url: str, subject: str) -> list[CloudEvent]:
    client = await nats.connect(nats_url)
    try:
        messages = await stream_messages(client.jetstream(), STREAM)
    finally:
        await client.close()
    return [CloudEvent.from_json(m.data) for m in messages if m.subject == subject]


async def test_signed_webhooks_verify_with_standardwebhooks_through_a_secret_rotation(
    notifier_factory, make_tenant, receiver, wait_until, nats_server
) -> None:
    notifier = await notifier_factory(make_tenant(TENANT, scopes=["rules:admin"]))
    partner, endpoint = await notifier.register("woonpartners", receiver.url)
    first_secret = endpoint["secret"]
    assert first_secret.startswith("whsec_") and endpoint["event_types"] == [
        "case.status_changed",
        "signal.attachment_added",
        "signal.routed",
    ]

    delivered_before = _delivered_metric()
    data = routed(["woonpartners", "not-registered"])
    event = await notifier.publish(TENANT, data)
    await wait_until(lambda: len(receiver.delivered()) == 1, timeout=20, message="the signal.routed webhook")
    first = receiver.delivered()[0]
    assert verifies(first_secret, first)
    assert first.headers["content-type"].startswith("application/cloudevents+json")
    body = CloudEvent.from_json(first.body)
    assert body.id == event.id and body.type == "nl.civicsignals.signal.routed.v1"

    # Rotation: both secrets sign while the partner switches over.
    path = f"/v1/partners/{partner['code']}/endpoints/{endpoint['id']}"
    rotated = await notifier.client.post(f"{path}/rotate-secret", json={"overlap_s": 3600})
    assert rotated.status_code == 200, rotated.text
    second_secret = rotated.json()["secret"]
    assert rotated.json()["previous_valid_until"] is not None
    listed = (await notifier.client.get(path)).json()
    assert (
        len(listed["secrets"]) == 2 and first_secret not in str(listed) and second_secret not in str(listed)
    )

    await notifier.publish(TENANT, status(data, "in_progress", 2, "We komen dinsdag."))
    await wait_until(lambda: len(receiver.delivered()) == 2, timeout=20, message="the status webhook")
    during = receiver.delivered()[1]
    assert verifies(first_secret, during) and verifies(second_secret, during)
    assert CloudEvent.from_json(during.body).data["public_note"] == "We komen dinsdag."

    # A rotation without overlap retires the previous secret at once.
    rotated = await notifier.client.post(f"{path}/rotate-secret", json={"overlap_s": 0})
    third_secret = rotated.json()["secret"]
    await notifier.publish(TENANT, status(data, "resolved", 3))
    await wait_until(lambda: len(receiver.delivered()) == 3, timeout=20, message="the third webhook")
    after = receiver.delivered()[2]
    assert (
        verifies(third_secret, after)
        and not verifies(second_secret, after)
        and not verifies(first_secret, after)
    )

    ids = [r.headers["webhook-id"] for r in receiver.delivered()]
    assert len(set(ids)) == 3

    async def recorded() -> list[dict[str, Any]] | None:
        log = await notifier.deliveries(partner="woonpartners")
        return log if all(d["status"] == "delivered" for d in log) else None

    log = await wait_until(recorded, timeout=10, message="the deliveries to be recorded")
    assert {d["status"] for d in log} == {"delivered"} and len(log) == 3
    assert {d["message_id"] for d in log} == set(ids)
    assert len(await notifier.deliveries(signal=data.signal_id, channel="webhook")) == 3
    delivered_events = await wait_until(
        lambda: _count(nats_server.url, "civic.gouda.notification.delivered", 3), timeout=10
    )
    assert all(
        e.data["partner"] == "woonpartners" and e.data["channel"] == "webhook" for e in delivered_events
    )

    metrics = (await notifier.client.get("/metrics")).text
    assert (
        'civic_notifier_deliveries_total{channel="webhook",partner="woonpartners",result="delivered"}'
        in metrics
    )
    assert _delivered_metric() - delivered_before == 3


def _delivered_metric() -> float:
    labels = {"partner": "woonpartners", "channel": "webhook", "result": "delivered"}
    return REGISTRY.get_sample_value("civic_notifier_deliveries_total", labels) or 0.0


async def webhook_failures(url: str) -> list[CloudEvent]:
    """``notification.failed`` of webhooks (the acknowledgement mails that signal.routed schedules
    fail too in these tests, since no intake runs)."""
    events = await bus_events(url, "civic.gouda.notification.failed")
    return [e for e in events if e.data["channel"] == "webhook"]


async def _count(url: str, subject: str, expected: int) -> list[CloudEvent] | None:
    events = await bus_events(url, subject)
    return events if len(events) >= expected else None


async def test_receiver_down_for_a_while_then_up_gets_every_webhook_once(
    notifier_factory, make_tenant, receiver, wait_until
) -> None:
    notifier = await notifier_factory(
        make_tenant(TENANT, scopes=["rules:admin"]), retry_schedule_s=[0.3] * 30
    )
    _, endpoint = await notifier.register("woonpartners", receiver.url)
    receiver.stop()  # the partner is down: nothing listens on its port
    sent = [await notifier.publish(TENANT, routed(["woonpartners"])) for _ in range(5)]

    async def retried() -> bool:
        log = await notifier.deliveries(partner="woonpartners")
        return len(log) == 5 and all(d["attempts"] >= 2 and d["status"] != "delivered" for d in log)

    await wait_until(retried, timeout=30, message="every delivery to have failed at least twice")
    receiver.start()

    async def all_delivered() -> bool:
        log = await notifier.deliveries(partner="woonpartners")
        return all(d["status"] == "delivered" for d in log)

    await wait_until(all_delivered, timeout=30, message="every delivery to arrive")
    ids = Counter(r.headers["webhook-id"] for r in receiver.delivered())
    assert len(ids) == 5 and set(ids.values()) == {1}
    assert {CloudEvent.from_json(r.body).id for r in receiver.delivered()} == {e.id for e in sent}
    assert all(verifies(endpoint["secret"], r) for r in receiver.delivered())
    detail = await notifier.delivery((await notifier.deliveries(partner="woonpartners"))[0]["id"])
    outcomes = [a["outcome"] for a in detail["attempt_log"]]
    assert outcomes[-1] == "delivered" and set(outcomes[:-1]) == {"retry"}
    assert all("connection failed" in (a["error"] or "") for a in detail["attempt_log"][:-1])


async def test_410_disables_the_endpoint_and_tells_the_partner(
    notifier_factory, make_tenant, receiver, mail, wait_until, nats_server
) -> None:
    notifier = await notifier_factory(make_tenant(TENANT, scopes=["rules:admin"]), smtp_port=mail.port)
    partner, endpoint = await notifier.register("woonpartners", receiver.url)
    receiver.answer(410)
    await notifier.publish(TENANT, routed(["woonpartners"]))
    path = f"/v1/partners/{partner['id']}/endpoints/{endpoint['id']}"

    async def disabled() -> dict[str, Any] | None:
        body: dict[str, Any] = (await notifier.client.get(path)).json()
        return body if not body["enabled"] else None

    state = await wait_until(disabled, timeout=20, message="the endpoint to be disabled")
    assert state["disabled_reason"] == "gone"
    [failed] = await notifier.deliveries(partner="woonpartners", channel="webhook")
    assert failed["status"] == "failed" and failed["attempts"] == 1 and failed["last_status_code"] == 410

    told = await mail.wait_for_async(lambda m: m["To"] == "it@woonpartners.example", timeout=20)
    assert "uitgeschakeld" in str(told["Subject"]) and receiver.url in told.get_body(("plain",)).get_content()
    events = await wait_until(lambda: webhook_failures(nats_server.url), timeout=10)
    assert events[0].data["reason"] == "endpoint_disabled: gone" and "http" not in str(events[0].data)

    # Nothing more goes to a disabled endpoint, and a manual retry is refused until it is enabled.
    await notifier.publish(TENANT, routed(["woonpartners"]))
    await asyncio.sleep(1.0)
    assert len(receiver.requests) == 1
    refused = await notifier.client.post(f"/v1/deliveries/{failed['id']}/retry")
    assert refused.status_code == 409 and refused.headers["content-type"] == "application/problem+json"
    enabled = await notifier.client.patch(path, json={"enabled": True})
    assert enabled.json()["enabled"] and enabled.json()["disabled_reason"] is None
    retried = await notifier.client.post(f"/v1/deliveries/{failed['id']}/retry")
    assert retried.status_code == 202, retried.text
    await wait_until(lambda: len(receiver.delivered()) == 1, timeout=20, message="the manual retry")
    assert receiver.delivered()[0].headers["webhook-id"] == failed["message_id"]


async def test_429_with_retry_after_is_honoured(notifier_factory, make_tenant, receiver, wait_until) -> None:
    notifier = await notifier_factory(make_tenant(TENANT, scopes=["rules:admin"]), retry_schedule_s=[0.1] * 5)
    await notifier.register("woonpartners", receiver.url)
    receiver.answer((429, {"Retry-After": "2"}))
    await notifier.publish(TENANT, routed(["woonpartners"]))
    await wait_until(lambda: len(receiver.delivered()) == 1, timeout=20, message="the webhook after the 429")

    async def recorded() -> list[dict[str, Any]] | None:
        log = await notifier.deliveries(partner="woonpartners", status="delivered")
        return log or None

    [delivery] = await wait_until(recorded, timeout=10, message="the delivery to be recorded")
    detail = await notifier.delivery(delivery["id"])
    first, second = detail["attempt_log"]
    assert first["outcome"] == "throttled" and first["status_code"] == 429
    assert second["outcome"] == "delivered"
    # The schedule alone would have tried again after 0.1 s; the receiver asked for 2 s, counted
    # from its answer, which came after the first attempt started (``finished_at`` is when the
    # outcome was recorded, which under load can be a little later than the answer).
    waited = datetime.fromisoformat(second["started_at"]) - datetime.fromisoformat(first["started_at"])
    assert waited.total_seconds() >= 1.99
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1


async def test_redirects_are_not_followed_and_a_failed_delivery_can_be_retried(
    notifier_factory, make_tenant, receiver, wait_until, nats_server
) -> None:
    notifier = await notifier_factory(make_tenant(TENANT, scopes=["rules:admin"]), retry_schedule_s=[0.1])
    await notifier.register("woonpartners", receiver.url)
    receiver.answer((302, {"Location": f"http://127.0.0.1:{receiver.port}/elsewhere"}), 500)
    await notifier.publish(TENANT, routed(["woonpartners"]))

    async def failed() -> dict[str, Any] | None:
        log = await notifier.deliveries(partner="woonpartners", status="failed")
        return log[0] if log else None

    delivery = await wait_until(failed, timeout=20, message="the delivery to fail")
    assert [r.path for r in receiver.requests] == ["/hooks/civic", "/hooks/civic"]
    assert delivery["attempts"] == 2 and "gave up after 2 attempts" in delivery["status_reason"]
    # (The acknowledgement mail that signal.routed schedules fails too: no intake runs here.)
    [event] = await wait_until(lambda: webhook_failures(nats_server.url), timeout=10)
    assert event.data["delivery_id"] == delivery["id"] and event.data["attempts"] == 2

    retried = await notifier.client.post(f"/v1/deliveries/{delivery['id']}/retry")
    assert retried.status_code == 202
    await wait_until(lambda: len(receiver.delivered()) == 1, timeout=20, message="the manual retry")

    async def recorded() -> dict[str, Any] | None:
        detail = await notifier.delivery(delivery["id"])
        return detail if detail["status"] == "delivered" else None

    detail = await wait_until(recorded, timeout=10, message="the retry to be recorded")
    assert [a["number"] for a in detail["attempt_log"]] == [1, 2, 3]
    again = await notifier.client.post(f"/v1/deliveries/{delivery['id']}/retry")
    assert again.status_code == 409


async def test_a_status_change_that_names_its_partners_goes_to_them_before_its_routing_is_handled(
    make_tenant, notifier_factory, receiver, wait_until
) -> None:
    """Routing publishes a case's first change with ``signal.routed``; notifier follows them on two
    consumers, so it may see the change first. The change names the case's partners as they are
    after it, and goes to them without waiting for the other event."""
    notifier = await notifier_factory(make_tenant(TENANT, scopes=["rules:admin"]))
    await notifier.register("woonpartners", receiver.url)
    data = routed(["woonpartners"])
    await notifier.publish(TENANT, status(data, "in_progress", 2, "We komen dinsdag."))
    await wait_until(lambda: len(receiver.delivered()) == 1, timeout=20, message="the status webhook")
    [first] = receiver.delivered()
    assert CloudEvent.from_json(first.body).type == "nl.civicsignals.case.status_changed.v1"
    await notifier.publish(TENANT, data)
    await wait_until(lambda: len(receiver.delivered()) == 2, timeout=20, message="the routed webhook")


async def test_a_case_forwarded_to_another_partner_brings_it_the_status_changes_from_then_on(
    make_tenant, notifier_factory, receiver, wait_until
) -> None:
    """The partners of a status change are those of the case after it, not those it was routed to."""
    notifier = await notifier_factory(make_tenant(TENANT, scopes=["rules:admin"]))
    await notifier.register("zorgpartner", receiver.url)
    data = routed(["woonpartners"])
    await notifier.publish(TENANT, data)
    await notifier.publish(TENANT, status(data, "forwarded", 2, partners=["woonpartners", "zorgpartner"]))
    await wait_until(lambda: len(receiver.delivered()) == 1, timeout=20, message="the forwarded change")
    await asyncio.sleep(1.0)  # the routed event, not addressed to this partner, must not follow
    [only] = receiver.delivered()
    event = CloudEvent.from_json(only.body)
    assert event.type == "nl.civicsignals.case.status_changed.v1" and event.data["to"] == "forwarded"


async def test_a_status_change_without_partners_waits_for_its_routing_to_know_them(
    make_tenant, notifier_factory, receiver, wait_until
) -> None:
    """An event from before routing named the partners in status changes: it waits (redelivered)
    for the case's ``signal.routed`` instead of going to nobody."""
    notifier = await notifier_factory(make_tenant(TENANT, scopes=["rules:admin"]))
    await notifier.register("woonpartners", receiver.url)
    data = routed(["woonpartners"])
    change = status(data, "in_progress", 2, "We komen dinsdag.")
    event = make_event(tenant=TENANT, service="routing", data=change)
    del event.data["partners"]
    await notifier.runtime.bus.publish(change.bus_subject(TENANT), event)
    await asyncio.sleep(3.5)  # longer than the first redeliveries (0.25, 0.5, 1 s): three were made
    assert receiver.delivered() == []
    await notifier.publish(TENANT, data)
    await wait_until(lambda: len(receiver.delivered()) == 2, timeout=20, message="both webhooks")
    types = sorted(CloudEvent.from_json(item.body).type for item in receiver.delivered())
    assert types == ["nl.civicsignals.case.status_changed.v1", "nl.civicsignals.signal.routed.v1"]


async def test_a_photo_added_reaches_the_partners_of_the_case_once_it_is_routed(
    make_tenant, notifier_factory, receiver, wait_until
) -> None:
    """A portal sends its photos right after the signal, so ``signal.attachment_added`` usually
    comes before the case's ``signal.routed``: it waits for it, then goes to the case's partners
    that subscribed to it; a partner the case is forwarded to later gets the next one. The body
    is the event as it travelled (the count, no file, no name)."""
    notifier = await notifier_factory(make_tenant(TENANT, scopes=["rules:admin"]))
    _, endpoint = await notifier.register("woonpartners", receiver.url)
    _, later_endpoint = await notifier.register("zorgpartner", receiver.url)
    # A third partner of the case whose endpoint wants only status changes gets no attachment news.
    await notifier.register("welzijn", receiver.url, event_types=["case.status_changed"])
    data = routed(["woonpartners", "welzijn"])
    await notifier.publish(TENANT, SignalAttachmentAdded(signal_id=data.signal_id, attachments=1))
    await asyncio.sleep(1.0)  # redelivered while routing is unknown; nothing goes out yet
    assert receiver.delivered() == []

    def of_type(kind: str) -> list[Any]:
        return [r for r in receiver.delivered() if CloudEvent.from_json(r.body).type == kind]

    added = "nl.civicsignals.signal.attachment_added.v1"
    await notifier.publish(TENANT, data)
    await wait_until(lambda: len(of_type(added)) == 1, timeout=20, message="the attachment webhook")
    [first] = of_type(added)
    assert verifies(endpoint["secret"], first)
    assert CloudEvent.from_json(first.body).data == {"signal_id": data.signal_id, "attachments": 1}

    await notifier.publish(
        TENANT, status(data, "forwarded", 2, partners=["woonpartners", "welzijn", "zorgpartner"])
    )
    await wait_until(
        lambda: len(of_type("nl.civicsignals.case.status_changed.v1")) == 3,
        timeout=20,
        message="the forwarded change at all three partners",
    )
    await notifier.publish(TENANT, SignalAttachmentAdded(signal_id=data.signal_id, attachments=2))
    await wait_until(lambda: len(of_type(added)) == 3, timeout=20, message="the second attachment webhooks")
    await asyncio.sleep(0.5)  # nothing more may follow: not to welzijn, not twice
    second = [r for r in of_type(added) if CloudEvent.from_json(r.body).data["attachments"] == 2]
    assert len(of_type(added)) == 3 and len(second) == 2
    assert sum(verifies(later_endpoint["secret"], r) for r in second) == 1
    assert sum(verifies(endpoint["secret"], r) for r in second) == 1
    deliveries = await notifier.deliveries(channel="webhook")
    assert Counter(d["partner"] for d in deliveries if d["event_type"].endswith("attachment_added.v1")) == {
        "woonpartners": 2,
        "zorgpartner": 1,
    }


async def test_a_shutdown_lets_the_webhook_under_way_finish_so_the_restart_does_not_send_it_again(
    make_tenant, notifier_factory, receiver, wait_until
) -> None:
    """Notifier stopped (a deploy) while a webhook is on its way: the attempt finishes and is
    recorded before the process ends, so the restarted notifier does not send it a second time
    once its lease runs out (before, the attempt was cancelled halfway and left to its lease)."""
    tenant = make_tenant(TENANT, scopes=["rules:admin"])
    notifier = await notifier_factory(tenant)
    await notifier.register("woonpartners", receiver.url)
    receiver.delay_s = 1.5
    await notifier.publish(TENANT, routed(["woonpartners"]))
    await wait_until(lambda: len(receiver.requests) == 1, timeout=20, message="the webhook on its way")
    await notifier.stop()
    assert len(receiver.delivered()) == 1

    restarted = await notifier_factory(tenant)
    (delivery,) = await restarted.deliveries(channel="webhook")
    assert delivery["status"] == "delivered", delivery
    detail = await restarted.delivery(delivery["id"])
    assert [attempt["outcome"] for attempt in detail["attempt_log"]] == ["delivered"]
    lease = restarted.app.state.notifier.settings.lease_s("webhook")
    await asyncio.sleep(lease + 1.0)  # a delivery left to its lease would be claimed again by now
    assert len(receiver.requests) == 1


async def test_a_shutdown_gives_back_what_it_claimed_but_did_not_start(
    make_tenant, notifier_factory, receiver, wait_until
) -> None:
    """With its one sending slot busy, notifier has claimed a second webhook when it is stopped:
    that delivery is due again at once for the next notifier (its attempt ``abandoned``), not after
    its lease, and each webhook still arrives once.

    The lease is the production one (33 s), longer than the test waits: a delivery left to its lease
    would time the wait out. With a short margin, a claim that waits for its slot more than half
    of it is left to its lease by design (``Dispatcher._start_queued``), and a loaded CI machine
    once stalled the restarted notifier over 1 s (the margin was 2 s) between claim and send."""
    tenant = make_tenant(TENANT, scopes=["rules:admin"])
    lease = {"lease_margin_s": 30.0}
    notifier = await notifier_factory(tenant, delivery_concurrency=1, **lease)
    await notifier.register("woonpartners", receiver.url)
    receiver.delay_s = 2.0
    await notifier.publish(TENANT, routed(["woonpartners"]))
    await notifier.publish(TENANT, routed(["woonpartners"]))

    async def both_claimed_one_sent() -> bool:
        deliveries = await notifier.deliveries(channel="webhook")
        return (
            len(deliveries) == 2
            and {d["status"] for d in deliveries} == {"sending"}
            and len(receiver.requests) == 1
        )

    await wait_until(both_claimed_one_sent, timeout=20, message="one webhook on its way, the other claimed")
    await notifier.stop()

    restarted = await notifier_factory(tenant, **lease)

    async def both_delivered() -> bool:
        return [d["status"] for d in await restarted.deliveries(channel="webhook")] == ["delivered"] * 2

    await wait_until(both_delivered, timeout=20, message="the second webhook")
    assert len({request.headers["webhook-id"] for request in receiver.requests}) == 2
    outcomes = []
    for delivery in await restarted.deliveries(channel="webhook"):
        detail = await restarted.delivery(delivery["id"])
        outcomes.append([(attempt["outcome"], attempt["error"]) for attempt in detail["attempt_log"]])
    outcomes.sort()
    # Left to its lease, the claim of the next notifier would have marked it "the attempt's process died".
    given_back = ("abandoned", "not started: notifier stopped")
    assert outcomes == [[given_back, ("delivered", None)], [("delivered", None)]]


class SlowIntake:
    """An intake that takes ``delay_s`` to answer notifier's contact look-ups, then 503 (real HTTP
    on loopback): the resident mails waiting on it hold their sending slots that long. ``started``
    has a time for each signal asked for."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.started: list[float] = []
        self.answered: list[float] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                outer.started.extend(time.monotonic() for _ in body["signal_ids"])
                time.sleep(outer.delay_s)
                outer.answered.append(time.monotonic())
                self.send_response(503)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_resident_mails_waiting_on_intake_do_not_hold_up_the_partners_webhooks(
    make_tenant, notifier_factory, receiver, wait_until, tmp_path
) -> None:
    """Webhooks and e-mails have sending slots of their own: with every e-mail slot taken by mails
    waiting on a slow intake, a partner's webhook still goes at once."""
    intake = SlowIntake(delay_s=4.0)
    keys = tmp_path / "intake-keys"
    keys.mkdir()
    (keys / TENANT).write_text("notifier-key")
    try:
        notifier = await notifier_factory(
            make_tenant(TENANT, scopes=["rules:admin"]),
            delivery_concurrency=2,
            acknowledgement_wait_s=0.0,
            intake_url=intake.url,
            intake_keys_dir=keys,
        )
        await notifier.register("woonpartners", receiver.url)
        for _ in range(3):  # acknowledgements due at once: two fill the e-mail slots, one waits
            await notifier.publish(TENANT, signal_received(new_id()))
        await wait_until(lambda: len(intake.started) == 2, timeout=20, message="both e-mail slots taken")
        await notifier.publish(TENANT, routed(["woonpartners"]))
        await wait_until(lambda: receiver.delivered(), timeout=20, message="the webhook")
        webhook_at = time.monotonic()
        assert not intake.answered or webhook_at < intake.answered[0], "the webhook waited for a mail"
    finally:
        intake.stop()
