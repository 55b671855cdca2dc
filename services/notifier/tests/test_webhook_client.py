"""The webhook client (and intake's contact reader, on the same client library) against a real HTTP server on loopback: redirects are answers, not followed;
``Retry-After`` comes through; a slow receiver is a time-out; a closed port is unreachable; a
receiver's long answer does not break the next request."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from civicsignals.common.bus import PermanentError, TransientError
from civicsignals.devstack.ports import free_port
from civicsignals.notifier.service import IntakeContacts
from civicsignals.notifier.webhook_client import WebhookClient, WebhookTimeout, WebhookUnreachable


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, bytes, str | None]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
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
    assert {path for path, _, _ in Handler.seen} == {"/v1/signals/01SIGNAL/contact"}
