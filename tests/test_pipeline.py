"""A signal travels through intake, classifier, routing and notifier as separate processes.

Everything is real: nats-server with JetStream, an SMTP server, SQLite files, HTTP between
notifier and intake. Nothing outside the project is involved.
"""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage

import nats
import pytest

from civicsignals.common.bus import DLQ_REASON_HEADER, DLQ_STREAM, STREAM, stream_messages
from civicsignals.common.events import CloudEvent
from tests.conftest import SERVICE_NAMES, Stack, event_data

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

AFVAL = "Er ligt al drie dagen een berg afval en vuilniszakken naast de container op de Kerkstraat."


def post_signal(
    stack: Stack, *, consent: bool = True, email: str = "bewoner@example.org", **extra: object
) -> dict:
    body = {
        "text": AFVAL,
        "channel": "web",
        "kind": "report",
        "language": "nl",
        "reporter": {"name": "Anna de Vries", "email": email, "phone": "06-12345678", "consent": consent},
        **extra,
    }
    with stack.client() as client:
        response = client.post(f"{stack.url('intake')}/v1/signals", json=body)
    assert response.status_code == 201, response.text
    created: dict = response.json()
    return created


def wait_for_status(
    stack: Stack, tracking_code: str, status: str | tuple[str, ...], timeout: float = 60
) -> dict:
    deadline = time.monotonic() + timeout
    last: dict = {}
    with stack.client() as client:
        while time.monotonic() < deadline:
            response = client.get(f"{stack.url('intake')}/v1/tracking/{tracking_code}")
            assert response.status_code == 200, response.text
            last = response.json()
            if last["status"] == status or last["status"] in status:
                return last
            time.sleep(0.2)
    raise AssertionError(f"status stayed {last.get('status')!r}, wanted {status!r}\n{stack.logs()}")


def mail_with(stack: Stack, tracking_code: str, timeout: float = 60) -> EmailMessage:
    try:
        return stack.mail.wait_for(lambda m: tracking_code in str(m["Subject"]), timeout=timeout)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{stack.logs()}") from exc


async def stream_events(stack: Stack, stream: str = STREAM) -> list:
    client = await nats.connect(stack.nats.url)
    try:
        return await stream_messages(client.jetstream(), stream)
    finally:
        await client.close()


async def test_signal_is_stored_classified_routed_and_acknowledged(stack: Stack) -> None:
    for name in SERVICE_NAMES:
        stack.start(name)
    feed_client = await nats.connect(stack.nats.url)
    feed: asyncio.Queue = asyncio.Queue()
    await feed_client.subscribe("civic.demo.dept.*.assigned", cb=feed.put)
    try:
        created = await asyncio.to_thread(post_signal, stack)
        code = created["tracking_code"]
        assert created["status_url"].endswith(f"/v1/tracking/{code}")

        # (b) a plain NATS subscriber on the department feed receives a valid CloudEvent.
        try:
            message = await asyncio.wait_for(feed.get(), timeout=60)
        except TimeoutError:
            raise AssertionError(f"no department feed event\n{stack.logs()}") from None
        event = CloudEvent.from_json(message.data)
        assert message.subject == "civic.demo.dept.afval-en-reiniging.assigned"
        assert event.type == "nl.civicsignals.dept.assigned.v1"
        assert event.source == "/civicsignals/routing"
        assert event.tenant == "demo"
        assert event.data["tracking_code"] == code
        assert event.data["topic"] == "afval"
        assert "example.org" not in message.data.decode() and "Anna" not in message.data.decode()

        # (c) the public tracking page shows the routed status, and no personal data.
        tracking = await asyncio.to_thread(wait_for_status, stack, code, "assigned")
        assert [entry["status"] for entry in tracking["history"]] == ["received", "assigned"]
        assert tracking["expected_by"] is not None and tracking["service_promise"]
        assert "Anna" not in str(tracking) and "example.org" not in str(tracking)

        # (a) the SMTP server received the acknowledgement with the tracking code, in Dutch.
        mail = await asyncio.to_thread(mail_with, stack, code)
        assert mail["To"] == "bewoner@example.org"
        assert mail.is_multipart()
        text = mail.get_body(preferencelist=("plain",)).get_content()
        html = mail.get_body(preferencelist=("html",)).get_content()
        assert code in text and f"http://127.0.0.1:8000/v1/tracking/{code}" in text
        assert "Dank u wel" in text and code in html
    finally:
        await feed_client.close()

    # The event on the bus carried the redacted text and no contact data.
    received = [m for m in await stream_events(stack) if m.subject == "civic.demo.signal.received"]
    assert len(received) == 1
    payload = received[0].data.decode()
    assert "06-12345678" not in payload and "example.org" not in payload and "Anna de Vries" not in payload
    assert received[0].headers["Nats-Msg-Id"] == CloudEvent.from_json(received[0].data).id


async def test_no_mail_without_consent(stack: Stack) -> None:
    for name in SERVICE_NAMES:
        stack.start(name)
    silent = await asyncio.to_thread(post_signal, stack, consent=False, email="stil@example.org")
    loud = await asyncio.to_thread(post_signal, stack, consent=True, email="luid@example.org")
    # Notifier handles signal.received in order, so once the later signal's mail is there, the
    # earlier one has been decided on.
    await asyncio.to_thread(mail_with, stack, loud["tracking_code"])
    await asyncio.to_thread(wait_for_status, stack, silent["tracking_code"], "assigned")
    recipients = [str(m["To"]) for m in stack.mail.messages()]
    assert recipients == ["luid@example.org"]


@pytest.mark.parametrize("fault", ["hold", "exit_after_publish"])
async def test_event_goes_out_exactly_once_when_intake_dies_around_the_publish(
    stack: Stack, fault: str
) -> None:
    """'hold': intake is killed after its commit, before any publish. 'exit_after_publish': it dies
    after publishing and before marking the row. Either way the restarted relay gets the event out,
    and JetStream's duplicate window keeps it to one message."""
    for name in ("classifier", "routing"):
        stack.start(name)
    stack.start("intake", outbox_fault=fault)
    created = await asyncio.to_thread(post_signal, stack, consent=False)
    if fault == "hold":
        await asyncio.sleep(1.0)
        assert not [m for m in await stream_events(stack) if m.subject == "civic.demo.signal.received"]
        stack.kill("intake")
    else:
        deadline = time.monotonic() + 30
        while stack.supervisor.is_running("intake") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not stack.supervisor.is_running("intake"), "the fault should have ended intake"
    stack.start("intake")
    await asyncio.to_thread(wait_for_status, stack, created["tracking_code"], "assigned")

    events = await stream_events(stack)
    received = [m for m in events if m.subject == "civic.demo.signal.received"]
    assert [event_data(m.data)["signal_id"] for m in received] == [created["id"]]
    routed = [m for m in events if m.subject == "civic.demo.signal.routed"]
    assert len(routed) == 1
    with stack.client() as client:
        cases = client.get(f"{stack.url('routing')}/v1/cases").json()["items"]
    assert [case["signal_id"] for case in cases] == [created["id"]]


async def test_malformed_events_go_to_the_dead_letter_stream_and_the_rest_flows_on(stack: Stack) -> None:
    for name in SERVICE_NAMES:
        stack.start(name)
    client = await nats.connect(stack.nats.url)
    try:
        js = client.jetstream()
        await js.publish(
            "civic.demo.signal.received", b"this is not json", headers={"Nats-Msg-Id": "poison-1"}
        )
        not_a_signal = CloudEvent(
            source="/test",
            type="nl.civicsignals.signal.received.v1",
            subject="x",
            tenant="demo",
            data={"text": 1},
        )
        await js.publish(
            "civic.demo.signal.received", not_a_signal.to_json(), headers={"Nats-Msg-Id": "poison-2"}
        )
    finally:
        await client.close()
    created = await asyncio.to_thread(post_signal, stack)
    await asyncio.to_thread(wait_for_status, stack, created["tracking_code"], "assigned")
    await asyncio.to_thread(mail_with, stack, created["tracking_code"])

    dead = await stream_events(stack, DLQ_STREAM)
    by_consumer: dict[str, list] = {}
    for message in dead:
        by_consumer.setdefault(message.subject, []).append(message)
    for consumer in ("classifier-signal-received", "notifier-signal-received"):
        letters = by_consumer.get(f"dlq.unknown.{consumer}", []) + by_consumer.get(f"dlq.demo.{consumer}", [])
        assert len(letters) == 2, (consumer, list(by_consumer))
        assert all(letter.headers[DLQ_REASON_HEADER] for letter in letters)
