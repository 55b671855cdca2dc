"""The webhook client (and intake's contact reader, on the same client library) against a real HTTP server on loopback: redirects are answers, not followed; contact reads asked together are one look-up;
``Retry-After`` comes through; a slow receiver is a time-out; a closed port is unreachable; a
receiver's long answer does not break the next request."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from civicsignals.common.bus import PermanentError, TransientError
from civicsignals.devstack.ports import free_port
from civicsignals.notifier.service import LOOKUP_LIMIT, IntakeContacts
from civicsignals.notifier.webhook_client import WebhookClient, WebhookTimeout, WebhookUnreachable


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, bytes, str | None]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path.endswith("/contacts/lookup"):
            self._lookup(body)
            return
        Handler.seen.append((self.path, body, self.headers.get("webhook-id")))
        if self.path == "/moved":
            self._answer(302, {"location": "/elsewhere"})
        elif self.path == "/busy":
            self._answer(429, {"retry-after": "120"})
        elif self.path == "/slow":
            time.sleep(1.5)
            self._answer(204)
        elif self.path == "/chatty":
            self._answer(200, body=b"x" * 200_000)
        else:
            self._answer(204)

    def do_GET(self) -> None:
        Handler.seen.append((self.path, b"", self.headers.get("authorization")))
        self._answer(404)  # intake keeps no contact for this signal

    def _lookup(self, body: bytes) -> None:
        """intake's contact look-up: a contact for the ids that start with 01FOUND; under /old, an
        intake from before the look-up (404)."""
        Handler.seen.append((self.path, body, self.headers.get("authorization")))
        if self.path.startswith("/old/"):
            self._answer(404)
            return
        ids = json.loads(body)["signal_ids"]
        contacts = [
            {"signal_id": i, "tracking_code": "T", "name": None, "email": f"{i}@example.org", "consent": True}
            for i in ids
            if i.startswith("01FOUND")
        ]
        missing = [i for i in ids if not i.startswith("01FOUND")]
        self._answer(
            200,
            {"content-type": "application/json"},
            json.dumps({"contacts": contacts, "missing": missing}).encode(),
        )

    def _answer(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


async def test_a_redirect_is_the_answer_and_is_not_followed(server: str) -> None:
    client = WebhookClient(max_connections=4)
    try:
        answer = await client.post(f"{server}/moved", b"{}", {"webhook-id": "msg_1"}, timeout_s=5)
    finally:
        await client.close()
    assert answer.status_code == 302
    assert [path for path, _, _ in Handler.seen] == ["/moved"]


async def test_status_retry_after_body_and_headers_go_through(server: str) -> None:
    client = WebhookClient(max_connections=4)
    try:
        busy = await client.post(f"{server}/busy", b'{"a":1}', {"webhook-id": "msg_2"}, timeout_s=5)
        chatty = await client.post(f"{server}/chatty", b"{}", {"webhook-id": "msg_3"}, timeout_s=5)
        after = await client.post(f"{server}/ok", b"{}", {"webhook-id": "msg_4"}, timeout_s=5)
    finally:
        await client.close()
    assert (busy.status_code, busy.retry_after) == (429, "120")
    assert chatty.status_code == 200 and after.status_code == 204
    assert Handler.seen[0] == ("/busy", b'{"a":1}', "msg_2")
    assert [webhook_id for _, _, webhook_id in Handler.seen] == ["msg_2", "msg_3", "msg_4"]


async def test_a_slow_receiver_is_a_timeout(server: str) -> None:
    client = WebhookClient(max_connections=4)
    try:
        with pytest.raises(WebhookTimeout):
            await client.post(f"{server}/slow", b"{}", {}, timeout_s=0.3)
    finally:
        await client.close()


async def test_a_closed_port_is_unreachable() -> None:
    client = WebhookClient(max_connections=4)
    try:
        with pytest.raises(WebhookUnreachable):
            await client.post(f"http://127.0.0.1:{free_port()}/hook", b"{}", {}, timeout_s=5)
    finally:
        await client.close()


async def test_contacts_from_an_unreachable_intake_are_a_transient_error(tmp_path: Path) -> None:
    (tmp_path / "gouda").write_text("service-key")
    contacts = IntakeContacts(f"http://127.0.0.1:{free_port()}", tmp_path, timeout_s=5)
    try:
        with pytest.raises(TransientError, match="intake unreachable"):
            await contacts.fetch("gouda", "01SIGNAL")
        with pytest.raises(PermanentError, match="no intake service key"):
            await contacts.fetch("delft", "01SIGNAL")
    finally:
        await contacts.close()


async def test_a_rotated_intake_key_is_used_from_the_next_read(server: str, tmp_path: Path) -> None:
    key_file = tmp_path / "gouda"
    key_file.write_text("first-key\n")
    contacts = IntakeContacts(server, tmp_path, timeout_s=5)
    try:
        assert await contacts.fetch("gouda", "01SIGNAL") is None
        assert await contacts.fetch("gouda", "01SIGNAL") is None
        key_file.write_text("second-key\n")
        later = key_file.stat().st_mtime_ns + 1_000_000_000
        os.utime(key_file, ns=(later, later))  # a new mtime even on a coarse file system clock
        assert await contacts.fetch("gouda", "01SIGNAL") is None
    finally:
        await contacts.close()
    assert [auth for _, _, auth in Handler.seen] == [
        "Bearer first-key",
        "Bearer first-key",
        "Bearer second-key",
    ]
    assert {path for path, _, _ in Handler.seen} == {"/v1/contacts/lookup"}


async def test_contact_reads_asked_together_go_to_intake_as_one_look_up_per_tenant(
    server: str, tmp_path: Path
) -> None:
    """The dispatcher starts its claimed mails together; their reads make one request per tenant
    (each signal named once), and each read gets its own signal's answer."""
    (tmp_path / "gouda").write_text("gouda-key")
    (tmp_path / "delft").write_text("delft-key")
    contacts = IntakeContacts(server, tmp_path, timeout_s=5)
    try:
        first, gone, again, other = await asyncio.gather(
            contacts.fetch("gouda", "01FOUND1"),
            contacts.fetch("gouda", "01ERASED"),
            contacts.fetch("gouda", "01FOUND1"),
            contacts.fetch("delft", "01FOUND2"),
        )
        many = await asyncio.gather(
            *(contacts.fetch("gouda", f"01FOUND-{i:03}") for i in range(LOOKUP_LIMIT + 5))
        )
    finally:
        await contacts.close()
    assert first == again and first is not None and first.email == "01FOUND1@example.org"
    assert gone is None
    assert other is not None and other.email == "01FOUND2@example.org"
    assert [m.email for m in many if m] == [f"01FOUND-{i:03}@example.org" for i in range(LOOKUP_LIMIT + 5)]
    requests = [(json.loads(body)["signal_ids"], auth) for _, body, auth in Handler.seen]
    assert sorted(requests[:2], key=lambda request: str(request[1])) == [
        (["01FOUND2"], "Bearer delft-key"),
        (["01FOUND1", "01ERASED"], "Bearer gouda-key"),
    ]
    # More than intake takes at once: two look-ups, of 100 and of the 5 left
    # (sent at once, so they may arrive in either order), together naming each signal once.
    assert sorted(len(ids) for ids, _ in requests[2:]) == [5, LOOKUP_LIMIT]
    assert sorted(i for ids, _ in requests[2:] for i in ids) == [
        f"01FOUND-{i:03}" for i in range(LOOKUP_LIMIT + 5)
    ]


async def test_an_intake_without_the_look_up_is_asked_one_signal_at_a_time(
    server: str, tmp_path: Path
) -> None:
    """During an upgrade notifier may be newer than intake: a 404 for the look-up falls back to
    the one-signal read."""
    (tmp_path / "gouda").write_text("gouda-key")
    contacts = IntakeContacts(f"{server}/old", tmp_path, timeout_s=5)
    try:
        answers = await asyncio.gather(contacts.fetch("gouda", "01A"), contacts.fetch("gouda", "01B"))
    finally:
        await contacts.close()
    assert answers == [None, None]
    assert sorted(path for path, _, _ in Handler.seen) == [
        "/old/v1/contacts/lookup",
        "/old/v1/signals/01A/contact",
        "/old/v1/signals/01B/contact",
    ]
