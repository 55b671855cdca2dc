"""The projection without a database: every order of a signal's or a case's events gives one row."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from itertools import permutations
from zoneinfo import ZoneInfo

from civicsignals.common.events import CaseStatusChanged, CloudEvent, SignalReclassified, make_event
from civicsignals.insights import projection, synthetic
from civicsignals.insights.apply import parse

ZONE = ZoneInfo("Europe/Amsterdam")


def _signal_row(events: list[CloudEvent]) -> dict:
    row = projection.new_signal("gouda", events[0].data["signal_id"])
    for event in events:
        parsed = parse(event)
        assert parsed is not None
        projection.apply_signal(row, event, parsed.data)
        projection.derive(row, ZONE)
    return row


def _case_row(events: list[CloudEvent]) -> dict:
    first = events[0].data
    row = projection.new_case("gouda", first["case_id"], first["signal_id"])
    for event in events:
        parsed = parse(event)
        assert parsed is not None
        projection.apply_case(row, event, parsed.data)
    return row


def test_every_order_of_a_signals_events_gives_the_same_row() -> None:
    rng = random.Random(1)
    at = datetime(2026, 11, 27, 22, 30, tzinfo=UTC)  # 23:30 in Amsterdam: still the 27th there
    events = synthetic.signal_events(rng, "gouda", at, topic="afval", language="en", passive=False)
    received, classified = events[0], events[1]
    reclassified = make_event(
        tenant="gouda",
        service="routing",
        data=SignalReclassified(
            signal_id=received.data["signal_id"],
            case_id="c",
            topic="wonen",
            subtopic="woningzoeken",
            actor="kcc",
        ),
    )
    rows = [_signal_row(list(order)) for order in permutations([received, classified, reclassified])]
    assert all(row == rows[0] for row in rows)
    assert rows[0]["topic"] == "wonen" and rows[0]["language"] == "en" and rows[0]["counted"]
    assert rows[0]["day"].isoformat() == "2026-11-27"
    assert projection.cube_key(_signal_row([classified])) is None  # not received: not counted


def test_every_order_of_a_cases_events_gives_the_same_row() -> None:
    rng = random.Random(3)
    now = datetime.now(UTC)
    while True:  # a life with a resolution
        events = synthetic.signal_events(rng, "gouda", now - timedelta(days=10), topic="afval", now=now)
        case_events = [e for e in events if e.type.endswith(("signal.routed.v1", "case.status_changed.v1"))]
        if any(e.data.get("to") == "resolved" for e in case_events):
            break
    last = case_events[-1]
    reassigned = make_event(
        tenant="gouda",
        service="routing",
        data=CaseStatusChanged(
            case_id=last.data["case_id"],
            signal_id=last.data["signal_id"],
            tracking_code="T",
            **{"from": "resolved"},
            to="reopened",
            actor="department",
            sequence=last.data["sequence"] + 1,
            responsible="wonen",
        ),
    )
    reassigned.time = last.time + timedelta(hours=1)
    orders = list(permutations([*case_events, reassigned]))
    rows = [_case_row(list(order)) for order in rng.sample(orders, min(60, len(orders)))]
    assert all(row == rows[0] for row in rows)
    row = rows[0]
    assert row["status"] == "reopened" and row["department"] == "wonen"
    assert row["resolved_at"] is not None and row["opened_at"] <= row["resolved_at"]
