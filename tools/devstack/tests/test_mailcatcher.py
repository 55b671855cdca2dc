"""MailCatcher keeps each message, verbatim, as an .eml file and reads them back."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from civicsignals.devstack.mailcatcher import MailCatcher
from civicsignals.devstack.ports import free_port, port_accepts_connections

NAME = re.compile(r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{32}\.eml$")


def _multipart(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = "Gemeente Demo <noreply@demo.example.org>"
    msg["To"] = "Test Bewoner <bewoner@example.org>"
    msg.set_content("Wij hebben uw melding ontvangen. Uw volgcode is CS-7K2Q.")
    msg.add_alternative("<p>Wij hebben uw melding <b>ontvangen</b>.</p>", subtype="html")
    msg.add_attachment(
        b"\x00\x01binary\xff", maintype="application", subtype="octet-stream", filename="bijlage.bin"
    )
    return msg


def test_multipart_message_is_stored_as_eml_and_parsed_back(tmp_path: Path) -> None:
    folder = tmp_path / "mail"
    sent = _multipart("Uw melding CS-7K2Q is ontvangen")
    expected = sent.as_bytes()  # fixes the MIME boundaries, so smtplib sends these same bytes
    with MailCatcher(folder) as catcher, smtplib.SMTP("127.0.0.1", catcher.port, timeout=5) as smtp:
        smtp.login("notifier", "whatever")  # any credentials are accepted
        smtp.send_message(sent)
        got = catcher.wait_for(lambda m: "CS-7K2Q" in str(m["Subject"]), timeout=5)

    files = sorted(folder.iterdir())
    assert len(files) == 1 and NAME.match(files[0].name), files
    # Verbatim: the bytes on disk are the message as sent (SMTP uses CRLF line endings).
    assert files[0].read_bytes().replace(b"\r\n", b"\n") == expected

    assert got["To"] == "Test Bewoner <bewoner@example.org>"
    assert got.get_content_type() == "multipart/mixed"
    body = got.get_body(preferencelist=("plain",))
    html = got.get_body(preferencelist=("html",))
    assert body is not None and "CS-7K2Q" in body.get_content()
    assert html is not None and "<b>ontvangen</b>" in html.get_content()
    [attachment] = list(got.iter_attachments())
    assert attachment.get_filename() == "bijlage.bin"
    assert attachment.get_content() == b"\x00\x01binary\xff"


def test_messages_are_oldest_first_and_wait_for_times_out(tmp_path: Path) -> None:
    with MailCatcher(tmp_path / "mail") as catcher:
        with smtplib.SMTP("127.0.0.1", catcher.port, timeout=5) as smtp:
            for n in range(3):
                smtp.send_message(_multipart(f"bericht {n}"))
        assert [m["Subject"] for m in catcher.messages()] == ["bericht 0", "bericht 1", "bericht 2"]
        assert catcher.wait_for(lambda m: m["Subject"] == "bericht 1")["Subject"] == "bericht 1"
        with pytest.raises(TimeoutError, match="bericht 2"):
            catcher.wait_for(lambda m: m["Subject"] == "nooit", timeout=0.2)
        catcher.clear()
        assert catcher.messages() == []


async def test_wait_for_async(tmp_path: Path) -> None:
    with MailCatcher(tmp_path / "mail") as catcher:
        with smtplib.SMTP("127.0.0.1", catcher.port, timeout=5) as smtp:
            smtp.send_message(_multipart("async"))
        got = await catcher.wait_for_async(timeout=5)
        assert got["Subject"] == "async"


def test_standalone_main(tmp_path: Path) -> None:
    port = free_port()
    folder = tmp_path / "mail"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "civicsignals.devstack.mailcatcher",
            "--dir",
            str(folder),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_accepts_connections(port):
            assert proc.poll() is None and time.monotonic() < deadline, "mail catcher did not start"
            time.sleep(0.05)
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
            smtp.send_message(_multipart("standalone"))
        assert MailCatcher(folder).wait_for(timeout=5)["Subject"] == "standalone"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    assert str(port).encode() in out
