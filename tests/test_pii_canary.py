"""PII canary (issue 8): unique fake personal data sent in through every door must not appear in
any message on the bus (CIVIC and CIVIC_DLQ), any log line of any process, any webhook body, or
the insights database.

The doors: the portal API, a phone conversation, an Open311 client, the satisfaction form, the
resident's own answer and photo on their tracking page, and a partner's Open311 update.
The canaries are what DESIGN §2 promises to redact from free text (e-mail addresses, phone
numbers, BSNs, IBANs) and the reporter's contact data, name included. A name written in free
text by someone else is not among the promises and is not planted there.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
import threading
import zlib
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response

from tests.conftest import Stack
from tests.faults import read_subject
from tests.test_pipeline import mail_with, wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def png_pixel() -> bytes:
    """A real one-pixel PNG: intake sniffs what it is sent."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # 1x1, 8 bits, RGBA
    pixels = zlib.compress(b"\x00" + b"\x00" * 4)  # one row: filter byte, one transparent pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def valid_bsn(rng: random.Random) -> str:
    while True:
        digits = [rng.randint(0, 9) for _ in range(8)]
        total = sum(d * w for d, w in zip(digits, range(9, 1, -1), strict=True))
        last = total % 11
        if last < 10 and digits[0] != 0:
            return "".join(map(str, [*digits, last]))


def valid_iban(rng: random.Random) -> str:
    bank = "ABNA"
    account = "".join(str(rng.randint(0, 9)) for _ in range(10))
    numeric = "".join(str(ord(c) - 55) if c.isalpha() else c for c in f"{bank}{account}NL00")
    check = 98 - int(numeric) % 97
    return f"NL{check:02d}{bank}{account}"


class Canaries:
    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        tag = f"{rng.randrange(16**8):08x}"
        self.email = f"kanarie.{tag}@voorbeeld.example.org"
        self.phone = "06" + "".join(str(rng.randint(0, 9)) for _ in range(8))
        self.bsn = valid_bsn(rng)
        self.iban = valid_iban(rng)
        self.name = f"Kanarie{tag.upper()}"

    def in_text(self) -> str:
        return (
            f"Er ligt afval naast de container. Mail {self.email} of bel {self.phone}. "
            f"Mijn BSN is {self.bsn} en mijn rekening {self.iban}."
        )

    def needles(self) -> dict[str, str]:
        phone_digits = self.phone
        return {
            "email": self.email,
            "phone": phone_digits,
            "phone (international)": "31" + phone_digits[1:],
            "bsn": self.bsn,
            "iban": self.iban,
            "name": self.name,
        }


def leaks(haystack: str, canaries: Canaries) -> list[str]:
    flat = haystack.replace(" ", "").replace("-", "")
    return [kind for kind, needle in canaries.needles().items() if needle in haystack or needle in flat]


class Receiver(threading.Thread):
    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.bodies: list[str] = []
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            self.bodies.append((await request.body()).decode())
            return Response(status_code=204)

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))

    def run(self) -> None:
        self.server.run()


async def test_no_personal_data_leaves_through_any_door(stack: Stack, tmp_path: Path) -> None:
    from civicsignals.devstack.ports import free_port

    canaries = Canaries(seed=20261128)
    port = free_port()
    receiver = Receiver(port)
    receiver.start()
    stack.forward_rule_to("afval", "woonpartners")
    names = list(stack.ports)
    for name in names:
        stack.start(name)
    headers = {"Authorization": f"Bearer {stack.dev_key}"}
    intake = stack.url("intake")
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        # Partner webhooks: the afval rule forwards to woonpartners in this test (forward_rule_to).
        notifier = stack.url("notifier")
        assert (await client.post(f"{notifier}/v1/partners", json={"code": "woonpartners"})).status_code in (
            201,
            409,
        )
        endpoint = await client.post(
            f"{notifier}/v1/partners/woonpartners/endpoints", json={"url": f"http://127.0.0.1:{port}/hook"}
        )
        assert endpoint.status_code == 201, endpoint.text

        reporter = {"name": canaries.name, "email": canaries.email, "phone": canaries.phone, "consent": True}
        doors = []
        # 1. the portal API, with the canaries in the text and in the reporter's contact
        signal = await client.post(
            f"{intake}/v1/signals",
            json={
                "text": canaries.in_text(),
                "channel": "web",
                "reporter": reporter,
                "metadata": {"note": canaries.email},
            },
        )
        assert signal.status_code == 201, signal.text
        doors.append(signal.json())
        # 3. a phone conversation
        conversation = await client.post(
            f"{intake}/v1/conversations",
            json={
                "channel": "phone",
                "started_at": "2026-11-28T09:12:00Z",
                "duration_s": 120,
                "team": "kcc",
                "turns": [
                    {"speaker": "agent", "text": "Gemeente, goedemorgen."},
                    {"speaker": "citizen", "text": canaries.in_text()},
                ],
            },
        )
        assert conversation.status_code == 201, conversation.text
        # 4. an Open311 client
        open311 = await client.post(
            f"{intake}/open311/v2/requests.json",
            data={
                "api_key": stack.dev_key,
                "jurisdiction_id": "demo",
                "service_code": "container",
                "lat": "52.0116",
                "long": "4.7105",
                "description": canaries.in_text(),
                "email": canaries.email,
                "phone": canaries.phone,
                "first_name": canaries.name,
                "attribute[container_type]": "glas",
            },
        )
        assert open311.status_code in (200, 201), open311.text

    code = doors[0]["tracking_code"]
    await asyncio.to_thread(wait_for_status, stack, code, ("assigned", "forwarded"))
    await asyncio.to_thread(mail_with, stack, code)

    # 6. the resident's own answer on their page (passed on to routing, shown on the case and
    # sent to the partner), and a photo whose file name is the resident's e-mail address
    routing = stack.url("routing")
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        [case] = (await client.get(f"{routing}/v1/cases", params={"tracking_code": code})).json()["items"]
        for to in ("in_progress", "waiting_on_resident"):
            moved = await client.post(
                f"{routing}/v1/cases/{case['id']}/transitions", json={"to": to, "public_note": "Welke?"}
            )
            assert moved.status_code == 200, moved.text
    await asyncio.to_thread(wait_for_status, stack, code, ("waiting_on_resident",))
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.post(
            f"{intake}/v1/tracking/{code}/updates", json={"action": "reply", "text": canaries.in_text()}
        )
        assert reply.status_code == 202, reply.text
        photo = await client.post(
            f"{intake}/v1/tracking/{code}/attachments",
            files={"file": (f"{canaries.email}.png", png_pixel(), "image/png")},
        )
        assert photo.status_code == 201, photo.text
    await asyncio.to_thread(wait_for_status, stack, code, ("in_progress",))
    # 7. a partner's backend posting an update through Open311's servicerequestupdates
    async with httpx.AsyncClient(timeout=30) as client:
        update = await client.post(
            f"{intake}/open311/v2/servicerequestupdates.json",
            data={
                "api_key": stack.dev_key,
                "jurisdiction_id": "demo",
                "service_request_id": doors[0]["id"],
                "update_id": "canary-1",
                "updated_datetime": "2026-11-30T08:00:00Z",
                "status": "FIXED",
                "description": canaries.in_text(),
                "email": canaries.email,
                "first_name": canaries.name,
            },
        )
        assert update.status_code == 200, update.text
    await asyncio.to_thread(wait_for_status, stack, code, ("resolved",))
    # 5. the satisfaction form, asked once the case has ended
    async with httpx.AsyncClient(timeout=30) as client:
        feedback = await client.post(
            f"{intake}/v1/tracking/{code}/feedback",
            json={"satisfied": False, "score": 2, "comment": f"Bel mij: {canaries.phone}, {canaries.email}"},
        )
        assert feedback.status_code in (201, 202), feedback.text
    for _ in range(100):
        if receiver.bodies:
            break
        await asyncio.sleep(0.3)
    assert receiver.bodies, "the partner webhook never arrived"
    await asyncio.sleep(3.0)  # let the last consumers (insights, notifier) finish

    found: dict[str, list[str]] = {}
    for stream, subject in (("CIVIC", "civic.>"), ("CIVIC_DLQ", "dlq.>")):
        for message in await read_subject(stack.nats.url, subject, stream=stream):
            hits = leaks(
                message.data.decode(errors="replace") + json.dumps(dict(message.headers or {})), canaries
            )
            if hits:
                found.setdefault(f"bus {message.subject}", []).extend(hits)
    for log in sorted((tmp_path / "logs").glob("*.log")):
        for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            hits = leaks(line, canaries)
            if hits:
                found.setdefault(f"log {log.name}:{number}", []).extend(hits)
    for body in receiver.bodies:
        hits = leaks(body, canaries)
        if hits:
            found.setdefault("webhook body", []).extend(hits)
    insights_db = stack.data_dir / "db" / "insights.db"
    if "insights" in names:
        assert insights_db.exists()
        dump = b"".join(p.read_bytes() for p in insights_db.parent.glob("insights.db*")).decode(
            errors="replace"
        )
        hits = leaks(dump, canaries)
        if hits:
            found["insights database"] = hits
    receiver.server.should_exit = True
    assert not found, found
