"""Staff's internal notes of a person's cases in the access document (AVG article 15): intake asks
routing for them, over HTTP with its service key, on a real routing service sharing the tenants,
the keys and the NATS server with intake; and refuses to answer without them when routing cannot
be asked (unless the command is told to, which the document then says).

The document also holds notifier's record of the mails sent (``test_access_mail_record``); here,
where the notes are the point, :class:`RoutingStandIn` answers notifier's part (no mails)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlmodel import col, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from civicsignals.common.events import CoarseLocation, SignalClassified, make_event
from civicsignals.common.tenants import add_key, key_id_of, list_keys, prepare_dev_tenant
from civicsignals.devstack.nats import NatsServer
from civicsignals.devstack.ports import listen_port
from civicsignals.intake import casenotes, cli, privacy
from civicsignals.intake.models import AuditRecord, Signal
from civicsignals.routing import flows as routing_flows
from civicsignals.routing.app import create_app as create_routing_app
from civicsignals.routing.settings import RoutingSettings

from .conftest import REPO, SIGNAL, Intake
from .test_privacy_and_import import _env
from .test_resident_pages import move_case

NOTE = "Mevrouw belde terug op 06-98765432; buurvrouw P. de Vries zag het ook."
MOVE_NOTE = "Ploeg ingepland, sleutel ligt bij de buren op nummer 3."
JAN = {"name": "Jan Jansen", "email": "jan@example.org", "phone": "06-12345678", "consent": True}
RULES = """\
version: 1
triage:
  responsible: stadsbeheer
  below_confidence: 0.3
  sla_days: 2
rules:
  - id: afval
    when: {topic: afval}
    then: {responsible: stadsbeheer, informed: [handhaving], sla_days: 5}
"""


#: What the stand-in answers for ``case-1`` (the case ``move_case`` tells intake of): routing's
#: ``CaseDetail.history``, one step with an internal note.
STAND_IN_HISTORY: list[dict[str, Any]] = [
    {"sequence": 0, "kind": "transition", "from_status": None, "to_status": "received",
     "at": "2026-12-01T08:00:00Z", "actor": "system", "public_note": None, "internal_note": None,
     "details": {}},
    {"sequence": 1, "kind": "note", "from_status": None, "to_status": "received",
     "at": "2026-12-01T08:05:00Z", "actor": "stadsbeheer", "public_note": None,
     "internal_note": NOTE, "details": {}},
]  # fmt: skip


class RoutingStandIn:
    """A real HTTP server standing in for routing's ``GET /v1/cases/{case_id}``, for tests whose
    signals have a case intake was told of but routing never made (``move_case``): ``case-1``
    answers :data:`STAND_IN_HISTORY`, any other case 404. ``calls`` has (case id, Authorization).

    It also stands in for notifier's ``GET /v1/deliveries`` (the two services' paths never
    overlap), answering that no mail was sent, for the tests of other parts of the document;
    ``delivery_calls`` has (signal id, Authorization). The mails themselves are tested on the real
    notifier (``test_access_mail_record``)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or listen_port()
        self.calls: list[tuple[str, str]] = []
        self.delivery_calls: list[tuple[str, str]] = []

        async def case(request: Request) -> JSONResponse:
            case_id = request.path_params["case_id"]
            self.calls.append((case_id, request.headers.get("authorization", "")))
            if case_id != "case-1":
                return JSONResponse({"detail": "no such case"}, status_code=404)
            return JSONResponse({"id": case_id, "history": STAND_IN_HISTORY})

        async def deliveries(request: Request) -> JSONResponse:
            signal = request.query_params.get("signal", "")
            self.delivery_calls.append((signal, request.headers.get("authorization", "")))
            return JSONResponse({"items": [], "next_cursor": None})

        app = Starlette(
            routes=[
                Route("/v1/cases/{case_id}", case, methods=["GET"]),
                Route("/v1/deliveries", deliveries, methods=["GET"]),
            ]
        )
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _stand_in_key(data_dir: Path, tenant: str) -> None:
    """The service key file intake (data directory ``data_dir``) reads; the stand-in takes any."""
    path = data_dir / "service-keys" / "intake" / tenant
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("cs_standin.not-checked\n", encoding="utf-8")


@contextlib.asynccontextmanager
async def routing_stand_in(data_dir: Path, tenant: str = "gouda") -> AsyncIterator[RoutingStandIn]:
    """Serve a :class:`RoutingStandIn` and give intake (data directory ``data_dir``) a service key
    file for ``tenant``; point ``routing_url`` and ``notifier_url`` (or their variables) at its
    ``url``: it answers for both, notifier's part without mails."""
    stand_in = RoutingStandIn()
    _stand_in_key(data_dir, tenant)
    task = await _start(stand_in.server)
    try:
        yield stand_in
    finally:
        await _stop(stand_in.server, task)


@contextlib.contextmanager
def routing_stand_in_on_a_thread(data_dir: Path, tenant: str = "gouda") -> Iterator[RoutingStandIn]:
    """:func:`routing_stand_in` for synchronous fixtures: the server runs on a thread (its own
    event loop); point ``routing_url`` or ``notifier_url`` at its ``url``."""
    stand_in = RoutingStandIn()
    _stand_in_key(data_dir, tenant)
    serving = threading.Thread(target=stand_in.server.run, name="routing-stand-in", daemon=True)
    serving.start()
    deadline = time.monotonic() + STARTUP_WAIT_S
    while not stand_in.server.started and serving.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stand_in.server.started, "the stand-in did not start"
    try:
        yield stand_in
    finally:
        stand_in.server.should_exit = True
        serving.join(timeout=15)


@pytest.fixture
async def notifier_stand_in(intake_data_dir: Path) -> AsyncIterator[RoutingStandIn]:
    """Notifier's part of the document for this module's tests (no mails): the stand-in, with a
    service key file intake reads (replaced by :func:`intake_routing_key` where routing is real)."""
    async with routing_stand_in(intake_data_dir) as stand_in:
        yield stand_in


@pytest.fixture
def routing_port() -> int:
    """Below the range of outgoing connections' source ports: none can take it before routing binds."""
    return listen_port()


@pytest.fixture
def intake_data_dir(tmp_path: Path) -> Path:
    """Intake's data directory (the ``intake`` fixture's), known before intake starts."""
    return tmp_path / "data"


@pytest.fixture
def intake_settings_overrides(routing_port: int, notifier_stand_in: RoutingStandIn) -> dict[str, Any]:
    """Intake asks routing at this port (the real routing below, or nothing at all), and the
    stand-in for notifier's part of the document."""
    return {"routing_url": f"http://127.0.0.1:{routing_port}", "notifier_url": notifier_stand_in.url}


def intake_routing_key(
    intake: Intake, scopes: list[str] | None = None, departments: list[str] | None = None
) -> str:
    """Intake's service key for routing, as ``prepare_dev_tenant`` or an operator makes it: its
    hash in gouda's ``keys.yaml`` (which routing reads), the key in intake's service-keys file."""
    _, key = add_key(
        intake.gouda.folder,
        scopes or ["cases:read", "cases:write"],
        departments=departments,
        description="intake",
    )
    path = intake.settings.service_keys_dir / "gouda"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n", encoding="utf-8")
    return key


@dataclass
class Routing:
    app: Any
    url: str

    @property
    def ctx(self) -> routing_flows.RoutingContext:
        context: routing_flows.RoutingContext = self.app.state.routing
        return context


#: How long a real service may take to start (migrations, then its socket). About a second here,
#: but CI once saw more than the ten seconds this used to be, on a slow machine running two suites.
STARTUP_WAIT_S = 90.0


async def _serving(server: uvicorn.Server) -> None:
    """uvicorn's ``serve``, whose ``sys.exit`` on a failed start (a port taken, a lifespan that
    raised) becomes an exception of the task rather than leaving the test's event loop."""
    try:
        await server.serve()
    except SystemExit as exit_:
        raise RuntimeError(f"uvicorn gave up starting (exit code {exit_.code}); its log says why") from None


async def _start(server: uvicorn.Server) -> asyncio.Task[None]:
    task = asyncio.create_task(_serving(server))
    deadline = asyncio.get_running_loop().time() + STARTUP_WAIT_S
    while not (server.started or task.done()) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise AssertionError(f"the server on port {server.config.port} did not start") from task.exception()
    assert server.started, f"the server on port {server.config.port} did not start in {STARTUP_WAIT_S:.0f} s"
    return task


async def _serve(app: Any, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    return server, await _start(server)


async def _stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=15)


@pytest.fixture
async def routing(
    intake: Intake, nats_server: NatsServer, routing_port: int, tmp_path: Path
) -> AsyncIterator[Routing]:
    """The real routing service over a real port, on intake's tenants folder and NATS server (its
    own SQLite database: intake's is the one parametrised), with intake's service key in place."""
    intake_routing_key(intake)
    (intake.gouda.folder / "rules.yaml").write_text(RULES, encoding="utf-8")
    settings = RoutingSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'routing.db'}",
        nats_url=nats_server.url,
        tenants_dir=intake.settings.tenants_dir,
        data_dir=tmp_path / "routing-data",
        outbox_poll_interval_s=0.1,
        overdue_check_interval_s=3600,
        rules_watch_interval_s=3600,
    )
    app = create_routing_app(settings)
    server, task = await _serve(app, routing_port)
    try:
        await asyncio.wait_for(app.state.runtime.bus_ready.wait(), timeout=60)
        yield Routing(app, f"http://127.0.0.1:{routing_port}")
    finally:
        await _stop(server, task)


async def _signal(intake: Intake, text: str = "Afval naast de container bij de Markt.") -> dict[str, Any]:
    created = await intake.post_signal({**SIGNAL, "text": text, "reporter": JAN, "language": "nl"})
    assert created.status_code == 201, created.text
    answer: dict[str, Any] = created.json()
    return answer


async def _routed(intake: Intake, routing: Routing, signal: dict[str, Any], wait_until: Any) -> str:
    """Route the signal at routing as its consumer does after classification, and wait until
    intake heard ``signal.routed`` over NATS; the case id intake recorded."""
    classified = SignalClassified(
        signal_id=signal["id"],
        topic="afval",
        confidence=0.9,
        alternatives=[],
        language="nl",
        kind="report",
        needs_review=False,
        model_version="test",
        tracking_code=signal["tracking_code"],
        channel="web",
        text="Afval naast de container bij de Markt.",
        location=CoarseLocation(area="binnenstad", district="centrum"),
        received_at=datetime.now(UTC),
    )
    assert await routing_flows.route_signal(
        routing.ctx, make_event(tenant="gouda", service="classifier", data=classified)
    )

    async def _case_id() -> str | None:
        stored = await intake.get(Signal, signal["id"])
        return stored.case_id if stored is not None else None

    case_id: str = await wait_until(_case_id, timeout=15, message="intake recorded the case id")
    return case_id


async def _main(argv: list[str]) -> Any:
    """``civicsignals-intake …`` in-process on a thread (its own event loop); the exit code."""
    with pytest.raises(SystemExit) as exited:
        await asyncio.to_thread(cli.main, argv)
    return exited.value.code


async def refused_document(intake: Intake, officer: dict[str, str], slug: str, service: str) -> None:
    """Ask the API for Jan's document, which ``service`` cannot help make now: the 503 of
    :func:`assert_part_unavailable`, and no read recorded (nothing left intake)."""
    refused = await intake.client.post("/v1/privacy/access", json={"email": JAN["email"]}, headers=officer)
    assert_part_unavailable(refused, slug, service)
    assert await _reads(intake) == []


async def refused_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command, which must refuse (exit 3, another service's part is missing) with nothing
    on stdout and one line on stderr; that line."""
    assert await _main(argv) == 3
    printed = capsys.readouterr()
    (line,) = printed.err.splitlines()
    assert printed.out == ""
    return line


async def _officer(intake: Intake) -> tuple[str, dict[str, str]]:
    key_id, key = add_key(intake.gouda.folder, ["privacy:admin"], description="privacy desk")
    return key_id, {"Authorization": f"Bearer {key}"}


def assert_part_unavailable(response: httpx.Response, slug: str, service: str) -> None:
    """The API's answer when ``service``'s part of the document cannot be had now: a 503 problem
    of type ``slug`` naming the service, with ``Retry-After``, and nothing of the person in it."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "60"
    assert response.json()["type"].endswith(f"/{slug}")
    assert service in response.json()["detail"] and "Jan" not in response.text


async def _reads(intake: Intake) -> list[AuditRecord]:
    async with intake.runtime.sessions() as session:
        rows = await session.exec(select(AuditRecord).where(col(AuditRecord.action) == "person.access"))
        return list(rows.all())


async def test_the_document_holds_the_internal_notes_routing_keeps_of_the_persons_case(
    intake: Intake,
    routing: Routing,
    wait_until: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="civicsignals")
    signal = await _signal(intake)
    case_id = await _routed(intake, routing, signal, wait_until)
    staff = intake.auth()  # gouda's key with every scope: a coordinator at routing
    async with httpx.AsyncClient(base_url=routing.url, headers=staff) as client:
        noted = await client.post(
            f"/v1/cases/{case_id}/notes", json={"internal_note": NOTE, "public_note": "We kijken ernaar."}
        )
        assert noted.status_code == 200, noted.text
        moved = await client.post(
            f"/v1/cases/{case_id}/transitions", json={"to": "in_progress", "internal_note": MOVE_NOTE}
        )
        assert moved.status_code == 200, moved.text
        history = moved.json()["history"]
    key_id, officer = await _officer(intake)

    answer = await intake.client.post(
        "/v1/privacy/access", json={"email": "jan@example.org"}, headers=officer
    )

    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["case_notes_included"] is True
    (part,) = document["signals"]
    assert part["case_id"] == case_id
    assert [(n["kind"], n["status"], n["note"]) for n in part["case_notes"]] == [
        ("note", history[-2]["to_status"], NOTE),
        ("transition", "in_progress", MOVE_NOTE),
    ]
    assert all(n["at"].endswith("Z") and n["actor"] for n in part["case_notes"])
    assert [n["at"] for n in part["case_notes"]] == sorted(n["at"] for n in part["case_notes"])
    assert (
        "case_notes" in document["explanation"]["nl"]
        and "15(4)" in document["explanation"]["en"]["case_notes"]
    )
    assert "case_notes_missing" not in document["explanation"]["en"]
    assert [(r.actor, r.object) for r in await _reads(intake)] == [
        (f"key:{key_id}", f"signal:{signal['id']}")
    ]

    # the command writes the same notes
    _env(monkeypatch, intake)
    monkeypatch.setenv("CIVIC_INTAKE_ROUTING_URL", routing.url)
    out = tmp_path / "inzage.json"
    assert await _main(["access", "--tenant", "gouda", "--email", "jan@example.org", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["case_notes_included"] is True
    assert written["signals"][0]["case_notes"] == part["case_notes"]
    # never a note's text (nor the person's data) in a log or on the terminal
    for text in (caplog.text, printed.out, printed.err):
        for trace in ("06-98765432", "Vries", "sleutel", "jan@example.org", "Jansen"):
            assert trace not in text, text


async def test_an_erased_case_shows_no_notes_and_a_case_routing_does_not_know_none_with_a_warning(
    intake: Intake, routing: Routing, wait_until: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="civicsignals")
    signal = await _signal(intake)
    case_id = await _routed(intake, routing, signal, wait_until)
    async with httpx.AsyncClient(base_url=routing.url, headers=intake.auth()) as client:
        assert (
            await client.post(f"/v1/cases/{case_id}/notes", json={"internal_note": NOTE})
        ).status_code == 200
        _, officer = await _officer(intake)
        before = await intake.client.post(
            "/v1/privacy/access", json={"tracking_code": signal["tracking_code"]}, headers=officer
        )
        assert [n["note"] for n in before.json()["signals"][0]["case_notes"]] == [NOTE]

        async with intake.runtime.sessions() as session, session.begin():
            await privacy.erase_signals(
                session, "gouda", [signal["id"]], "test", intake.settings.attachments_dir
            )
        intake.runtime.events_committed()

        async def _dropped() -> bool:
            case = (await client.get(f"/v1/cases/{case_id}")).json()
            return case.get("erased_at") is not None

        await wait_until(_dropped, timeout=15, message="routing erased the case's notes")

    after = await intake.client.post(
        "/v1/privacy/access", json={"tracking_code": signal["tracking_code"]}, headers=officer
    )
    assert after.status_code == 200, after.text
    (part,) = after.json()["signals"]
    assert part["erased_at"] is not None and part["case_notes"] == []
    assert "erased_at" in after.json()["explanation"]["en"]["case_notes"]

    # a case routing does not know (deleted): no notes, a warning with its id and nothing else
    other = await _signal(intake, "Losse stoeptegel bij de Kerkstraat.")
    await move_case(intake, other, "in_progress", 1)  # intake heard of case-1, routing never made it
    caplog.clear()
    unknown = await intake.client.post(
        "/v1/privacy/access", json={"tracking_code": other["tracking_code"]}, headers=officer
    )
    assert unknown.status_code == 200, unknown.text
    (part,) = unknown.json()["signals"]
    assert (part["case_id"], part["case_notes"]) == ("case-1", [])
    warnings = [r.getMessage() for r in caplog.records if r.name == "civicsignals.intake.casenotes"]
    assert warnings == ["routing does not know case case-1: the access document shows no notes of it"]


async def test_without_routing_the_api_answers_503_and_the_command_writes_nothing_unless_told(
    intake: Intake,
    routing_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing listens at routing's port: the notes cannot be asked for."""
    intake_routing_key(intake)
    signal = await _signal(intake)
    await move_case(intake, signal, "in_progress", 1)  # the signal has case-1 at routing
    _, officer = await _officer(intake)

    await refused_document(intake, officer, "case-notes-unavailable", "routing")

    _env(monkeypatch, intake)
    monkeypatch.setenv("CIVIC_INTAKE_ROUTING_URL", f"http://127.0.0.1:{routing_port}")
    out = tmp_path / "inzage.json"
    jan = ["access", "--tenant", "gouda", "--email", "jan@example.org", "--out", str(out)]
    line = await refused_command(jan, capsys)
    assert line.startswith(
        f"cannot add the case notes: routing at http://127.0.0.1:{routing_port}/v1/cases/case-1"
    )
    assert "--without-case-notes" in line
    assert not out.exists() and await _reads(intake) == []

    assert await _main([*jan, "--without-case-notes"]) == 0
    printed = capsys.readouterr()
    assert printed.out == f"wrote 1 signal(s) of this person to {out}\n"
    assert "without the case notes" in printed.err
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["case_notes_included"] is False
    assert document["signals"][0]["case_notes"] is None and document["signals"][0]["case_id"] == "case-1"
    for language in ("nl", "en"):
        assert "case_notes_included" in document["explanation"][language]["case_notes_missing"]
    assert [r.actor for r in await _reads(intake)] == ["cli:access"]


async def test_no_service_key_or_one_without_cases_read_is_a_503_too(
    intake: Intake,
    routing: Routing,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    signal = await _signal(intake)
    await move_case(intake, signal, "in_progress", 1)
    _, officer = await _officer(intake)

    (intake.settings.service_keys_dir / "gouda").unlink()
    keyless = await intake.client.post(
        "/v1/privacy/access", json={"email": "jan@example.org"}, headers=officer
    )
    _env(monkeypatch, intake)
    monkeypatch.setenv("CIVIC_INTAKE_ROUTING_URL", routing.url)
    out = tmp_path / "inzage.json"
    line = await refused_command(
        ["access", "--tenant", "gouda", "--email", "jan@example.org", "--out", str(out)], capsys
    )
    assert f"routing at {routing.url}: intake has no service key for routing" in line
    assert "cases:read" in line and not out.exists()
    intake_routing_key(intake, ["cases:write"])  # the key intake had before it read case notes
    writer = await intake.client.post(
        "/v1/privacy/access", json={"email": "jan@example.org"}, headers=officer
    )
    # A key bound to a department: routing would answer 404 for another department's case, which
    # reads as "no notes", so the document would look complete without them. Intake refuses it.
    intake_routing_key(intake, departments=["handhaving"])
    bound = await intake.client.post("/v1/privacy/access", json={"email": "jan@example.org"}, headers=officer)

    for response in (keyless, writer, bound):
        assert_part_unavailable(response, "case-notes-unavailable", "routing")
    assert "bound to departments (handhaving)" in caplog.text
    assert await _reads(intake) == []


async def test_a_signal_without_a_case_needs_no_call_to_routing(
    intake: Intake, notifier_stand_in: RoutingStandIn
) -> None:
    """No routing: a signal that has no case yet (or imported history) is answered all the same,
    with an empty list (notifier is asked for its mails all the same: an acknowledgement goes out
    before there is a case)."""
    signal = await _signal(intake)
    _, officer = await _officer(intake)

    answer = await intake.client.post(
        "/v1/privacy/access", json={"email": "jan@example.org"}, headers=officer
    )

    assert answer.status_code == 200, answer.text
    (part,) = answer.json()["signals"]
    assert (part["signal_id"], part["case_id"], part["case_notes"]) == (signal["id"], None, [])
    assert answer.json()["case_notes_included"] is True
    assert notifier_stand_in.calls == []
    assert [signal_id for signal_id, _ in notifier_stand_in.delivery_calls] == [signal["id"]]


async def test_the_notes_of_a_history_keep_its_order_and_leave_out_steps_without_one() -> None:
    history = [
        {"sequence": 2, "kind": "note", "to_status": "assigned", "at": "2026-12-01T10:00:00+01:00",
         "actor": "stadsbeheer", "public_note": None, "internal_note": "tweede"},
        {"sequence": 0, "kind": "transition", "to_status": "received", "at": "2026-12-01T08:00:00Z",
         "actor": "system", "public_note": None, "internal_note": None},
        {"sequence": 1, "kind": "transition", "to_status": "assigned", "at": "2026-12-01T08:30:00Z",
         "actor": "kcc", "public_note": "Doorgezet.", "internal_note": "eerste"},
    ]  # fmt: skip

    assert casenotes.notes_of_history(history) == [
        {"at": "2026-12-01T08:30:00Z", "kind": "transition", "status": "assigned", "actor": "kcc", "note": "eerste"},
        {"at": "2026-12-01T09:00:00Z", "kind": "note", "status": "assigned", "actor": "stadsbeheer", "note": "tweede"},
    ]  # fmt: skip


def test_the_embedded_run_gives_an_old_intake_key_the_scope_to_read_cases(tmp_path: Path) -> None:
    """A ``.data`` of ``make run`` from before: intake's key holds only ``cases:write``."""
    data = tmp_path / "data"
    prepare_dev_tenant(REPO / "config" / "tenants", data)
    folder = data / "tenants" / "demo"
    path = data / "service-keys" / "intake" / "demo"
    old_id, old = add_key(folder, ["cases:write"], description="intake writes to routing")
    path.write_text(old + "\n", encoding="utf-8")

    prepare_dev_tenant(REPO / "config" / "tenants", data)

    new = path.read_text(encoding="utf-8").strip()
    records = {record.key_id: record for record in list_keys(folder)}
    assert new != old and records[key_id_of(new) or ""].scopes == {"cases:read", "cases:write"}
    assert records[old_id].state() == "revoked"
    prepare_dev_tenant(REPO / "config" / "tenants", data)  # and keeps it from then on
    assert path.read_text(encoding="utf-8").strip() == new
