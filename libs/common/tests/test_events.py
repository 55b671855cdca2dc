"""The CloudEvents envelope and the event models (DESIGN §2)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from civicsignals.common.events import (
    ALL_EVENT_MODELS,
    CaseStatusChanged,
    CloudEvent,
    DepartmentAssigned,
    DepartmentStatusChanged,
    EventData,
    SignalClassified,
    SignalReceived,
    make_event,
    read_data,
)

RECEIVED_AT = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


def signal_received(**overrides: object) -> SignalReceived:
    values: dict[str, object] = {
        "signal_id": "01JDSIGNAL0000000000000000",
        "tracking_code": "7KQ2-M9XD-4HTC",
        "kind": "report",
        "channel": "web",
        "text": "Losse stoeptegel bij [adres], bel [telefoonnummer]",
        "language": "nl",
        "location": {"lat": 52.01, "lon": 4.71, "district": "centrum"},
        "received_at": RECEIVED_AT,
        "has_contact": True,
        "source": "mijngemeente",
    }
    values.update(overrides)
    return SignalReceived.model_validate(values)


def status_changed(**overrides: object) -> CaseStatusChanged:
    values: dict[str, object] = {
        "case_id": "01JDCASE000000000000000000",
        "signal_id": "01JDSIGNAL0000000000000000",
        "tracking_code": "7KQ2-M9XD-4HTC",
        "from": "received",
        "to": "assigned",
        "actor": "routing",
        "sequence": 2,
    }
    values.update(overrides)
    return CaseStatusChanged.model_validate(values)


def test_envelope_round_trip() -> None:
    data = signal_received()
    event = make_event(tenant="gouda", service="intake", data=data)

    again = CloudEvent.from_json(event.to_json())

    assert again == event
    assert read_data(again, SignalReceived) == data


def test_envelope_has_the_required_cloudevents_attributes() -> None:
    event = make_event(tenant="gouda", service="intake", data=signal_received())

    document = json.loads(event.to_json())

    for attribute in ("specversion", "id", "source", "type", "subject", "time", "datacontenttype", "tenant"):
        assert document[attribute], attribute
    assert document["specversion"] == "1.0"
    assert document["datacontenttype"] == "application/json"
    assert document["source"] == "/civicsignals/intake"
    assert document["type"] == "nl.civicsignals.signal.received.v1"
    assert document["subject"] == "01JDSIGNAL0000000000000000"
    assert document["tenant"] == "gouda"
    # RFC 3339 in UTC
    assert document["time"].endswith("Z")
    assert datetime.fromisoformat(document["time"]).utcoffset() == timedelta(0)
    assert document["data"]["received_at"] == "2026-11-28T09:00:00Z"


@pytest.mark.parametrize("missing", ["specversion", "id", "source", "type", "subject", "tenant", "data"])
def test_envelope_without_a_required_attribute_is_refused(missing: str) -> None:
    document = json.loads(make_event(tenant="gouda", service="intake", data=signal_received()).to_json())
    del document[missing]
    # A consumer must not invent an id (or anything else) for what it received: without the
    # producer's id it could neither deduplicate nor trace the event.
    with pytest.raises(ValueError):
        CloudEvent.from_json(json.dumps(document))


def test_wrong_specversion_is_refused() -> None:
    document = json.loads(make_event(tenant="gouda", service="intake", data=signal_received()).to_json())
    document["specversion"] = "0.3"
    with pytest.raises(ValidationError):
        CloudEvent.model_validate(document)


def test_extension_attributes_survive_a_round_trip() -> None:
    document = json.loads(make_event(tenant="gouda", service="intake", data=signal_received()).to_json())
    document["partitionkey"] = "gouda"
    event = CloudEvent.model_validate(document)
    assert json.loads(event.to_json())["partitionkey"] == "gouda"


def test_event_ids_are_unique_and_time_ordered() -> None:
    ids = [make_event(tenant="gouda", service="intake", data=signal_received()).id for _ in range(500)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


TYPE_PATTERN = re.compile(r"^nl\.civicsignals\.[a-z_]+\.[a-z_]+\.v[1-9][0-9]*$")


@pytest.mark.parametrize("model", ALL_EVENT_MODELS, ids=lambda m: m.__name__)
def test_every_event_type_and_subject_follow_the_naming(model: type[EventData]) -> None:
    assert TYPE_PATTERN.fullmatch(model.event_type())
    if model.aggregate == "dept":  # a department feed: the department is part of the subject
        feed: Any = model  # the feed models add department_subject
        assert feed.department_subject("gouda", "wonen") == f"civic.gouda.dept.wonen.{model.event}"
        assert model.subscription() == f"civic.*.dept.*.{model.event}"
    else:
        assert model.bus_subject("gouda") == f"civic.gouda.{model.aggregate}.{model.event}"
        assert model.subscription() == f"civic.*.{model.aggregate}.{model.event}"
    # The type and the subject name the same aggregate and event.
    assert model.event_type() == f"nl.civicsignals.{model.aggregate}.{model.event}.v{model.version}"


@pytest.mark.parametrize(
    ("model", "event_type", "subject"),
    [
        (SignalReceived, "nl.civicsignals.signal.received.v1", "civic.gouda.signal.received"),
        (SignalClassified, "nl.civicsignals.signal.classified.v1", "civic.gouda.signal.classified"),
        (CaseStatusChanged, "nl.civicsignals.case.status_changed.v1", "civic.gouda.case.status_changed"),
    ],
)
def test_design_examples(model: type[EventData], event_type: str, subject: str) -> None:
    assert model.event_type() == event_type
    assert model.bus_subject("gouda") == subject


def test_department_feed_subjects() -> None:
    assert DepartmentAssigned.department_subject("gouda", "wegen") == "civic.gouda.dept.wegen.assigned"
    assert (
        DepartmentStatusChanged.department_subject("gouda", "wegen")
        == "civic.gouda.dept.wegen.status_changed"
    )
    with pytest.raises(ValueError):
        DepartmentAssigned.department_subject("gouda", "Wegen")
    with pytest.raises(ValueError):
        DepartmentAssigned.department_subject("gouda", "wegen.>")


def test_case_status_changed_uses_from_on_the_wire() -> None:
    by_alias = status_changed()
    by_name = CaseStatusChanged(
        case_id="c",
        signal_id="s",
        tracking_code="7KQ2-M9XD-4HTC",
        from_="received",
        to="assigned",
        actor="routing",
        sequence=2,
    )
    assert by_alias.from_ == "received"
    assert by_name.from_ == "received"
    assert by_name.model_dump()["from"] == "received"
    assert "from_" not in by_name.model_dump()

    event = make_event(tenant="gouda", service="routing", data=by_alias)
    wire = json.loads(event.to_json())
    assert wire["data"]["from"] == "received"
    assert "from_" not in wire["data"]
    assert wire["subject"] == "01JDCASE000000000000000000"  # a case event is about the case
    assert read_data(CloudEvent.from_json(event.to_json()), CaseStatusChanged).from_ == "received"


def test_case_status_changed_from_may_be_absent_for_the_first_status() -> None:
    first = status_changed(**{"from": None, "to": "received", "sequence": 1})
    assert json.loads(first.model_dump_json())["from"] is None


def test_unknown_case_status_is_refused() -> None:
    with pytest.raises(ValidationError):
        status_changed(to="done")


@pytest.mark.parametrize("tenant", ["Gouda", "gou.da", "gou da", "*", ">", "", "gouda>", "g" * 64, "gouda_"])
def test_invalid_tenant_code_is_refused(tenant: str) -> None:
    with pytest.raises(ValidationError):
        make_event(tenant=tenant, service="intake", data=signal_received())
    with pytest.raises(ValueError):
        SignalReceived.bus_subject(tenant)


def test_valid_tenant_codes() -> None:
    for tenant in ("gouda", "alphen-aan-den-rijn", "s-hertogenbosch", "0518"):
        assert make_event(tenant=tenant, service="intake", data=signal_received()).tenant == tenant


def test_naive_time_is_refused() -> None:
    document = json.loads(make_event(tenant="gouda", service="intake", data=signal_received()).to_json())
    document["time"] = "2026-11-28T09:00:00"
    with pytest.raises(ValidationError):
        CloudEvent.model_validate(document)
    with pytest.raises(ValidationError):
        CloudEvent(
            source="/civicsignals/intake",
            type=SignalReceived.event_type(),
            subject="s",
            tenant="gouda",
            data={},
            time=datetime(2026, 11, 28, 9, 0),
        )


def test_time_in_another_zone_is_stored_as_utc() -> None:
    amsterdam_winter = timezone(timedelta(hours=1))
    event = CloudEvent(
        source="/civicsignals/intake",
        type=SignalReceived.event_type(),
        subject="s",
        tenant="gouda",
        data={},
        time=datetime(2026, 11, 28, 10, 0, tzinfo=amsterdam_winter),
    )
    assert event.time == RECEIVED_AT
    assert event.time.utcoffset() == timedelta(0)
    assert json.loads(event.to_json())["time"] == "2026-11-28T09:00:00Z"


def test_read_data_refuses_another_event_type() -> None:
    event = make_event(tenant="gouda", service="intake", data=signal_received())
    with pytest.raises(
        ValueError, match=re.escape("expected event type nl.civicsignals.signal.classified.v1")
    ) as info:
        read_data(event, SignalClassified)
    assert not isinstance(info.value, ValidationError)


def test_read_data_refuses_data_that_does_not_fit() -> None:
    event = make_event(tenant="gouda", service="intake", data=signal_received())
    event.data.pop("tracking_code")
    event.data["kind"] = "rant"
    with pytest.raises(ValidationError) as info:
        read_data(event, SignalReceived)
    fields = {error["loc"][0] for error in info.value.errors()}
    assert fields == {"tracking_code", "kind"}


def test_read_data_keeps_fields_added_later_within_a_version() -> None:
    event = make_event(tenant="gouda", service="intake", data=signal_received())
    event.data["added_in_a_later_release"] = 42
    data = read_data(event, SignalReceived)
    assert data.model_extra == {"added_in_a_later_release": 42}
