"""PII canary (issue 8): unique fake personal data sent in through every door must not appear in
any message on the bus (CIVIC and CIVIC_DLQ), any log line of any process, any webhook body, or
the insights database.

The doors: the portal API and a photo uploaded through it, a phone and a chat conversation, an
Open311 client, the satisfaction form, the resident's own answer and photo on their tracking page,
a partner's Open311 update, staff's public and internal notes through routing's case API, and
``civicsignals-intake import`` of a CSV export. Besides the bus, the logs of every process (the
nats-server's too), the webhook bodies and the insights database, the resident's public tracking
page and the import command's output are searched. Matching ignores case, spaces and dashes.
The canaries are what DESIGN §2 promises to redact from free text (e-mail addresses, phone
numbers, BSNs, IBANs) and the reporter's contact data, name included. A name written in free
text by someone else is not among the promises and is not planted there.

Before anything is searched, the test waits until every door's signal has been routed (or, for
imported history, which opens no case, until insights has classified it), and until insights,
intake and the partner's endpoint have what the last changes sent them, so the search cannot pass
because nothing had arrived yet. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response

from tests.conftest import Stack
from tests.faults import read_subject
from tests.test_pipeline import mail_with, wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def png_pixel(shade: int = 0) -> bytes:
    """A real one-pixel PNG: intake sniffs what it is sent (and keeps one file of equal bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # 1x1, 8 bits, RGBA
    pixels = zlib.compress(b"\x00" + bytes([shade]) * 4)  # one row: filter byte, one pixel
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

    def staff_note(self) -> str:
        """What a case worker might write to the resident, the e-mail address in capitals and the
        IBAN in lower case (the search ignores case, so a leak in either writing is found)."""
        return (
            f"Bel mevrouw op {self.phone} of mail {self.email.upper()}; BSN {self.bsn}, "
            f"terugbetaling op {self.iban.lower()}."
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
    lowered = haystack.lower()
    flat = lowered.replace(" ", "").replace("-", "")
    return [
        kind
        for kind, needle in canaries.needles().items()
        if needle.lower() in lowered or needle.lower() in flat
    ]


async def wait_for(
    what: str, check: Callable[[], Any], stack: Stack, timeout: float = 90.0, interval: float = 0.3
) -> Any:
    """Poll a blocking ``check`` (run in a thread) until it returns something truthy; fail after
    ``timeout`` seconds with the last value and the services' logs."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await asyncio.to_thread(check)
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{stack.logs()}")
        await asyncio.sleep(interval)


def query(database: Path, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """Rows from a service's SQLite database, read-only (the service keeps running)."""
    if not database.exists():
        return []
    connection = sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return connection.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # its tables are not there yet
        return []
    finally:
        connection.close()


def cases_of(stack: Stack, signal_ids: list[str]) -> dict[str, dict[str, Any]] | None:
    """Routing's case of every signal, or None while one has none yet."""
    found: dict[str, dict[str, Any]] = {}
    with stack.client() as client:
        for signal_id in signal_ids:
            response = client.get(f"{stack.url('routing')}/v1/cases", params={"signal_id": signal_id})
            assert response.status_code == 200, response.text
            items = response.json()["items"]
            if not items:
                return None
            found[signal_id] = items[0]
    return found


def resolve_as_staff(stack: Stack, case_id: str, note: str) -> dict[str, Any]:
    """Move a case to ``resolved`` through routing's case API (via ``assigned`` from ``triage``),
    the way a case worker does, with ``note`` as the public note."""
    with stack.client() as client:
        for _ in range(3):
            detail = client.get(f"{stack.url('routing')}/v1/cases/{case_id}")
            assert detail.status_code == 200, detail.text
            allowed = detail.json()["allowed_transitions"]
            to = "resolved" if "resolved" in allowed else "assigned"
            assert to in allowed, detail.json()
            moved = client.post(
                f"{stack.url('routing')}/v1/cases/{case_id}/transitions",
                json={"to": to, "public_note": note if to == "resolved" else None},
            )
            assert moved.status_code == 200, moved.text
            if to == "resolved":
                result: dict[str, Any] = moved.json()
                return result
    raise AssertionError(f"case {case_id} could not be resolved")


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


def import_csv(stack: Stack, canaries: Canaries, folder: Path) -> tuple[list[str], str]:
    """``civicsignals-intake import`` of a small CSV export whose texts hold the canaries, run as an
    operator runs it, against the stack's intake database; returns the imported signals' ids and
    what the command printed."""
    export = folder / "history.csv"
    export.write_text(
        "external_id,created,channel,kind,text\n"
        f'canary-import-1,2026-11-20T10:00:00+01:00,phone,report,"{canaries.in_text()}"\n'
        f'canary-import-2,2026-11-21T11:30:00+01:00,email,complaint,"Bel {canaries.phone} of mail '
        f'{canaries.email}; BSN {canaries.bsn}, IBAN {canaries.iban}."\n',
        encoding="utf-8",
    )
    command = Path(sys.executable).with_name("civicsignals-intake")
    done = subprocess.run(
        [str(command), "import", str(export), "--tenant", "demo", "--no-progress"],
        env={**os.environ, **stack.env("intake")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    rows = query(
        stack.data_dir / "db" / "intake.db",
        "SELECT id FROM signal WHERE external_id IN ('canary-import-1', 'canary-import-2')",
    )
    assert len(rows) == 2, (rows, output)
    return [row[0] for row in rows], output


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
    routed_signals: list[str] = []  # every door's signal that must have a case before the search
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
        routed_signals.append(signal.json()["id"])
        # 2. a photo the portal uploads with the signal, its file name made of the canaries
        upload = await client.post(
            f"{intake}/v1/signals/{signal.json()['id']}/attachments",
            files={
                "file": (
                    f"{canaries.email} {canaries.phone} {canaries.bsn} {canaries.iban}.png",
                    png_pixel(shade=255),
                    "image/png",
                )
            },
        )
        assert upload.status_code == 201, upload.text
        # 3. a phone conversation and a chat conversation
        for channel in ("phone", "chat"):
            conversation = await client.post(
                f"{intake}/v1/conversations",
                json={
                    "channel": channel,
                    "started_at": "2026-11-28T09:12:00Z",
                    "duration_s": 120,
                    "team": "kcc",
                    "turns": [
                        {"speaker": "agent", "text": "Gemeente, goedemorgen."},
                        {"speaker": "citizen", "text": canaries.in_text()},
                        {"speaker": "agent", "text": f"Ik noteer {canaries.email} en {canaries.phone}."},
                    ],
                },
            )
            assert conversation.status_code == 201, conversation.text
            routed_signals.append(conversation.json()["signal_id"])
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
        open311_signal = open311.json()[0]["service_request_id"]
        routed_signals.append(open311_signal)

    # 9. history loaded with the import command (no case is opened for it; insights counts it)
    imported, import_output = await asyncio.to_thread(import_csv, stack, canaries, tmp_path)

    code = doors[0]["tracking_code"]
    await asyncio.to_thread(wait_for_status, stack, code, ("assigned", "forwarded"))
    await asyncio.to_thread(mail_with, stack, code)

    # 8. staff's notes through routing's case API: a public and an internal note, and a public
    # note on a transition (the resident reads it, the partner's webhook and the feeds carry it)
    routing = stack.url("routing")
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        [case] = (await client.get(f"{routing}/v1/cases", params={"tracking_code": code})).json()["items"]
        assert "woonpartners" in case["partners"], case  # so the partner's webhooks carry its changes
        noted = await client.post(
            f"{routing}/v1/cases/{case['id']}/notes",
            json={"public_note": canaries.staff_note(), "internal_note": canaries.staff_note()},
        )
        assert noted.status_code == 200, noted.text
        staff_moves: list[int] = []
        for to, note in (("in_progress", canaries.staff_note()), ("waiting_on_resident", "Welke?")):
            moved = await client.post(
                f"{routing}/v1/cases/{case['id']}/transitions",
                json={"to": to, "public_note": note, "internal_note": canaries.staff_note()},
            )
            assert moved.status_code == 200, moved.text
            staff_moves.append(moved.json()["sequence"])
    await asyncio.to_thread(wait_for_status, stack, code, ("waiting_on_resident",))
    # 6. the resident's own answer on their page (passed on to routing, shown on the case and
    # sent to the partner), and a photo whose file name is the resident's e-mail address
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
        assert photo.json()["attachments"] == 2  # the portal's photo and this one
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

    # Every door's signal has been routed; then staff resolve the Open311 request with the
    # canaries in the public note (what insights keeps for the "you said, we did" page).
    cases = await wait_for("a case for every door's signal", lambda: cases_of(stack, routed_signals), stack)
    resolved = await asyncio.to_thread(
        resolve_as_staff, stack, cases[open311_signal]["id"], canaries.staff_note()
    )
    assert resolved["status"] == "resolved"

    # Wait until every consumer has what the search looks for, instead of sleeping.
    insights_db = stack.data_dir / "db" / "insights.db"
    everything = [*routed_signals, *imported]
    placeholders = ",".join("?" * len(everything))

    def insights_has_every_signal() -> bool:
        rows = query(
            insights_db,
            f"SELECT signal_id FROM insights_signal WHERE topic_event IS NOT NULL "
            f"AND signal_id IN ({placeholders})",
            *everything,
        )
        return len(rows) == len(everything)

    def insights_has_notes_and_feedback() -> bool:
        notes = query(
            insights_db,
            "SELECT DISTINCT case_id FROM insights_case_note WHERE case_id IN (?, ?)",
            *closing_notes,
        )
        feedback = query(insights_db, "SELECT 1 FROM insights_feedback WHERE signal_id = ?", doors[0]["id"])
        return len(notes) == 2 and bool(feedback)

    closing_notes = [case["id"], resolved["id"]]
    await wait_for("insights to have every door's signal, classified", insights_has_every_signal, stack)
    await wait_for(
        "insights to have both resolutions' notes and the feedback", insights_has_notes_and_feedback, stack
    )

    def webhooks_of_door_1() -> set[object]:
        seen: set[object] = set()
        for body in list(receiver.bodies):
            data = json.loads(body).get("data", {})
            if data.get("case_id") == case["id"]:
                seen.add(data.get("sequence"))
                seen.add(data.get("to"))
        return seen

    await wait_for(
        "the partner's webhooks of staff's changes and of the resolution",
        lambda: {*staff_moves, "resolved"} <= webhooks_of_door_1(),
        stack,
    )
    await wait_for(
        "routing to count both photos of the portal's signal",
        lambda: (cases_of(stack, [doors[0]["id"]]) or {}).get(doors[0]["id"], {}).get("attachments") == 2,
        stack,
    )
    async with httpx.AsyncClient(timeout=30) as client:
        tracking = (await client.get(f"{intake}/v1/tracking/{code}")).json()
    assert len([entry for entry in tracking["history"] if entry.get("note")]) >= 2, tracking

    found: dict[str, list[str]] = {}
    scanned = 0
    for stream, subject in (("CIVIC", "civic.>"), ("CIVIC_DLQ", "dlq.>")):
        for message in await read_subject(stack.nats.url, subject, stream=stream):
            scanned += 1
            hits = leaks(
                message.data.decode(errors="replace") + json.dumps(dict(message.headers or {})), canaries
            )
            if hits:
                found.setdefault(f"bus {message.subject}", []).extend(hits)
    assert scanned >= 20, f"only {scanned} messages on the bus: nothing much was searched"
    logs = sorted((tmp_path / "logs").glob("*.log"))
    assert len(logs) >= len(names), logs
    if stack.nats.log_file.exists():
        logs.append(stack.nats.log_file)
    for log in logs:
        for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            hits = leaks(line, canaries)
            if hits:
                found.setdefault(f"log {log.name}:{number}", []).extend(hits)
    for body in receiver.bodies:
        hits = leaks(body, canaries)
        if hits:
            found.setdefault("webhook body", []).extend(hits)
    for where, text in (("tracking page", json.dumps(tracking)), ("import output", import_output)):
        hits = leaks(text, canaries)
        if hits:
            found[where] = hits
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
