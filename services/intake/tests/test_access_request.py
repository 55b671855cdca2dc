"""The resident's right of access (AVG articles 15 and 20): ``civicsignals-intake access`` writes
everything intake keeps about one person as one JSON document, on the real databases."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from civicsignals.common.outbox import OutboxMessage
from civicsignals.intake import accessrequest, cli, privacy
from civicsignals.intake.models import Attachment, AuditRecord, Signal

from .conftest import PNG, SIGNAL, Intake
from .test_access_case_notes import NOTE, RoutingStandIn, routing_stand_in
from .test_privacy_and_import import _env
from .test_resident_pages import move_case

JAN = {"name": "Jan Jansen", "email": "jan@example.org", "phone": "06-12345678", "consent": True}
PHOTO_TEXT = "Jan Jansen hier: de stoep is kapot voor Markt 1, 2801 AB Gouda. Bel 06-12345678."
FEEDBACK_TEXT = "De container bij de Markt zit vol, al drie dagen."
PIET_TEXT = "Piet Pietersen meldt: lantaarnpaal kapot bij de Kerkstraat."


async def _signal(intake: Intake, text: str, reporter: dict[str, Any], **extra: Any) -> dict[str, Any]:
    body = {**SIGNAL, "text": text, "reporter": reporter, "language": "nl", **extra}
    created = await intake.post_signal(body)
    assert created.status_code == 201, created.text
    answer: dict[str, Any] = created.json()
    return answer


async def _photo(intake: Intake, signal_id: str) -> None:
    response = await intake.client.post(
        f"/v1/signals/{signal_id}/attachments",
        files={"file": ("stoep.png", PNG, "image/png")},
        headers=intake.auth(),
    )
    assert response.status_code == 201, response.text


async def _people(intake: Intake) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Jan's two signals (one with a photo and a case history with notes, one rated after its
    case ended, given with his e-mail in capitals) and one of Piet, with a photo too."""
    photo = await _signal(intake, PHOTO_TEXT, JAN, metadata={"portal_reference": "F-1234"})
    await _photo(intake, photo["id"])
    await move_case(intake, photo, "in_progress", 1, note="De ploeg komt donderdag.")
    await move_case(intake, photo, "waiting_on_resident", 2, note="Welke stoeptegel bedoelt u?")

    rated = await _signal(intake, FEEDBACK_TEXT, {**JAN, "email": "JAN@example.org", "consent": False})
    await move_case(intake, rated, "in_progress", 1)
    await move_case(intake, rated, "resolved", 2, note="De container is geleegd.")
    feedback = await intake.client.post(
        f"/v1/tracking/{rated['tracking_code']}/feedback",
        json={"satisfied": True, "score": 4, "comment": "Snel opgelost, dank!"},
    )
    assert feedback.status_code == 201, feedback.text

    piet = await _signal(
        intake, PIET_TEXT, {"name": "Piet Pietersen", "email": "piet@example.org", "consent": True}
    )
    await _photo(intake, piet["id"])
    return photo, rated, piet


async def _document(intake: Intake, by: privacy.PersonSelector, value: str) -> dict[str, Any]:
    cipher = intake.context.cipher
    async with intake.runtime.sessions() as session:
        ids = await privacy.signals_of_person(session, cipher, "gouda", by, value)
        return await accessrequest.access_document(
            session, cipher, "gouda", ids, selected_by=by, selected_value=value
        )


async def test_the_document_holds_exactly_the_persons_signals_with_everything_kept(intake: Intake) -> None:
    photo, rated, piet = await _people(intake)
    document = await _document(intake, "email", "jan@example.org")

    assert json.loads(json.dumps(document)) == document  # plain JSON, nothing to convert
    assert (document["format"], document["tenant"], document["signal_count"]) == (
        "civicsignals.intake.access.v1",
        "gouda",
        2,
    )
    assert document["selected_by"] == {
        "nl": "e-mailadres",
        "en": "e-mail address",
        "value": "jan@example.org",
    }
    assert document["generated_at"].endswith("Z")
    assert set(document["explanation"]) == {"nl", "en"}
    assert set(document["explanation"]["nl"]) == set(document["explanation"]["en"])
    assert "routing" in document["explanation"]["en"]["other_services"]
    assert "2 melding(en)" in document["summary"]["nl"]

    first, second = document["signals"]
    assert [first["signal_id"], second["signal_id"]] == [photo["id"], rated["id"]]  # in received order
    assert (
        first["tracking_code"] == photo["tracking_code"] and second["tracking_code"] == rated["tracking_code"]
    )
    # their own words as written, beside what travelled on the bus
    assert first["text"] == PHOTO_TEXT and second["text"] == FEEDBACK_TEXT
    assert "Jan Jansen" not in first["text_redacted"] and "[PHONE]" in first["text_redacted"]
    assert (first["kind"], first["channel"], first["source"], first["language"]) == (
        "report",
        "web",
        (await intake.get(Signal, photo["id"])).source,
        "nl",
    )
    assert first["received_at"].endswith("Z") and first["occurred_at"] is None
    assert first["location"] == {"lat": 52.0116, "lon": 4.7105, "address": {"street": "Markt", "number": "1"}}
    assert (first["area"], first["metadata"]) == ("binnenstad", {"portal_reference": "F-1234"})

    assert first["contact"]["given_at"].endswith("Z")
    assert {k: v for k, v in first["contact"].items() if k != "given_at"} == JAN
    assert second["contact"]["email"] == "JAN@example.org" and second["contact"]["consent"] is False

    assert [(e["sequence"], e["status"], e["note"], e["actor"]) for e in first["status_history"]] == [
        (0, "received", None, None),
        (1, "in_progress", "De ploeg komt donderdag.", "department"),
        (2, "waiting_on_resident", "Welke stoeptegel bedoelt u?", "department"),
    ]
    assert all(e["at"].endswith("Z") for e in first["status_history"])
    assert (first["status"], first["case_id"], first["expected_by"], first["responsible"]) == (
        "waiting_on_resident",
        "case-1",
        "2026-12-07T09:00:00Z",
        "stadsbeheer",
    )
    assert first["service_promise"] == "We halen het binnen 5 werkdagen weg."

    async with intake.runtime.sessions() as session:
        stored = (
            await session.exec(select(Attachment).where(col(Attachment.signal_id) == photo["id"]))
        ).one()
    assert first["attachments"] == [
        {
            "id": stored.id,
            "content_type": "image/png",
            "size": len(PNG),
            "sha256": hashlib.sha256(PNG).hexdigest(),
            "created_at": accessrequest.rfc3339(stored.created_at),
            "file": None,
        }
    ]
    assert second["attachments"] == [] and first["feedback"] is None
    assert second["feedback"]["at"].endswith("Z")
    assert {k: v for k, v in second["feedback"].items() if k != "at"} == {
        "satisfied": True,
        "score": 4,
        "comment": "Snel opgelost, dank!",
    }
    assert second["status_history"][-1]["note"] == "De container is geleegd."
    assert first["erased_at"] is None and second["erased_at"] is None

    # nothing of the other person
    whole = json.dumps(document, ensure_ascii=False)
    for trace in ("Piet", "piet@example.org", "Kerkstraat", piet["id"], piet["tracking_code"]):
        assert trace not in whole


async def test_a_tracking_code_selects_one_signal_and_an_erased_one_shows_when_without_contact(
    intake: Intake,
) -> None:
    photo, rated, _piet = await _people(intake)
    cipher = intake.context.cipher
    async with intake.runtime.sessions() as session:
        by_code = await privacy.signals_of_person(
            session, cipher, "gouda", "tracking_code", rated["tracking_code"].lower().replace("-", " ")
        )
        elsewhere = await privacy.signals_of_person(
            session, cipher, "utrecht", "tracking_code", rated["tracking_code"]
        )
    assert by_code == [rated["id"]] and elsewhere == []

    async with intake.runtime.sessions() as session, session.begin():
        await privacy.erase_signals(session, "gouda", [photo["id"]], "test", intake.settings.attachments_dir)
    erased = await _document(intake, "tracking_code", photo["tracking_code"])
    assert erased["selected_by"]["en"] == "tracking code" and erased["signal_count"] == 1
    (part,) = erased["signals"]
    assert (
        part["signal_id"] == photo["id"] and part["erased_at"] is not None and part["erased_at"].endswith("Z")
    )
    assert part["contact"] is None and part["attachments"] == [] and part["metadata"] == {}
    assert part["text"] == part["text_redacted"] and "Jan Jansen" not in part["text"]
    assert part["location"] == {"lat": 52.012, "lon": 4.71, "address": None}  # about 100 m
    # the history stays (staff's public notes are not the person's words)
    assert [e["note"] for e in part["status_history"]][1:] == [
        "De ploeg komt donderdag.",
        "Welke stoeptegel bedoelt u?",
    ]
    # the erased signal's contact is gone, so the e-mail address no longer finds it
    by_email = await _document(intake, "email", "jan@example.org")
    assert [s["signal_id"] for s in by_email["signals"]] == [rated["id"]]


@pytest.fixture
async def stand_in(intake: Intake) -> AsyncIterator[RoutingStandIn]:
    """Routing's case API for the command: case-1 (every signal's here) with one internal note."""
    async with routing_stand_in(intake.settings.data_dir) as server:
        yield server


async def _main(argv: list[str]) -> Any:
    """``civicsignals-intake …`` in-process as the console script runs it (its own event loop, on
    a thread, since the test's loop is running); returns the exit code."""
    with pytest.raises(SystemExit) as exited:
        await asyncio.to_thread(cli.main, argv)
    return exited.value.code


async def test_access_command_writes_the_document_audits_each_read_and_refuses_to_overwrite(
    intake: Intake,
    stand_in: RoutingStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="civicsignals")
    photo, rated, _piet = await _people(intake)
    _env(monkeypatch, intake)
    monkeypatch.setenv("CIVIC_INTAKE_ROUTING_URL", stand_in.url)
    monkeypatch.setenv("CIVIC_INTAKE_NOTIFIER_URL", stand_in.url)
    outbox_before = await intake.count(OutboxMessage)
    out, files = tmp_path / "inzage.json", tmp_path / "bestanden"
    jan = ["access", "--tenant", "gouda", "--email", "jan@example.org"]

    assert await _main([*jan, "--out", str(out), "--with-files", str(files)]) == 0
    printed = capsys.readouterr()
    assert printed.out == (
        f"wrote 2 signal(s) of this person to {out}\ncopied 1 attachment file(s) to {files}\n"
    )
    document = json.loads(out.read_text(encoding="utf-8"))
    assert [s["signal_id"] for s in document["signals"]] == [photo["id"], rated["id"]]
    assert document["signals"][0]["text"] == PHOTO_TEXT  # UTF-8 JSON as the person wrote it
    assert document["case_notes_included"] is True  # asked of routing, once for their one case
    assert [[n["note"] for n in s["case_notes"]] for s in document["signals"]] == [[NOTE], [NOTE]]
    assert [case_id for case_id, _ in stand_in.calls] == ["case-1"]
    assert "\n  " in out.read_text(encoding="utf-8")  # indented
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # personal data: the owner's only
    attachment = document["signals"][0]["attachments"][0]
    assert attachment["file"] == f"{photo['id']}/{attachment['id']}.png"
    assert (files / attachment["file"]).read_bytes() == PNG

    async with intake.runtime.sessions() as session:
        audit = (
            await session.exec(select(AuditRecord).where(col(AuditRecord.action) == "person.access"))
        ).all()
    assert sorted((a.tenant, a.actor, a.object, a.result) for a in audit) == sorted(
        ("gouda", "cli:access", f"signal:{s}", "ok") for s in (photo["id"], rated["id"])
    )
    assert await intake.count(OutboxMessage) == outbox_before  # a read publishes nothing
    traces = ("jan@example.org", "Jansen", "06-12345678", "stoep is kapot")
    for text in (
        printed.out,
        printed.err,
        caplog.text,
        json.dumps([a.model_dump(mode="json") for a in audit]),
    ):
        assert not any(trace in text for trace in traces), text

    # the same file again: refused, the document stays as it was and no read is recorded
    written = out.read_bytes()
    assert await _main([*jan, "--out", str(out)]) == 1
    assert "exists; add --force to overwrite it" in capsys.readouterr().err
    assert out.read_bytes() == written
    assert await _main([*jan, "--out", str(tmp_path / "other.json"), "--with-files", str(files)]) == 1
    assert "is not empty; add --force" in capsys.readouterr().err
    assert not (tmp_path / "other.json").exists()
    async with intake.runtime.sessions() as session:
        assert (
            len(
                (
                    await session.exec(select(AuditRecord).where(col(AuditRecord.action) == "person.access"))
                ).all()
            )
            == 2
        )

    # --force overwrites it, here with the one signal of a tracking code
    assert (
        await _main(
            [
                "access",
                "--tenant",
                "gouda",
                "--tracking-code",
                rated["tracking_code"],
                "--out",
                str(out),
                "--force",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == f"wrote 1 signal(s) of this person to {out}\n"
    rewritten = json.loads(out.read_text(encoding="utf-8"))
    assert [s["signal_id"] for s in rewritten["signals"]] == [rated["id"]]
    assert rewritten["selected_by"]["value"] == rated["tracking_code"]

    # a person intake keeps nothing of gets a document that says so (a valid answer)
    empty = tmp_path / "niemand.json"
    assert await _main(["access", "--tenant", "gouda", "--phone", "06-99999999", "--out", str(empty)]) == 0
    assert capsys.readouterr().out == f"wrote 0 signal(s) of this person to {empty}\n"
    nothing = json.loads(empty.read_text(encoding="utf-8"))
    assert nothing["signals"] == [] and nothing["signal_count"] == 0
    assert "geen gegevens" in nothing["summary"]["nl"] and "keeps no data" in nothing["summary"]["en"]

    # bad arguments: argparse's 2, and no document to a terminal
    assert await _main([*jan]) == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err
    assert await _main([*jan, "--out", str(tmp_path / "missing" / "x.json")]) == 2
    assert "not a file in an existing directory" in capsys.readouterr().err


async def test_access_command_exits_1_for_an_unknown_tenant(intake: Intake, tmp_path: Path) -> None:
    """As the console script runs it, in its own process: the exit status itself is checked."""
    env = {
        **os.environ,
        "CIVIC_INTAKE_DATABASE_URL": intake.settings.database_url,
        "CIVIC_INTAKE_TENANTS_DIR": str(intake.settings.tenants_dir),
        "CIVIC_INTAKE_DATA_DIR": str(intake.settings.data_dir),
    }
    out = tmp_path / "inzage.json"
    argv = ["access", "--tenant", "nergens", "--email", "jan@example.org", "--out", str(out)]
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "civicsignals.intake", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "no tenant 'nergens'" in result.stderr and result.stdout == ""
    assert not out.exists()
