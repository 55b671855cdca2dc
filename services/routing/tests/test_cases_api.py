"""The case API in-process over a real database and NATS: life cycle, roles, concurrency, partners,
duplicates, reclassification, SLA escalation, the rules tester and tenant isolation."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest
from sqlmodel import col, select

from civicsignals.common.audit import AuditRecord
from civicsignals.common.events import (
    CASE_STATUSES,
    CloudEvent,
    SignalAttachmentAdded,
    SignalClassified,
    make_event,
)
from civicsignals.common.ids import new_id, new_tracking_code
from civicsignals.routing import flows, lifecycle
from civicsignals.routing.models import Case, CaseHistory

from .conftest import RULES, Api


async def set_status(api: Api, case: Case, status: str) -> Case:
    """Put a case straight into a status (test set-up for the transition matrix)."""
    async with api.runtime.sessions() as session, session.begin():
        row = await session.get(Case, case.id)
        assert row is not None
        row.status = status
        session.add(row)
    case.status = status
    return case


async def history(api: Api, case_id: str) -> list[CaseHistory]:
    async with api.runtime.sessions() as session:
        query = select(CaseHistory).where(CaseHistory.case_id == case_id).order_by(CaseHistory.sequence)
        return list((await session.exec(query)).all())


# -- routing ---------------------------------------------------------------------------------------


async def test_a_signal_is_routed_to_several_departments_and_a_partner_over_nats(
    api: Api, nats_server, wait_until
) -> None:
    """The consumer path: signal.classified on the bus → a case, signal.routed and each department's feed."""
    client = await nats.connect(nats_server.url)
    received: list = []
    routed: list = []

    async def on_feed(message) -> None:
        received.append(message)

    async def on_routed(message) -> None:
        routed.append(message)

    await client.subscribe("civic.gouda.dept.*.assigned", cb=on_feed)
    await client.subscribe("civic.gouda.signal.routed", cb=on_routed)
    try:
        signal_id = new_id()
        event = make_event(
            tenant="gouda",
            service="classifier",
            data=SignalClassified(
                signal_id=signal_id,
                topic="wonen",
                confidence=0.8,
                alternatives=[],
                kind="complaint",
                needs_review=False,
                model_version="test",
                tracking_code=new_tracking_code(),
                channel="app",
                text="Er zit schimmel in de badkamer van mijn huurwoning.",
            ),
        )
        await api.runtime.bus.publish(SignalClassified.bus_subject("gouda"), event)
        await wait_until(lambda: len(received) >= 3 and routed, timeout=15, message="feeds and signal.routed")
    finally:
        await client.close()
    feeds = {m.subject: CloudEvent.from_json(m.data) for m in received}
    assert set(feeds) == {
        "civic.gouda.dept.wonen.assigned",
        "civic.gouda.dept.handhaving.assigned",
        "civic.gouda.dept.sociaal.assigned",
    }
    assert feeds["civic.gouda.dept.wonen.assigned"].data["role"] == "responsible"
    assert feeds["civic.gouda.dept.sociaal.assigned"].data["role"] == "informed"
    data = CloudEvent.from_json(routed[0].data).data
    assert data["signal_id"] == signal_id and data["rule_id"] == "wonen-schimmel"
    assert data["partners"] == ["woonpartners"] and data["informed"] == ["handhaving", "sociaal"]
    assert data["priority"] == "high"
    response = await api.get("/v1/cases", status="forwarded")
    [case] = response.json()["items"]
    assert case["responsible"] == "wonen" and case["partners"] == ["woonpartners"]
    assert case["rule_version"] == 3 and case["matched_rules"] == ["wonen-schimmel"]


async def test_low_confidence_goes_to_triage_and_redelivery_opens_no_second_case(api: Api) -> None:
    case = await api.route(topic="afval", confidence=0.1)
    assert case.status == "triage" and case.responsible == "kcc" and case.rule_id == "triage"
    event = make_event(
        tenant="gouda",
        service="classifier",
        data=SignalClassified(
            signal_id=case.signal_id,
            topic="afval",
            confidence=0.9,
            alternatives=[],
            kind="report",
            needs_review=False,
            model_version="test",
        ),
    )
    assert await flows.route_signal(api.ctx, event) is False
    [(_, changed)] = await api.outbox("case.status_changed")
    # History imported by intake is classified and counted, but opens no case.
    imported = SignalClassified(
        signal_id=new_id(),
        topic="afval",
        confidence=0.9,
        alternatives=[],
        kind="report",
        needs_review=False,
        model_version="test",
        imported=True,
    )
    assert (
        await flows.route_signal(api.ctx, make_event(tenant="gouda", service="classifier", data=imported))
        is False
    )
    assert len((await api.get("/v1/cases")).json()["items"]) == 1
    assert changed["data"]["to"] == "triage" and changed["data"]["sequence"] == 1


# -- the transition table over HTTP ----------------------------------------------------------------

MATRIX = list(itertools.product(CASE_STATUSES, CASE_STATUSES))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_every_pair_of_states_over_http(api: Api) -> None:
    """An admin may make every move in the table and nothing else; an illegal one is a 409 problem
    that lists the allowed moves, and changes nothing."""
    survivor = await api.route()
    for current, target in MATRIX:
        case = await set_status(api, await api.route(), current)
        extra: dict[str, str] = {}
        if target == "forwarded":
            extra["partner"] = "woonpartners"
        if target == "duplicate":
            extra["duplicate_of"] = survivor.id
        response = await api.move(case.id, target, **extra)
        if lifecycle.may(current, target, {"admin"}):
            assert response.status_code == 200, (current, target, response.text)
            body = response.json()
            assert body["status"] == target and body["history"][-1]["to_status"] == target
            assert body["history"][-1]["actor"] == f"key:{api.keys.ids['admin']}"
        else:
            assert response.status_code == 409, (current, target, response.text)
            problem = response.json()
            assert response.headers["content-type"] == "application/problem+json"
            assert problem["allowed"] == list(lifecycle.allowed_targets(current, {"admin"}))
            assert problem["current"] == current and problem["requested"] == target
            assert len(await history(api, case.id)) == 1


async def test_roles_decide_who_may_move_a_case(api: Api) -> None:
    case = await api.route(topic="afval")
    assert case.status == "assigned" and case.responsible == "afval"
    # Another department may not work on it; the triage department may not resolve it.
    refused = await api.move(case.id, "in_progress", api.keys.wonen)
    assert refused.status_code == 404  # wonen does not even see afval's case
    refused = await api.move(case.id, "resolved", api.keys.kcc)
    assert refused.status_code == 404
    # A partner key cannot use the department routes at all.
    assert (await api.move(case.id, "in_progress", api.keys.woonpartners)).status_code == 403
    moved = await api.move(case.id, "in_progress", api.keys.afval, public_note="We gaan aan de slag.")
    assert moved.status_code == 200
    body = moved.json()
    assert body["history"][-1]["actor"] == "department:afval"
    assert body["allowed_transitions"] == [
        "waiting_on_resident",
        "forwarded",
        "resolved",
        "rejected",
        "duplicate",
        "cancelled",
    ]
    # "system" moves (closing is also the responsible's) and the triage department's are refused.
    triage = await api.route(topic="afval", needs_review=True)
    response = await api.move(triage.id, "rejected", api.keys.afval)
    assert response.status_code == 404
    response = await api.move(triage.id, "rejected", api.keys.kcc, internal_note="spam")
    assert response.status_code == 200 and response.json()["history"][-1]["internal_note"] == "spam"


async def test_a_status_change_publishes_case_and_department_events_in_order(api: Api) -> None:
    case = await api.route(topic="wonen", text="Een lekkage in de flat")
    assert case.status == "forwarded"
    response = await api.move(case.id, "in_progress", api.keys.wonen, public_note="Monteur is gebeld.")
    assert response.status_code == 200
    changes = [data["data"] for _, data in await api.outbox("case.status_changed")]
    assert [(c["from"], c["to"], c["sequence"]) for c in changes] == [
        ("received", "forwarded", 1),
        ("forwarded", "in_progress", 2),
    ]
    assert changes[1]["actor"] == "department:wonen" and changes[1]["public_note"] == "Monteur is gebeld."
    feeds = sorted(subject for subject, _ in await api.outbox(".status_changed") if ".dept." in subject)
    assert feeds == [
        "civic.gouda.dept.handhaving.status_changed",
        "civic.gouda.dept.sociaal.status_changed",
        "civic.gouda.dept.wonen.status_changed",
    ]


async def test_concurrent_transitions_on_one_case_one_wins_the_other_gets_409(api: Api) -> None:
    case = await api.route(topic="afval")
    first, second = await asyncio.gather(
        api.move(case.id, "in_progress", api.keys.afval, expected_sequence=1),
        api.move(case.id, "waiting_on_resident", api.keys.afval, expected_sequence=1),
    )
    assert sorted([first.status_code, second.status_code]) == [200, 409], (first.text, second.text)
    loser = first if first.status_code == 409 else second
    assert loser.json()["type"].endswith("/case-conflict")
    rows = await history(api, case.id)
    assert [row.sequence for row in rows] == [1, 2]
    changes = [data["data"]["sequence"] for _, data in await api.outbox("case.status_changed")]
    assert changes == [1, 2]
    # Without an expected sequence, the same move twice at once: one wins, the other is illegal
    # (already there) or a conflict; either way a 409 and one history row.
    other = await api.route(topic="afval")
    results = await asyncio.gather(*(api.move(other.id, "resolved", api.keys.afval) for _ in range(2)))
    assert sorted(r.status_code for r in results) == [200, 409]
    assert [row.sequence for row in await history(api, other.id)] == [1, 2]


async def test_a_stale_expected_sequence_is_a_conflict(api: Api) -> None:
    case = await api.route(topic="afval")
    assert (await api.move(case.id, "in_progress", api.keys.afval, expected_sequence=1)).status_code == 200
    stale = await api.move(case.id, "resolved", api.keys.afval, expected_sequence=1)
    assert stale.status_code == 409 and stale.json()["expected_sequence"] == 1


# -- assignment, notes, reclassification -----------------------------------------------------------


async def test_reassignment_between_departments(api: Api) -> None:
    case = await api.route(topic="afval")
    response = await api.post(
        f"/v1/cases/{case.id}/assignment",
        {"responsible": "wonen", "informed": ["handhaving"], "internal_note": "hoort bij wonen"},
        api.keys.afval,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (
        body["responsible"] == "wonen" and body["informed"] == ["handhaving"] and body["status"] == "assigned"
    )
    assert body["history"][-1]["kind"] == "assignment"
    assert body["history"][-1]["details"] == {"from_department": "afval", "to_department": "wonen"}
    assigned = await api.outbox(".assigned")
    assert [subject for subject, _ in assigned[-2:]] == [
        "civic.gouda.dept.wonen.assigned",
        "civic.gouda.dept.handhaving.assigned",
    ]
    # The feed carries the case's sequence, so intake orders it against the status changes.
    assert [event["data"]["sequence"] for _, event in assigned[-2:]] == [body["sequence"]] * 2
    assert "civic.gouda.dept.afval.status_changed" in [s for s, _ in await api.outbox("dept.afval")]
    # afval no longer sees the case; wonen does.
    assert (await api.get(f"/v1/cases/{case.id}", api.keys.afval)).status_code == 404
    assert (await api.get(f"/v1/cases/{case.id}", api.keys.wonen)).status_code == 200
    # And intake hears who holds the case now and who left it, so afval's keys stop opening its photos.
    [(subject, moved)] = await api.outbox("case.departments_changed")
    assert subject == "civic.gouda.case.departments_changed"
    assert moved["subject"] == case.id
    assert moved["data"] == {
        "case_id": case.id,
        "signal_id": case.signal_id,
        "sequence": body["sequence"],
        "responsible": "wonen",
        "informed": ["handhaving"],
        "left": ["afval"],
        "change": "assignment",
    }
    # afval's own system hears on its feed that the case is no longer its work, and who has it now.
    [(subject, released)] = await api.outbox(".released")
    assert subject == "civic.gouda.dept.afval.released" and released["subject"] == case.id
    assert released["type"] == "nl.civicsignals.dept.released.v1"
    assert released["data"] == {
        "case_id": case.id,
        "signal_id": case.signal_id,
        "department": "afval",
        "role": "responsible",
        "responsible": "wonen",
        "sequence": body["sequence"],
        "change": "assignment",
    }
    # Dropping an informed department is a move too, though the responsible one stays; before, the
    # dropped department heard nothing at all on its feed.
    dropped = await api.post(
        f"/v1/cases/{case.id}/assignment", {"responsible": "wonen", "informed": []}, api.keys.wonen
    )
    assert dropped.status_code == 200, dropped.text
    moves = [event["data"] for _, event in await api.outbox("case.departments_changed")]
    assert [(m["responsible"], m["informed"], m["left"], m["sequence"]) for m in moves[1:]] == [
        ("wonen", [], ["handhaving"], dropped.json()["sequence"])
    ]
    releases = [(subject, event["data"]) for subject, event in await api.outbox(".released")]
    assert [(subject, d["role"], d["responsible"], d["sequence"]) for subject, d in releases[1:]] == [
        ("civic.gouda.dept.handhaving.released", "informed", "wonen", dropped.json()["sequence"])
    ]
    # A reassignment to the department that has it already, with the same informed ones, moves nothing.
    again = await api.post(f"/v1/cases/{case.id}/assignment", {"responsible": "wonen"}, api.keys.wonen)
    assert again.status_code == 200, again.text
    assert len(await api.outbox("case.departments_changed")) == 2
    assert len(await api.outbox(".released")) == 2
    # Handed back, afval gets the case on its assigned feed again, with a higher sequence than its release.
    back = await api.post(f"/v1/cases/{case.id}/assignment", {"responsible": "afval"}, api.keys.wonen)
    assert back.status_code == 200, back.text
    [*_, (subject, returned)] = await api.outbox(".assigned")
    assert subject == "civic.gouda.dept.afval.assigned"
    assert returned["data"]["sequence"] == back.json()["sequence"] > released["data"]["sequence"]
    [*_, (subject, _)] = await api.outbox(".released")
    assert subject == "civic.gouda.dept.wonen.released"
    bad = await api.post(f"/v1/cases/{case.id}/assignment", {"responsible": "nergens"}, api.keys.wonen)
    assert bad.status_code == 422 and bad.json()["errors"][0]["pointer"] == "/responsible"


async def test_notes_are_appended_and_an_empty_note_is_refused(api: Api) -> None:
    case = await api.route(topic="afval")
    ok = await api.post(f"/v1/cases/{case.id}/notes", {"internal_note": "buurman belde ook"}, api.keys.afval)
    assert ok.status_code == 200
    assert ok.json()["history"][-1]["kind"] == "note" and ok.json()["status"] == "assigned"
    empty = await api.post(f"/v1/cases/{case.id}/notes", {}, api.keys.afval)
    assert empty.status_code == 422
    unknown = await api.post(
        f"/v1/cases/{case.id}/notes", {"internal_note": "x", "secret": 1}, api.keys.afval
    )
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["pointer"] == "/secret"


async def test_reclassification_publishes_signal_reclassified_and_can_reroute(api: Api) -> None:
    case = await api.route(topic="afval", text="Kapotte dakgoot")
    response = await api.post(
        f"/v1/cases/{case.id}/reclassification",
        {"topic": "wonen", "subtopic": "onderhoud", "reroute": True},
        api.keys.afval,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["topic"] == "wonen" and body["responsible"] == "wonen" and body["rule_id"] == "wonen"
    [(subject, event)] = await api.outbox("signal.reclassified")
    assert subject == "civic.gouda.signal.reclassified"
    assert event["data"]["previous_topic"] == "afval" and event["data"]["topic"] == "wonen"
    assert event["data"]["actor"] == "department:afval" and event["data"]["text"] == "Kapotte dakgoot"
    [(_, moved)] = await api.outbox("case.departments_changed")
    assert moved["data"]["change"] == "reclassification" and moved["data"]["left"] == ["afval"]
    assert (moved["data"]["responsible"], moved["data"]["sequence"]) == ("wonen", body["sequence"])
    [(subject, released)] = await api.outbox(".released")
    assert subject == "civic.gouda.dept.afval.released"
    assert (released["data"]["change"], released["data"]["responsible"]) == ("reclassification", "wonen")
    unknown = await api.post(
        f"/v1/cases/{case.id}/reclassification", {"topic": "ruimtevaart"}, api.keys.wonen
    )
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["pointer"] == "/topic"


async def test_a_case_rerouted_out_of_triage_takes_the_rules_promise_and_due_date(api: Api) -> None:
    """Triage's promise ("bij de juiste afdeling") is kept once the case leaves it: the deciding
    rule's promise and SLA take over, counted from the reroute, and the resident's page hears of
    them with the status change; escalation starts again."""
    case = await api.route(topic="wonen", needs_review=True)
    assert (case.responsible, case.sla_days) == ("kcc", 2)
    async with api.runtime.sessions() as session, session.begin():  # triage let it run over
        stored = await session.get(Case, case.id)
        assert stored is not None
        stored.due_at = datetime.now(UTC) - timedelta(days=1)
        stored.escalation_level = 1
    before = datetime.now(UTC)
    response = await api.post(
        f"/v1/cases/{case.id}/reclassification", {"topic": "afval", "reroute": True}, api.keys.kcc
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["responsible"], body["rule_id"], body["status"]) == ("afval", "afval", "assigned")
    async with api.runtime.sessions() as session:
        rerouted = await session.get(Case, case.id)
    assert rerouted is not None
    assert (rerouted.sla_days, rerouted.sla_type, rerouted.escalation_level) == (3, "calendar", 0)
    assert rerouted.service_promise == "Binnen 3 dagen weg."
    assert rerouted.due_at is not None and rerouted.due_at.replace(tzinfo=UTC) >= before + timedelta(days=3)
    [(_, changed)] = [
        (subject, event)
        for subject, event in await api.outbox("case.status_changed")
        if event["data"]["to"] == "assigned" and event["data"]["signal_id"] == case.signal_id
    ]
    assert changed["data"]["service_promise"] == rerouted.service_promise
    assert changed["data"]["due_at"].startswith(rerouted.due_at.date().isoformat())

    # Rerouted within its department, a case keeps its promise and due date.
    same = await api.route(topic="wonen", text="Kapotte dakgoot")
    kept = (same.due_at, same.service_promise)
    response = await api.post(
        f"/v1/cases/{same.id}/reclassification",
        {"topic": "wonen", "subtopic": "onderhoud", "reroute": True},
        api.keys.wonen,
    )
    assert response.status_code == 200, response.text
    async with api.runtime.sessions() as session:
        again = await session.get(Case, same.id)
    assert again is not None and (again.due_at, again.service_promise) == kept


async def test_a_case_assigned_out_of_triage_by_hand_takes_the_promise_of_the_rule_that_names_it(
    api: Api,
) -> None:
    """Triage sends a case by hand to the department the rules choose for its topic: it takes that
    rule's promise and SLA, as a reroute would. Sent anywhere else, no rule speaks for the new
    department, and the case keeps what it had."""
    ruled = await api.route(topic="afval", needs_review=True)
    unruled = await api.route(topic="afval", needs_review=True)
    assert ruled.responsible == unruled.responsible == "kcc"
    before = datetime.now(UTC)
    for case, department in ((ruled, "afval"), (unruled, "wonen")):
        response = await api.post(
            f"/v1/cases/{case.id}/assignment", {"responsible": department}, api.keys.kcc
        )
        assert response.status_code == 200, response.text
    async with api.runtime.sessions() as session:
        moved = {case.id: await session.get(Case, case.id) for case in (ruled, unruled)}
    to_rule, by_hand = moved[ruled.id], moved[unruled.id]
    assert to_rule is not None and by_hand is not None
    assert (to_rule.rule_id, to_rule.sla_days, to_rule.service_promise) == ("afval", 3, "Binnen 3 dagen weg.")
    assert to_rule.due_at is not None and to_rule.due_at.replace(tzinfo=UTC) >= before + timedelta(days=3)
    assert (by_hand.rule_id, by_hand.sla_days, by_hand.service_promise, by_hand.due_at) == (
        "triage",
        2,
        unruled.service_promise,
        unruled.due_at,
    )


async def test_a_case_rerouted_to_a_rule_that_names_a_partner_is_forwarded_to_it(api: Api) -> None:
    """A leak first put under waste: corrected to housing, the rule that names woonpartners decides,
    so the case is forwarded to the corporation as it would have been from the start. The partner
    sees it from then on, and hears of it through the status change that names it."""
    case = await api.route(topic="afval", text="Lekkage onder het aanrecht van mijn huurwoning")
    assert (case.status, case.responsible, case.partners) == ("assigned", "afval", [])
    updates = f"/v1/cases/{case.id}/updates"
    not_yet = await api.post(updates, {"public_note": "Wij kijken ernaar"}, api.keys.woonpartners)
    assert not_yet.status_code == 404

    response = await api.post(
        f"/v1/cases/{case.id}/reclassification", {"topic": "wonen", "reroute": True}, api.keys.afval
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["responsible"], body["partners"]) == ("forwarded", "wonen", ["woonpartners"])
    assert body["informed"] == ["handhaving", "sociaal"] and body["rule_id"] == "wonen-schimmel"
    assert body["service_promise"] == "Woonpartners en de gemeente pakken dit binnen 5 werkdagen op."
    [changed] = [e["data"] for _, e in await api.outbox("case.status_changed") if e["data"]["sequence"] == 2]
    assert (changed["from"], changed["to"], changed["forwarded_to"]) == (
        "assigned",
        "forwarded",
        "woonpartners",
    )
    assert changed["partners"] == ["woonpartners"] and changed["service_promise"] == body["service_promise"]
    feeds = {subject: e["data"]["role"] for subject, e in await api.outbox(".assigned")}
    assert feeds["civic.gouda.dept.wonen.assigned"] == "responsible"
    assert feeds["civic.gouda.dept.sociaal.assigned"] == "informed"
    # The department that lost the case hears of it on its own feed.
    lost = [e["data"] for _, e in await api.outbox("dept.afval.status_changed")]
    assert [(d["to"], d["responsible"]) for d in lost] == [("forwarded", "wonen")]
    [entry] = [h for h in await history(api, case.id) if h.kind == "reclassification"]
    assert entry.details["partner"] == "woonpartners" and entry.details["to_department"] == "wonen"

    taken = await api.post(updates, {"status": "in_progress", "update_id": "wp-7"}, api.keys.woonpartners)
    assert taken.status_code == 200, taken.text


async def test_a_case_assigned_by_hand_to_the_rules_department_goes_to_the_rules_partner_too(
    api: Api,
) -> None:
    """Triage sends an unsure leak by hand to housing, the department the rules choose for it: the
    case takes that rule's promise, which names woonpartners, and is forwarded to it."""
    case = await api.route(topic="wonen", text="Schimmel in de slaapkamer", needs_review=True)
    assert (case.status, case.partners) == ("triage", [])
    response = await api.post(
        f"/v1/cases/{case.id}/assignment", {"responsible": "wonen", "public_note": "Doorgezet."}, api.keys.kcc
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["status"], body["partners"], body["rule_id"]) == (
        "forwarded",
        ["woonpartners"],
        "wonen-schimmel",
    )
    [changed] = [e["data"] for _, e in await api.outbox("case.status_changed") if e["data"]["sequence"] == 2]
    assert (changed["from"], changed["to"], changed["forwarded_to"]) == (
        "triage",
        "forwarded",
        "woonpartners",
    )


async def test_a_reroute_within_the_department_forwards_to_the_new_rules_partner_when_it_may(
    api: Api,
) -> None:
    """The department stays, but the corrected subtopic's rule brings a partner in: a case at work
    is forwarded to it; one that waits on the resident is not (forwarding is not a move from there),
    and its correction still counts."""
    rules = RULES.replace(
        "  - id: wonen\n",
        "  - id: wonen-onderhoud\n"
        "    when: {topic: wonen, subtopic: onderhoud}\n"
        "    then: {responsible: wonen, partners: [welzijn], sla_days: 7,"
        " service_promise: 'Welzijn Gouda helpt u binnen 7 werkdagen.'}\n"
        "  - id: wonen\n",
    )
    (api.keys.folder / "rules.yaml").write_text(rules, encoding="utf-8")
    await flows.watch_rules_once(api.ctx)
    at_work = await api.route(topic="wonen", text="Kapotte dakgoot")
    waiting = await api.route(topic="wonen", text="Kapotte dakgoot")
    assert at_work.rule_id == waiting.rule_id == "wonen"
    assert (await api.move(at_work.id, "in_progress", api.keys.wonen)).status_code == 200
    assert (await api.move(waiting.id, "waiting_on_resident", api.keys.wonen)).status_code == 200
    answers = {}
    for case in (at_work, waiting):
        response = await api.post(
            f"/v1/cases/{case.id}/reclassification",
            {"topic": "wonen", "subtopic": "onderhoud", "reroute": True},
            api.keys.wonen,
        )
        assert response.status_code == 200, response.text
        answers[case.id] = response.json()
    forwarded, kept = answers[at_work.id], answers[waiting.id]
    assert (forwarded["status"], forwarded["partners"], forwarded["responsible"]) == (
        "forwarded",
        ["welzijn"],
        "wonen",
    )
    assert forwarded["service_promise"] == "Welzijn Gouda helpt u binnen 7 werkdagen."
    assert (kept["status"], kept["partners"], kept["subtopic"]) == ("waiting_on_resident", [], "onderhoud")
    changes = [
        e["data"] for _, e in await api.outbox("case.status_changed") if e["data"]["to"] == "forwarded"
    ]
    assert [(c["case_id"], c["forwarded_to"]) for c in changes] == [(at_work.id, "welzijn")]


# -- duplicates ------------------------------------------------------------------------------------


async def test_duplicates_are_merged_and_every_reporter_stays_informed(api: Api) -> None:
    survivor = await api.route(topic="afval")
    first = await api.route(topic="afval")
    second = await api.route(topic="afval")
    response = await api.move(
        first.id, "duplicate", api.keys.afval, duplicate_of=survivor.id, public_note="Al gemeld."
    )
    assert response.status_code == 200 and response.json()["duplicate_of"] == survivor.id
    # Merging into a duplicate merges into its survivor.
    response = await api.move(second.id, "duplicate", api.keys.afval, duplicate_of=first.id)
    assert response.status_code == 200 and response.json()["duplicate_of"] == survivor.id
    self_merge = await api.move(survivor.id, "duplicate", api.keys.afval, duplicate_of=survivor.id)
    assert self_merge.status_code == 422 and self_merge.json()["errors"][0]["pointer"] == "/duplicate_of"

    assert (
        await api.move(survivor.id, "in_progress", api.keys.afval, public_note="Ploeg onderweg.")
    ).status_code == 200
    assert (
        await api.move(survivor.id, "resolved", api.keys.afval, public_note="Opgeruimd.")
    ).status_code == 200
    changes = [data["data"] for _, data in await api.outbox("case.status_changed")]
    for duplicate in (first, second):
        mine = [c for c in changes if c["signal_id"] == duplicate.signal_id]
        assert [c["to"] for c in mine] == ["assigned", "duplicate", "in_progress", "resolved"]
        assert all(c["tracking_code"] == duplicate.tracking_code for c in mine)
        sequences = [c["sequence"] for c in mine]
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
        assert mine[-1]["merged_into"] == survivor.id and mine[-1]["public_note"] == "Opgeruimd."


# -- partner updates -------------------------------------------------------------------------------


async def test_a_partner_updates_only_the_cases_forwarded_to_it(api: Api) -> None:
    case = await api.route(topic="wonen", text="Schimmel op de muur")
    assert case.status == "forwarded" and case.partners == ["woonpartners"]
    other = await api.route(topic="afval")
    path = f"/v1/cases/{case.id}/updates"
    note = await api.post(
        path, {"public_note": "Inspectie gepland", "update_id": "wp-1"}, api.keys.woonpartners
    )
    assert note.status_code == 200 and note.json() == {
        "case_id": case.id,
        "status": "forwarded",
        "sequence": 2,
        "replayed": False,
    }
    done = await api.post(
        path,
        {"status": "resolved", "public_note": "Schimmel verwijderd", "update_id": "wp-2"},
        api.keys.woonpartners,
    )
    assert done.status_code == 200 and done.json()["status"] == "resolved"
    again = await api.post(
        path,
        {"status": "resolved", "public_note": "Schimmel verwijderd", "update_id": "wp-2"},
        api.keys.woonpartners,
    )
    assert again.status_code == 200 and again.json()["replayed"] is True
    rows = await history(api, case.id)
    assert [(r.kind, r.actor) for r in rows[1:]] == [
        ("update", "partner:woonpartners"),
        ("update", "partner:woonpartners"),
    ]
    # Another partner, and the same partner on a case not forwarded to it, see nothing.
    assert (await api.post(path, {"public_note": "x"}, api.keys.welzijn)).status_code == 404
    assert (
        await api.post(f"/v1/cases/{other.id}/updates", {"public_note": "x"}, api.keys.woonpartners)
    ).status_code == 404
    # What the table does not allow a partner is a 409 with what it may do.
    illegal = await api.post(path, {"status": "closed"}, api.keys.woonpartners)
    assert illegal.status_code == 409 and illegal.json()["allowed"] == []
    # intake's Open311 route posts with a cases:write key, possibly for the resident.
    reopened = await api.post(
        path,
        {"status": "reopened", "on_behalf_of_resident": True, "external_id": "o311-9"},
        api.keys.coordinator,
    )
    assert reopened.status_code == 200 and reopened.json()["status"] == "reopened"
    assert (await history(api, case.id))[-1].actor == "resident"
    # The reopened case's new due date travels with the change, for the resident's page.
    [_, changed] = (await api.outbox("case.status_changed"))[-1]
    assert changed["data"]["to"] == "reopened"
    now_due = (await api.get(f"/v1/cases/{case.id}", api.keys.coordinator)).json()["due_at"]
    assert changed["data"]["due_at"] is not None
    assert datetime.fromisoformat(changed["data"]["due_at"]) == datetime.fromisoformat(now_due)


async def test_forwarding_to_a_partner_later_and_the_partner_hands_it_back(api: Api) -> None:
    case = await api.route(topic="afval")
    bad = await api.move(case.id, "forwarded", api.keys.afval, partner="onbekend")
    assert bad.status_code == 422 and bad.json()["errors"][0]["pointer"] == "/partner"
    missing = await api.move(case.id, "forwarded", api.keys.afval)
    assert missing.status_code == 422
    moved = await api.move(case.id, "forwarded", api.keys.afval, partner="welzijn")
    assert moved.status_code == 200 and moved.json()["partners"] == ["welzijn"]
    [_, changed] = (await api.outbox("case.status_changed"))[-1]
    assert changed["data"]["forwarded_to"] == "welzijn" and changed["data"]["partners"] == ["welzijn"]
    back = await api.post(
        f"/v1/cases/{case.id}/updates",
        {"status": "assigned", "public_note": "Niet voor ons."},
        api.keys.welzijn,
    )
    assert back.status_code == 200 and back.json()["status"] == "assigned"


# -- SLA -------------------------------------------------------------------------------------------


async def test_overdue_cases_are_published_once_per_escalation_level(api: Api) -> None:
    case = await api.route(topic="afval")
    assert case.due_at is not None and case.sla_type == "calendar"
    after_due = case.due_at + timedelta(hours=1)
    assert await flows.check_overdue(api.ctx, now=case.due_at - timedelta(hours=1)) == 0
    assert await flows.check_overdue(api.ctx, now=after_due) == 1
    assert await flows.check_overdue(api.ctx, now=after_due) == 0
    [(_, first)] = await api.outbox("case.overdue")
    assert first["data"]["escalation_level"] == 1 and first["data"]["escalated_to"] == ["kcc"]
    later = after_due + timedelta(days=7)
    assert await flows.check_overdue(api.ctx, now=later) == 1
    assert await flows.check_overdue(api.ctx, now=later) == 0
    overdue = [data["data"] for _, data in await api.outbox("case.overdue")]
    assert [o["escalation_level"] for o in overdue] == [1, 2] and overdue[1]["escalated_to"] == ["directie"]
    assert [s for s, _ in await api.outbox("dept.directie.assigned")] == [
        "civic.gouda.dept.directie.assigned"
    ]
    # Each escalation that informs a department names who holds the case now; none leaves it.
    moves = [event["data"] for _, event in await api.outbox("case.departments_changed")]
    assert [(m["change"], m["responsible"], m["informed"], m["left"]) for m in moves] == [
        ("escalation", "afval", ["kcc"], []),
        ("escalation", "afval", ["kcc", "directie"], []),
    ]
    assert await api.outbox(".released") == []  # no department lost the case
    assert (await api.get("/v1/cases", overdue="true")).json()["items"] == []  # not yet, in real time
    async with api.runtime.sessions() as session, session.begin():
        row = await session.get(Case, case.id)
        assert row is not None
        row.due_at = datetime.now(UTC) - timedelta(minutes=1)
        session.add(row)
    listed = await api.get("/v1/cases", overdue="true")
    assert [c["id"] for c in listed.json()["items"]] == [case.id] and listed.json()["items"][0]["overdue"]
    # A resolved case is never overdue.
    assert (await api.move(case.id, "resolved", api.keys.afval)).status_code == 200
    assert (await api.get("/v1/cases", overdue="true")).json()["items"] == []


# -- lists -----------------------------------------------------------------------------------------


async def test_list_filters_and_cursor_pagination(api: Api) -> None:
    made = [await api.route(topic="afval") for _ in range(5)]
    wonen = await api.route(topic="wonen", text="Deur klemt", location=None)
    page = await api.get("/v1/cases", limit=2, topic="afval")
    seen = [c["id"] for c in page.json()["items"]]
    while page.json()["next_cursor"]:
        page = await api.get("/v1/cases", limit=2, topic="afval", cursor=page.json()["next_cursor"])
        seen += [c["id"] for c in page.json()["items"]]
    assert seen == [c.id for c in reversed(made)]
    assert [c["id"] for c in (await api.get("/v1/cases", department="wonen")).json()["items"]] == [wonen.id]
    assert len((await api.get("/v1/cases", area="centrum")).json()["items"]) == 5
    assert [
        c["id"] for c in (await api.get("/v1/cases", status=["forwarded", "triage"])).json()["items"]
    ] == []
    assert (await api.get("/v1/cases", priority="normal")).json()["items"][0]["id"] == wonen.id
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert (await api.get("/v1/cases", created_after=future)).json()["items"] == []
    assert len((await api.get("/v1/cases", created_before=future)).json()["items"]) == 6
    # A department's key lists only its own cases.
    assert {c["responsible"] for c in (await api.get("/v1/cases", api.keys.afval)).json()["items"]} == {
        "afval"
    }
    bad = await api.get("/v1/cases", status="lost")
    assert bad.status_code == 422 and bad.json()["errors"][0]["pointer"] == "/status/0"
    naive = await api.get("/v1/cases", created_after="2026-01-01T00:00:00")
    assert naive.status_code == 422 and naive.json()["errors"][0]["pointer"] == "/created_after"
    # The contact centre finds a case by the code a resident reads out, however it is typed.
    spoken = made[2].tracking_code.lower().replace("-", " ")
    assert [c["id"] for c in (await api.get("/v1/cases", tracking_code=spoken)).json()["items"]] == [
        made[2].id
    ]
    assert [c["id"] for c in (await api.get("/v1/cases", signal_id=wonen.signal_id)).json()["items"]] == [
        wonen.id
    ]
    assert (await api.get("/v1/cases", tracking_code="0000-0000-0000")).json()["items"] == []


# -- tenant isolation ------------------------------------------------------------------------------


async def test_another_tenant_sees_nothing_and_changes_nothing(api: Api) -> None:
    case = await api.route(topic="afval")
    other = api.keys.other_tenant
    assert (await api.get(f"/v1/cases/{case.id}", other)).status_code == 404
    assert (await api.get("/v1/cases", other)).json()["items"] == []
    assert (await api.move(case.id, "in_progress", other)).status_code == 404
    assert (await api.post(f"/v1/cases/{case.id}/updates", {"public_note": "x"}, other)).status_code == 404
    assert (await api.post(f"/v1/cases/{case.id}/notes", {"public_note": "x"}, other)).status_code == 404
    delft = await api.route(tenant="delft", topic="afval")
    assert delft.tenant == "delft"
    assert [c["id"] for c in (await api.get("/v1/cases", other)).json()["items"]] == [delft.id]
    assert [c["id"] for c in (await api.get("/v1/cases")).json()["items"]] == [case.id]
    assert len(await history(api, case.id)) == 1


# -- the rules tester, rule info, audit ------------------------------------------------------------


async def test_rules_test_explains_every_rule(api: Api) -> None:
    response = await api.post(
        "/v1/routing/rules:test",
        {"signal": {"topic": "wonen", "text": "Lekkage in de keuken", "confidence": 0.8}},
        api.keys.coordinator,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rule_id"] == "wonen-schimmel" and body["responsible"] == "wonen"
    assert body["partners"] == ["woonpartners"] and body["version"] == 3
    assert [(e["rule_id"], e["outcome"]) for e in body["explanation"]] == [
        ("wonen-schimmel", "matched"),
        ("wonen", "not_evaluated"),
        ("afval", "not_evaluated"),
    ]
    assert "the text contains 'lekkage'" in body["explanation"][0]["reasons"]
    plain = (
        await api.post("/v1/routing/rules:test", {"signal": {"topic": "afval"}}, api.keys.coordinator)
    ).json()
    explanation = {e["rule_id"]: e for e in plain["explanation"]}
    assert explanation["wonen"]["outcome"] == "not_matched"
    assert explanation["wonen"]["reasons"] == ["topic 'afval' is not one of ['wonen']"]
    assert plain["sla"] == {"days": 3, "type": "calendar"}
    # A department key lacks rules:admin.
    assert (
        await api.post("/v1/routing/rules:test", {"signal": {"topic": "afval"}}, api.keys.afval)
    ).status_code == 403


async def test_rules_test_with_a_draft_reports_problems_with_lines(api: Api) -> None:
    draft = RULES.replace(
        "then: {responsible: wonen, sla_days: 10}", "then: {responsible: wonen-en-bouwen, sla_days: 10}"
    )
    response = await api.post(
        "/v1/routing/rules:test", {"signal": {"topic": "wonen"}, "rules": draft}, api.keys.coordinator
    )
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["pointer"] == "/rules"
    assert error["detail"] == "rules.yaml (draft) line 22: unknown department 'wonen-en-bouwen'"
    good = RULES.replace("version: 3", "version: 4").replace(
        "when: {topic: afval}", "when: {topic: afval, channel: phone}"
    )
    response = await api.post(
        "/v1/routing/rules:test", {"signal": {"topic": "afval"}, "rules": good}, api.keys.coordinator
    )
    assert (
        response.status_code == 200
        and response.json()["rule_id"] == "triage"
        and response.json()["version"] == 4
    )
    info = await api.get("/v1/routing/rules", api.keys.coordinator)
    assert info.json()["version"] == 3  # a draft changes nothing


async def test_rule_reloads_and_case_changes_are_audited(api: Api) -> None:
    case = await api.route(topic="afval")
    assert (await api.move(case.id, "in_progress", api.keys.afval)).status_code == 200
    (api.keys.folder / "rules.yaml").write_text(
        RULES.replace("responsible: wonen,", "responsible: nergens,"), encoding="utf-8"
    )
    await flows.watch_rules_once(api.ctx)
    assert (
        "unknown department 'nergens'"
        in (await api.get("/v1/routing/rules", api.keys.coordinator)).json()["error"]
    )
    async with api.runtime.sessions() as session:
        rows = (await session.exec(select(AuditRecord).where(AuditRecord.tenant == "gouda"))).all()
    actions = [(r.action, r.actor, r.result) for r in rows]
    assert ("rules.reload", "system:routing", "ok") in actions
    assert ("rules.reload", "system:routing", "refused") in actions
    assert ("case.transition", "department:afval", "in_progress") in actions
    assert all(case.text not in (r.detail or "") for r in rows if case.text)


async def test_a_batch_read_ahead_opens_one_case_per_signal_even_when_a_signal_comes_twice(api: Api) -> None:
    """As the consumer applies a fetched batch: ``read_ahead`` once, then every event, one commit."""
    existing = await api.route(topic="afval")

    def classified(signal_id: str) -> CloudEvent:
        data = SignalClassified(
            signal_id=signal_id,
            topic="afval",
            confidence=0.9,
            alternatives=[],
            kind="report",
            needs_review=False,
            model_version="test",
            tracking_code=new_tracking_code(),
        )
        return make_event(tenant="gouda", service="classifier", data=data)

    fresh = [new_id() for _ in range(25)]
    batch = [classified(existing.signal_id), classified(fresh[0]), classified(fresh[0])]
    batch += [classified(signal_id) for signal_id in fresh[1:]]
    async with api.runtime.sessions() as session, session.begin():
        await flows.read_ahead(session, batch)
        # No flush per case: every case and its first history entry go in at the commit, cases
        # first (the foreign key is enforced on SQLite too), whatever order the session picks.
        opened = [await flows.open_case_for(api.ctx, session, event) for event in batch]
    assert opened == [False, True, False] + [True] * 24
    async with api.runtime.sessions() as session:
        cases = (
            await session.exec(select(Case).where(col(Case.signal_id).in_([existing.signal_id, *fresh])))
        ).all()
        histories = (
            await session.exec(
                select(CaseHistory.case_id).where(col(CaseHistory.case_id).in_([c.id for c in cases]))
            )
        ).all()
    assert sorted(case.signal_id for case in cases) == sorted([existing.signal_id, *fresh])
    assert len(histories) == len(cases)


async def test_a_signals_new_photos_show_on_its_case_and_reach_the_departments_feeds(
    api: Api, nats_server, wait_until
) -> None:
    """``signal.attachment_added`` over the bus: the count shows on the case (for staff working
    through the case API) and goes to every department involved, on its own feed. A portal sends
    photos before the case exists: the event waits for it. A late, lower count changes nothing."""
    signal_id = new_id()
    first = make_event(
        tenant="gouda", service="intake", data=SignalAttachmentAdded(signal_id=signal_id, attachments=1)
    )
    await api.runtime.bus.publish(SignalAttachmentAdded.bus_subject("gouda"), first)
    await asyncio.sleep(0.6)  # redelivered while the signal has no case
    assert await api.outbox("attachment_added") == []
    case = await api.route(
        signal_id=signal_id, topic="wonen", kind="complaint", text="Schimmel in de badkamer."
    )  # wonen-schimmel: responsible wonen, informed handhaving and sociaal

    async def counted() -> list[tuple[str, dict[str, Any]]] | None:
        feeds = await api.outbox("attachment_added")
        return feeds if len(feeds) == 3 else None

    feeds = await wait_until(counted, timeout=15, message="the department feeds of the first photo")
    assert {subject: event["data"]["role"] for subject, event in feeds} == {
        "civic.gouda.dept.wonen.attachment_added": "responsible",
        "civic.gouda.dept.handhaving.attachment_added": "informed",
        "civic.gouda.dept.sociaal.attachment_added": "informed",
    }
    assert all(
        event["data"] == {**event["data"], "case_id": case.id, "signal_id": signal_id, "attachments": 1}
        and event["type"] == "nl.civicsignals.dept.attachment_added.v1"
        for _, event in feeds
    )
    shown = await api.get(f"/v1/cases/{case.id}")
    assert shown.status_code == 200 and shown.json()["attachments"] == 1
    sequence = shown.json()["sequence"]

    for count in (3, 2):  # the third photo's event overtakes the second's
        event = make_event(
            tenant="gouda",
            service="intake",
            data=SignalAttachmentAdded(signal_id=signal_id, attachments=count),
        )
        await api.runtime.bus.publish(SignalAttachmentAdded.bus_subject("gouda"), event)

    async def three() -> bool:
        return (await api.get(f"/v1/cases/{case.id}")).json()["attachments"] == 3

    await wait_until(three, timeout=15, message="the count of three")
    await asyncio.sleep(0.5)  # the late count of two must change nothing
    after = (await api.get(f"/v1/cases/{case.id}")).json()
    assert after["attachments"] == 3 and after["sequence"] == sequence  # not a change of the case
    counts = sorted(event["data"]["attachments"] for _, event in await api.outbox("attachment_added"))
    assert counts == [1, 1, 1, 3, 3, 3]

    # A department the case reaches later, and the status change that goes to the partners, say
    # at once that there are photos.
    moved = await api.post(f"/v1/cases/{case.id}/assignment", {"responsible": "afval"})
    assert moved.status_code == 200, moved.text
    [(_, reached)] = await api.outbox("dept.afval.assigned")
    assert reached["data"]["attachments"] == 3
    changed = [event for _, event in await api.outbox("case.status_changed")]
    assert changed[-1]["data"]["to"] == "assigned" and changed[-1]["data"]["attachments"] == 3
