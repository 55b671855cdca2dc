"""Key rotation, erasure, retention and the history import, on the real databases."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from civicsignals.common.events import CaseStatusChanged, utcnow
from civicsignals.common.outbox import OutboxMessage
from civicsignals.intake import cli, privacy, service
from civicsignals.intake.app import build_cipher
from civicsignals.intake.crypto import FieldCipher, new_key_spec, parse_keys
from civicsignals.intake.importer import describe_delimiter, detect_delimiter, parse_delimiter
from civicsignals.intake.models import Attachment, AuditRecord, Contact, Feedback, Signal, StatusEntry
from civicsignals.intake.settings import IntakeSettings

from .conftest import PNG, SIGNAL, Intake
from .test_following import change
from .test_resident_pages import move_case


async def _signal_with_photo(intake: Intake, email: str = "jan@example.org") -> str:
    body = {
        **SIGNAL,
        "reporter": {"name": "Jan Jansen", "email": email, "phone": "06-12345678", "consent": True},
        "text": "Jan Jansen hier: de stoep is kapot voor Markt 1, 2801 AB Gouda. Mail jan@example.org.",
    }
    signal_id = str((await intake.post_signal(body)).json()["id"])
    response = await intake.client.post(
        f"/v1/signals/{signal_id}/attachments",
        files={"file": ("f.png", PNG, "image/png")},
        headers=intake.auth(),
    )
    assert response.status_code == 201
    return signal_id


async def test_erasure_of_one_person_keeps_the_statistics(intake: Intake) -> None:
    mine = await _signal_with_photo(intake)
    also_mine = await _signal_with_photo(intake, email="JAN@example.org")
    someone_else = await _signal_with_photo(intake, email="piet@example.org")
    code = (await intake.get(Signal, mine)).tracking_code
    case = {"id": mine, "tracking_code": code}
    await move_case(intake, case, "waiting_on_resident", 1, note="Welke stoeptegel bedoelt u?")
    async with intake.runtime.sessions() as session, session.begin():  # the resident's own answer
        answer = change(
            case, "in_progress", 2, public_note="De tegel bij mijn voordeur, Jan.", actor="resident"
        )
        assert await service.apply_status_change(session, answer, utcnow())
    await move_case(intake, case, "resolved", 3)  # feedback comes after
    assert (
        await intake.client.post(
            f"/v1/tracking/{code}/feedback",
            json={"satisfied": False, "score": 2, "comment": "Jan vindt het traag"},
        )
    ).status_code == 201

    async with intake.runtime.sessions() as session:
        found = await privacy.find_signals_of_person(
            session, intake.context.cipher, "gouda", email="jan@example.org"
        )
        by_phone = await privacy.find_signals_of_person(
            session, intake.context.cipher, "gouda", phone="+31 6 12345678"
        )
        elsewhere = await privacy.find_signals_of_person(
            session, intake.context.cipher, "utrecht", email="jan@example.org"
        )
    assert sorted(found) == sorted([mine, also_mine]) and sorted(by_phone) == sorted(
        [mine, also_mine, someone_else]
    )
    assert elsewhere == []

    async with intake.runtime.sessions() as session, session.begin():
        result = await privacy.erase_signals(session, "gouda", found, "test", intake.settings.attachments_dir)
    assert (result.signals, result.contacts, result.attachments) == (2, 2, 2)
    erased = await intake.get(Signal, mine)
    assert "Jan" not in erased.text and "jan@example.org" not in erased.text and "2801 AB" not in erased.text
    assert (
        erased.address is None
        and erased.extra == {}
        and erased.lat == 52.012
        and erased.erased_at is not None
    )
    assert (erased.kind, erased.channel, erased.area, erased.attachments) == (
        "report",
        "web",
        "binnenstad",
        1,
    )
    assert await intake.get(Contact, mine) is None and await intake.get(Contact, someone_else) is not None
    assert not (intake.settings.attachments_dir / "gouda" / mine).exists()
    assert (intake.settings.attachments_dir / "gouda" / someone_else).exists()
    assert (await intake.get(Feedback, mine)).comment is None
    async with intake.runtime.sessions() as session:
        entries = (
            await session.exec(
                select(StatusEntry)
                .where(col(StatusEntry.signal_id) == mine)
                .order_by(col(StatusEntry.sequence))
            )
        ).all()
    # the resident's words go, staff's public note stays (the page still shows the history)
    assert [(e.actor, e.note) for e in entries] == [
        (None, None),  # received: intake's own entry
        ("department", "Welke stoeptegel bedoelt u?"),
        ("resident", None),
        ("department", None),
    ]
    async with intake.runtime.sessions() as session:
        left = (await session.exec(select(Attachment).where(col(Attachment.signal_id) == someone_else))).all()
        audit = (
            await session.exec(select(AuditRecord).where(col(AuditRecord.action) == "person.erase"))
        ).all()
    assert len(left) == 1 and sorted(a.object for a in audit) == sorted(f"signal:{s}" for s in found)
    async with intake.runtime.sessions() as session:
        outbox = (
            await session.exec(
                select(OutboxMessage).where(col(OutboxMessage.subject) == "civic.gouda.signal.erased")
            )
        ).all()
    erased_events = [json.loads(row.payload) for row in outbox]
    assert sorted(e["data"]["signal_id"] for e in erased_events) == sorted(found)
    assert {e["type"] for e in erased_events} == {"nl.civicsignals.signal.erased.v1"}
    assert all(set(e["data"]) == {"signal_id", "case_id", "erased_at"} for e in erased_events)  # ids only
    page = await intake.client.get(f"/v1/tracking/{code}")
    assert page.status_code == 200  # the signal and its history are still there


async def test_retention_deletes_contacts_after_the_case_closed(intake: Intake) -> None:
    old = await _signal_with_photo(intake)
    recent = await _signal_with_photo(intake)
    still_open = await _signal_with_photo(intake)
    long_ago = utcnow() - timedelta(days=31)
    async with intake.runtime.sessions() as session, session.begin():
        for signal_id, status, at in (
            (old, "closed", long_ago),
            (recent, "resolved", utcnow()),
            (still_open, "in_progress", long_ago),
        ):
            signal = await session.get(Signal, signal_id)
            change = CaseStatusChanged(
                case_id="c",
                signal_id=signal_id,
                tracking_code=signal.tracking_code,
                to=status,
                actor="department",
                sequence=1,
            )
            await service.apply_status_change(session, change, at)
    deleted = await privacy.apply_retention(intake.runtime.sessions, intake.runtime.tenants)
    assert deleted == {"gouda": 1, "utrecht": 0}
    assert await intake.get(Contact, old) is None
    assert await intake.get(Contact, recent) is not None and await intake.get(Contact, still_open) is not None
    assert (await intake.get(Signal, old)).has_contact is False
    async with intake.runtime.sessions() as session:
        audit = (
            await session.exec(select(AuditRecord).where(col(AuditRecord.action) == "contact.retention"))
        ).all()
    assert [(a.tenant, a.result) for a in audit] == [("gouda", "deleted 1")]
    assert "jan" not in json.dumps([a.model_dump(mode="json") for a in audit]).lower()


async def test_rotation_reseals_every_contact_with_the_active_key(intake: Intake) -> None:
    ids = [await _signal_with_photo(intake, email=f"p{i}@example.org") for i in range(3)]
    keys = parse_keys((intake.settings.data_dir / "secrets" / "intake-pii-keys").read_text())
    assert list(keys) == [intake.context.cipher.active_key_id]
    new_spec = new_key_spec("k2")
    keys.update(parse_keys(new_spec))
    rotated = FieldCipher(keys, "k2")
    assert await privacy.rotate_keys(intake.runtime.sessions, rotated, batch_size=2) == 3
    assert await privacy.rotate_keys(intake.runtime.sessions, rotated) == 0
    assert await privacy.key_usage(intake.runtime.sessions) == {"k2": 3}
    async with intake.runtime.sessions() as session:
        for index, signal_id in enumerate(ids):
            contact = await service.read_contact(session, rotated, "gouda", signal_id)
            assert contact is not None and contact.email == f"p{index}@example.org"
    only_new = FieldCipher(parse_keys(new_spec), "k2")  # the old key can now be retired
    async with intake.runtime.sessions() as session:
        assert (await service.read_contact(session, only_new, "gouda", ids[0])).email == "p0@example.org"  # type: ignore[union-attr]


# -- import ---------------------------------------------------------------------------------------

CSV = """external_id,created,channel,text,category,lat,lon
A-1,2025-03-01T10:00:00,web,Losliggende stoeptegel bij de school. Bel 06-12345678,stoep,52.0116,4.7105
A-2,2025-03-02T11:30:00+01:00,phone,Lantaarnpaal kapot,verlichting,,
A-3,2025-03-03,carrier-pigeon,Dit kanaal bestaat niet,,,
A-4,2025-03-04T09:00:00Z,web,,leeg,,
A-5,gisteren,web,Geen geldige tijd,,,
A-6,2025-03-06T09:00:00Z,web,Ver weg,,52.37,4.89
A-1,2025-03-01T10:00:00,web,Dubbel in het bestand,,,
,2025-03-07T09:00:00Z,email,Zonder id,,,
"""


def _env(monkeypatch: pytest.MonkeyPatch, intake: Intake) -> None:
    """The command's settings from the environment, as the served intake's: its database, folders
    and the services an access request asks (a test may point one elsewhere afterwards)."""
    monkeypatch.setenv("CIVIC_INTAKE_DATABASE_URL", intake.settings.database_url)
    monkeypatch.setenv("CIVIC_INTAKE_TENANTS_DIR", str(intake.settings.tenants_dir))
    monkeypatch.setenv("CIVIC_INTAKE_DATA_DIR", str(intake.settings.data_dir))
    monkeypatch.setenv("CIVIC_INTAKE_ROUTING_URL", intake.settings.routing_url)
    monkeypatch.setenv("CIVIC_INTAKE_NOTIFIER_URL", intake.settings.notifier_url)


async def test_import_csv_is_idempotent_and_explains_what_it_skipped(
    intake: Intake,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    wait_until: Any,
) -> None:
    path = tmp_path / "history.csv"
    path.write_text(CSV, encoding="utf-8")
    _env(monkeypatch, intake)
    args = ["import", str(path), "--tenant", "gouda", "--no-progress"]
    assert await cli.run_import(IntakeSettings(), cli_args(args)) == 0
    first = capsys.readouterr().out
    assert "rows read: 8" in first and "imported:  3" in first
    for reason in (
        "unknown channel (e.g. line 4)",
        "text is missing",
        "created is not an ISO 8601 time",
        "location outside the municipality's bounding box",
        "duplicate external_id in the file (e.g. line 8)",
    ):
        assert reason in first, first

    assert await cli.run_import(IntakeSettings(), cli_args(args)) == 0
    second = capsys.readouterr().out
    assert "imported:  0" in second and "3  already imported (same external_id)" in second

    async with intake.runtime.sessions() as session:
        signals = (
            await session.exec(select(Signal).where(col(Signal.imported)).order_by(col(Signal.received_at)))
        ).all()
    assert [s.external_id for s in signals[:2]] == ["A-1", "A-2"] and signals[2].external_id.startswith(
        "sha256:"
    )
    first_signal = signals[0]
    assert (
        first_signal.received_at.isoformat() == "2025-03-01T09:00:00+00:00"
    )  # Amsterdam time without a zone
    assert (
        first_signal.area == "binnenstad"
        and first_signal.service_code == "stoep"
        and first_signal.status == "closed"
    )
    assert "[PHONE]" in first_signal.text_redacted and not first_signal.has_contact
    events = await intake.events("signal.received", wait_until, count=3)
    assert all(e["data"]["imported"] is True for e in events)
    assert all("06-12345678" not in json.dumps(e) for e in events)
    assert await intake.count(OutboxMessage) == 3


# Dutch Excel ("CSV (gescheiden door lijstscheidingsteken)" or "CSV UTF-8"): a byte order mark,
# semicolons, CRLF line ends, decimal commas, and quoted fields holding semicolons, quotes and line
# breaks (Alt+Enter in a cell is a bare LF inside the quotes).
EXCEL_CSV = (
    "\ufeffexternal_id;created;channel;text;category;lat;lon\r\n"
    'X-1;2025-04-01T10:00:00;web;"Stoeptegel los; ligt er al weken.\nBel 06-12345678";stoep;52,0116;4,7105\r\n'
    'X-2;2025-04-02T08:30:00;email;"Container vol; ""echt"" vol";afval;;\r\n'
    "X-3;2025-04-03T08:30:00;duif;Onbekend kanaal;;;\r\n"
    'X-4;2025-04-04T08:30:00;phone;"Twee regels;\nen een derde;\ndaarna";;;\r\n'
)


def _write_bytes(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))  # exactly these bytes: no newline translation
    return path


async def test_import_of_a_dutch_excel_export_detects_the_semicolon(
    intake: Intake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write_bytes(tmp_path / "export.csv", EXCEL_CSV)
    _env(monkeypatch, intake)
    args = ["import", str(path), "--tenant", "gouda", "--no-progress"]
    assert await cli.run_import(IntakeSettings(), cli_args(args)) == 0
    out = capsys.readouterr().out
    assert "delimiter: semicolon (;), detected from the header" in out, out
    assert "rows read: 4" in out and "imported:  3" in out, out
    assert "unknown channel (e.g. line 5)" in out, out  # line numbers count the lines in quotes
    assert "has no column" not in out

    async with intake.runtime.sessions() as session:
        by_id = {
            s.external_id: s for s in (await session.exec(select(Signal).where(col(Signal.imported)))).all()
        }
    assert sorted(by_id) == ["X-1", "X-2", "X-4"]
    first = by_id["X-1"]
    assert first.text == "Stoeptegel los; ligt er al weken.\nBel 06-12345678"
    assert "[PHONE]" in first.text_redacted and "06-12345678" not in first.text_redacted
    assert (first.lat, first.lon, first.area) == (52.0116, 4.7105, "binnenstad")  # decimal commas
    assert first.service_code == "stoep" and first.channel == "web"
    assert by_id["X-2"].text == 'Container vol; "echt" vol' and by_id["X-2"].lat is None
    assert by_id["X-4"].text == "Twee regels;\nen een derde;\ndaarna"

    # The same file again imports nothing: the columns were read the same way.
    assert await cli.run_import(IntakeSettings(), cli_args(args)) == 0
    assert "imported:  0" in capsys.readouterr().out


async def test_import_delimiter_option_overrides_the_detection(
    intake: Intake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _env(monkeypatch, intake)
    excel = _write_bytes(tmp_path / "export.csv", EXCEL_CSV)
    base = ["import", str(excel), "--tenant", "gouda", "--no-progress"]

    # Forced to the wrong one: the summary says so and why every row was skipped.
    assert await cli.run_import(IntakeSettings(), cli_args([*base, "--delimiter", ","])) == 0
    wrong = capsys.readouterr().out
    assert "delimiter: comma (,), given with --delimiter" in wrong, wrong
    assert "the header has no column text, created, channel" in wrong and "imported:  0" in wrong

    assert await cli.run_import(IntakeSettings(), cli_args([*base, "--delimiter", "semicolon"])) == 0
    right = capsys.readouterr().out
    assert "delimiter: semicolon (;), given with --delimiter" in right and "imported:  3" in right

    # A tab-separated file whose text is full of commas and semicolons, named by --delimiter tab.
    tsv = _write_bytes(
        tmp_path / "export.tsv",
        "text\tcreated\tchannel\texternal_id\n"
        "Afval, veel afval; en nog meer\t2025-04-05T09:00:00Z\tweb\tT-1\n",
    )
    tab_args = ["import", str(tsv), "--tenant", "gouda", "--no-progress", "--format", "csv"]
    assert await cli.run_import(IntakeSettings(), cli_args([*tab_args, "--delimiter", "tab"])) == 0
    tabbed = capsys.readouterr().out
    assert "delimiter: tab (\\t), given with --delimiter" in tabbed and "imported:  1" in tabbed
    assert (await intake.get(Signal, await _id_of(intake, "T-1"))).text == "Afval, veel afval; en nog meer"

    assert await cli.run_import(IntakeSettings(), cli_args([*base, "--delimiter", "x"])) == 2
    assert "unknown delimiter 'x'" in capsys.readouterr().err


async def _id_of(intake: Intake, external_id: str) -> str:
    async with intake.runtime.sessions() as session:
        return (await session.exec(select(Signal.id).where(col(Signal.external_id) == external_id))).one()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("external_id,created,channel,text", ","),
        ("external_id;created;channel;text;category;lat;lon", ";"),
        ("\ufeffexternal_id;created;channel;text\r\n", ";"),
        ('"text";"created";"channel"', ";"),
        ("text\tcreated\tchannel", "\t"),
        ("text|created|channel", "|"),
        ("text", ","),  # one column: nothing to split, the default
        ("", ","),
    ],
)
def test_detect_delimiter_reads_the_header_line(header: str, expected: str) -> None:
    assert detect_delimiter(header) == expected


def test_parse_delimiter_takes_names_and_characters() -> None:
    assert [parse_delimiter(v) for v in ("semicolon", ";", "Tab", "\t", "\\t", "comma", "|")] == [
        ";",
        ";",
        "\t",
        "\t",
        "\t",
        ",",
        "|",
    ]
    assert describe_delimiter("\t") == "tab (\\t)" and describe_delimiter(";") == "semicolon (;)"
    with pytest.raises(ValueError, match="unknown delimiter"):
        parse_delimiter(":")


async def test_import_jsonl(
    intake: Intake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {
            "external_id": "J-1",
            "created": "2025-05-01T08:00:00Z",
            "channel": "app",
            "text": "Boom omgewaaid",
            "kind": "report",
            "location": {"lat": 52.05, "lon": 4.65},
        },
        {
            "external_id": "J-2",
            "created": "2025-05-02T08:00:00Z",
            "channel": "email",
            "text": "Klacht over de balie",
            "kind": "complaint",
            "status": "resolved",
        },
    ]
    path = tmp_path / "history.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n[1, 2]\n", encoding="utf-8")
    _env(monkeypatch, intake)
    assert (
        await cli.run_import(
            IntakeSettings(), cli_args(["import", str(path), "--tenant", "gouda", "--no-progress"])
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "imported:  2" in out
        and "not valid JSON (e.g. line 3)" in out
        and "not a JSON object (e.g. line 4)" in out
    )
    async with intake.runtime.sessions() as session:
        boom = (await session.exec(select(Signal).where(col(Signal.external_id) == "J-1"))).one()
        klacht = (await session.exec(select(Signal).where(col(Signal.external_id) == "J-2"))).one()
    assert (
        (boom.area, boom.district) == ("noord-west", "noord")
        and klacht.kind == "complaint"
        and klacht.status == "resolved"
    )


async def test_erase_and_rotate_commands(
    intake: Intake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    signal_id = await _signal_with_photo(intake)
    _env(monkeypatch, intake)
    dry = await cli.run_erase(
        IntakeSettings(), cli_args(["erase", "--tenant", "gouda", "--email", "jan@example.org"])
    )
    looked = capsys.readouterr().out
    assert dry == 0 and "1 signal(s) of this person would be erased" in looked
    code = (await intake.get(Signal, signal_id)).tracking_code
    assert f"  {signal_id}  {code}  received " in looked and "jan@example.org" not in looked
    assert await intake.get(Contact, signal_id) is not None
    by_code = ["erase", "--tenant", "gouda", "--tracking-code", code.lower(), "--yes"]
    other = await cli.run_erase(IntakeSettings(), cli_args([*by_code, "--signal-id", "01OTHER"]))
    assert other == 1 and "nothing erased" in capsys.readouterr().err
    assert await intake.get(Contact, signal_id) is not None
    done = await cli.run_erase(IntakeSettings(), cli_args([*by_code, "--signal-id", signal_id]))
    assert done == 0 and "erased: 1 signal(s), 1 contact(s), 1 attachment file(s)" in capsys.readouterr().out
    assert await intake.get(Contact, signal_id) is None

    await _signal_with_photo(intake)
    spec = (intake.settings.data_dir / "secrets" / "intake-pii-keys").read_text().strip()
    monkeypatch.setenv("CIVIC_INTAKE_PII_KEYS", f"{spec},{new_key_spec('k9')}")
    monkeypatch.setenv("CIVIC_INTAKE_PII_ACTIVE_KEY_ID", "k9")
    assert build_cipher(IntakeSettings()).active_key_id == "k9"
    assert await cli.run_rotate(IntakeSettings()) == 0
    assert "re-sealed 1 contact(s) with key k9; contacts per key: {'k9': 1}" in capsys.readouterr().out


def cli_args(argv: list[str]) -> Any:
    parser, _ = cli.build_parser()
    return parser.parse_args(argv)
