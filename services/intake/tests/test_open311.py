"""Open311 GeoReport v2 (and mySociety's servicerequestupdates) against the specification.

The spec's own example responses (http://wiki.open311.org/GeoReport_v2) are the reference: our
XML must have the same root, item and field elements, and our JSON the same keys in the same
shape (the spec's "Spark convention": a list document is a JSON array). Ids are strings.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import timedelta
from typing import Any

import pytest
import yaml
from sqlmodel import select

from civicsignals.common.events import (
    Alternative,
    CaseStatusChanged,
    SignalClassified,
    SignalRouted,
    make_event,
    utcnow,
)
from civicsignals.common.outbox import OutboxMessage
from civicsignals.intake import privacy
from civicsignals.intake.models import Attachment, Signal

from .conftest import JPEG, PNG, SCRIPT, Intake, Receiver

# -- the specification's examples (XML, verbatim structure) ----------------------------------------

SPEC_SERVICES = """<?xml version="1.0" encoding="utf-8"?>
<services>
    <service>
        <service_code>001</service_code>
        <service_name>Cans left out 24x7</service_name>
        <description>Garbage or recycling cans that have been left out for more than 24 hours after collection. Violators will be cited.</description>
        <metadata>true</metadata>
        <type>realtime</type>
        <keywords>lorem, ipsum, dolor</keywords>
        <group>sanitation</group>
    </service>
</services>"""

SPEC_DEFINITION = """<?xml version="1.0" encoding="utf-8"?>
<service_definition>
    <service_code>DMV66</service_code>
    <attributes>
        <attribute>
            <variable>true</variable>
            <code>WHISHETN</code>
            <datatype>singlevaluelist</datatype>
            <required>true</required>
            <datatype_description></datatype_description>
            <order>1</order>
            <description>What is the ticket/tag/DL number?</description>
            <values>
                <value><key>123</key><name>Ford</name></value>
                <value><key>124</key><name>Chrysler</name></value>
            </values>
        </attribute>
    </attributes>
</service_definition>"""

SPEC_POST_RESPONSE = """<?xml version="1.0" encoding="utf-8"?>
<service_requests>
    <request>
        <service_request_id>293944</service_request_id>
        <service_notice>The City will inspect and require the responsible party to correct within 24 hours</service_notice>
        <account_id/>
    </request>
</service_requests>"""

SPEC_REQUESTS = """<?xml version="1.0" encoding="utf-8"?>
<service_requests>
    <request>
        <service_request_id>638344</service_request_id>
        <status>closed</status>
        <status_notes>Duplicate request.</status_notes>
        <service_name>Sidewalk and Curb Issues</service_name>
        <service_code>006</service_code>
        <description></description>
        <agency_responsible></agency_responsible>
        <service_notice></service_notice>
        <requested_datetime>2010-04-14T06:37:38-08:00</requested_datetime>
        <updated_datetime>2010-04-14T06:37:38-08:00</updated_datetime>
        <expected_datetime>2010-04-15T06:37:38-08:00</expected_datetime>
        <address>8TH AVE and JUDAH ST</address>
        <address_id>545483</address_id>
        <zipcode>94122</zipcode>
        <lat>37.762221815</lat>
        <long>-122.4651145</long>
        <media_url>http://city.gov.s3.amazonaws.com/requests/media/638344.jpg </media_url>
    </request>
</service_requests>"""

SPEC_TOKEN = """<?xml version="1.0" encoding="utf-8"?>
<service_requests>
    <request>
        <service_request_id>638344</service_request_id>
        <token>12345</token>
    </request>
</service_requests>"""

SPEC_ERRORS = """<?xml version="1.0" encoding="utf-8"?>
<errors>
    <error>
        <code>403</code>
        <description>Invalid api_key received -- can't proceed with create_request.</description>
    </error>
</errors>"""

# mySociety's extension (https://github.com/mysociety/fixmystreet/wiki/Open311-FMS---Proposed-differences-to-Open311):
# the root is <service_request_updates> with <request_update> items, for GET and for the answer
# to POST alike, as that page's response table, SocietyWorks' Open311 OpenAPI and mySociety's own
# open311-adapter write it. (FixMyStreet's tests also feed it <service_requests_updates>, which
# its XML::Simple parsing ignores; that spelling is not the format.)
SPEC_UPDATES = """<?xml version="1.0" encoding="utf-8"?>
<service_request_updates>
    <request_update>
        <update_id>123</update_id>
        <service_request_id>638344</service_request_id>
        <status>closed</status>
        <updated_datetime>2012-05-24T00:00:00Z</updated_datetime>
        <description>Fixed.</description>
        <media_url></media_url>
    </request_update>
</service_request_updates>"""


def shape(xml: str | bytes) -> tuple[str, str | None, list[str]]:
    """(root tag, first item tag, that item's child tags) of an XML document."""
    root = ET.fromstring(xml)
    items = list(root)
    if not items:
        return root.tag, None, []
    return root.tag, items[0].tag, [child.tag for child in items[0]]


def assert_like_spec(ours: bytes, spec: str, *, ordered: bool = True) -> ET.Element:
    assert ours.startswith(b'<?xml version="1.0" encoding="utf-8"?>')
    our_root, our_item, our_fields = shape(ours)
    spec_root, spec_item, spec_fields = shape(spec)
    assert (our_root, our_item) == (spec_root, spec_item)
    assert (our_fields if ordered else sorted(our_fields)) == (
        spec_fields if ordered else sorted(spec_fields)
    )
    return ET.fromstring(ours)


def spec_json_keys(spec: str) -> list[str]:
    """The JSON keys the Spark convention gives the spec's XML item."""
    return shape(spec)[2]


# -- services --------------------------------------------------------------------------------------


async def test_service_list_in_xml_and_json_follows_the_spec(intake: Intake) -> None:
    xml = await intake.client.get("/open311/v2/services.xml", params={"jurisdiction_id": "gouda"})
    assert xml.status_code == 200 and xml.headers["content-type"] == "text/xml; charset=utf-8"
    root = assert_like_spec(xml.content, SPEC_SERVICES, ordered=False)
    codes = [s.findtext("service_code") for s in root]
    assert "container" in codes and "dumping" in codes
    assert "huiselijk-geweld" not in codes and "woz" not in codes  # personal matters are not Open311 services
    container = next(s for s in root if s.findtext("service_code") == "container")
    assert container.findtext("metadata") == "true" and container.findtext("type") == "realtime"
    assert next(s for s in root if s.findtext("service_code") == "kerstbomen").findtext("metadata") == "false"

    js = await intake.client.get("/open311/v2/services.json", params={"jurisdiction_id": "gouda"})
    assert js.headers["content-type"] == "application/json; charset=utf-8"
    services = js.json()
    assert isinstance(services, list) and len(services) == len(root)
    assert all(sorted(s) == sorted(spec_json_keys(SPEC_SERVICES)) for s in services)
    assert all(isinstance(s["service_code"], str) and isinstance(s["metadata"], bool) for s in services)


async def test_service_definition_follows_the_spec(intake: Intake) -> None:
    xml = await intake.client.get("/open311/v2/services/container.xml", params={"jurisdiction_id": "gouda"})
    root = assert_like_spec(xml.content, SPEC_DEFINITION)
    attribute = root.find("attributes/attribute")
    spec_attribute = ET.fromstring(SPEC_DEFINITION).find("attributes/attribute")
    assert attribute is not None and spec_attribute is not None
    assert [c.tag for c in attribute] == [c.tag for c in spec_attribute]
    assert [c.tag for c in attribute.find("values/value")] == ["key", "name"]  # type: ignore[union-attr]

    definition = (
        await intake.client.get("/open311/v2/services/dumping.json", params={"jurisdiction_id": "gouda"})
    ).json()
    assert definition["service_code"] == "dumping"
    [what] = definition["attributes"]
    assert what["datatype"] == "multivaluelist" and what["variable"] is True and what["required"] is False
    assert what["order"] == 1 and all(isinstance(v["key"], str) for v in what["values"])
    plain = (
        await intake.client.get("/open311/v2/services/kerstbomen.json", params={"jurisdiction_id": "gouda"})
    ).json()
    assert plain == {"service_code": "kerstbomen", "attributes": []}


@pytest.mark.parametrize(
    ("path", "params", "status", "fragment"),
    [
        ("/open311/v2/services/no-such-service.xml", {"jurisdiction_id": "gouda"}, 404, "service_code"),
        ("/open311/v2/services.json", {"jurisdiction_id": "atlantis"}, 404, "jurisdiction_id"),
        ("/open311/v2/services.xml", {}, 400, "jurisdiction_id was not provided"),
        ("/open311/v2/services.yaml", {"jurisdiction_id": "gouda"}, 404, "format"),
        ("/open311/v2/requests.json", {"jurisdiction_id": "gouda", "status": "pending"}, 400, "status"),
        (
            "/open311/v2/requests.json",
            {"jurisdiction_id": "gouda", "start_date": "yesterday"},
            400,
            "start_date",
        ),
        (
            "/open311/v2/requests.xml",
            {
                "jurisdiction_id": "gouda",
                "start_date": "2026-01-01T00:00:00Z",
                "end_date": "2026-06-01T00:00:00Z",
            },
            400,
            "90 days",
        ),
        ("/open311/v2/requests/01NOSUCHREQUEST.xml", {"jurisdiction_id": "gouda"}, 404, "not found"),
        ("/open311/v2/tokens/12345.json", {"jurisdiction_id": "gouda"}, 404, "token"),
    ],
)
async def test_errors_are_the_specs_error_arrays(
    intake: Intake, path: str, params: dict[str, str], status: int, fragment: str
) -> None:
    response = await intake.client.get(path, params=params)
    assert response.status_code == status, response.text
    if path.endswith(".json"):
        body = response.json()
        assert isinstance(body, list) and body[0]["code"] == status and fragment in body[0]["description"]
        assert sorted(body[0]) == sorted(spec_json_keys(SPEC_ERRORS))
    else:
        root = assert_like_spec(response.content, SPEC_ERRORS)
        assert root[0].findtext("code") == str(status) and fragment in (root[0].findtext("description") or "")


# -- POST requests ---------------------------------------------------------------------------------


def request_form(intake: Intake, **extra: str) -> dict[str, str]:
    return {
        "api_key": intake.gouda.key,
        "jurisdiction_id": "gouda",
        "service_code": "container",
        "lat": "52.0116",
        "long": "4.7105",
        "email": "piet@example.org",
        "first_name": "Piet",
        "last_name": "Puk",
        "phone": "06-87654321",
        "device_id": "tt222111",
        "description": "De glasbak op de Markt zit vol. Bel 06-87654321.",
        "media_url": "https://example.org/foto.jpg",
        "attribute[container_type]": "glas",
        **extra,
    }


async def test_post_request_creates_a_signal_and_answers_like_the_spec(
    intake: Intake, wait_until: Any
) -> None:
    xml = await intake.client.post("/open311/v2/requests.xml", data=request_form(intake))
    assert xml.status_code == 200, xml.text
    root = assert_like_spec(xml.content, SPEC_POST_RESPONSE)
    request_id = root[0].findtext("service_request_id")
    assert request_id

    js = await intake.client.post(
        "/open311/v2/requests.json", data=request_form(intake, description="Nog een")
    )
    [created] = js.json()
    assert sorted(created) == sorted(spec_json_keys(SPEC_POST_RESPONSE))
    assert isinstance(created["service_request_id"], str) and created["account_id"] is None

    signal = await intake.get(Signal, request_id)
    assert signal.channel == "open311" and signal.kind == "report" and signal.service_code == "container"
    assert signal.extra["open311"]["attributes"] == {"container_type": "glas"}
    assert "device_id" not in json.dumps(signal.extra) and "tt222111" not in json.dumps(signal.extra)
    assert signal.area == "binnenstad"
    events = await intake.events("signal.received", wait_until, count=2)
    assert all("06-87654321" not in json.dumps(e) and "piet@" not in json.dumps(e) for e in events)


async def test_multivaluelist_attributes_and_attribute_checks(intake: Intake) -> None:
    form = request_form(intake, service_code="dumping")
    del form["attribute[container_type]"]
    body = [*form.items(), ("attribute[what][]", "grofvuil"), ("attribute[what][]", "huisvuil")]
    ok = await intake.client.post(
        "/open311/v2/requests.json",
        content="&".join(f"{k}={v}" for k, v in body).replace(" ", "+"),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    assert ok.status_code == 200, ok.text
    signal = await intake.get(Signal, ok.json()[0]["service_request_id"])
    assert signal.extra["open311"]["attributes"] == {"what": ["grofvuil", "huisvuil"]}

    missing = await intake.client.post(
        "/open311/v2/requests.json", data={**request_form(intake), "attribute[container_type]": ""}
    )
    assert missing.status_code == 400 and "required" in missing.json()[0]["description"]
    wrong = await intake.client.post(
        "/open311/v2/requests.json", data=request_form(intake, **{"attribute[container_type]": "kernafval"})
    )
    assert wrong.status_code == 400 and "must be one of" in wrong.json()[0]["description"]
    unknown = await intake.client.post(
        "/open311/v2/requests.json", data=request_form(intake, **{"attribute[colour]": "blue"})
    )
    assert unknown.status_code == 400


@pytest.mark.parametrize(
    ("change", "status", "fragment"),
    [
        ({"api_key": ""}, 403, "api_key"),
        ({"api_key": "cs_0000.nonsense"}, 403, "api_key"),
        ({"service_code": ""}, 400, "service_code was not provided"),
        ({"service_code": "no-such"}, 404, "service_code"),
        ({"jurisdiction_id": "atlantis"}, 404, "jurisdiction_id"),
        ({"jurisdiction_id": "utrecht"}, 403, "not valid for jurisdiction_id"),
        ({"lat": "", "long": ""}, 400, "location is required"),
        ({"long": ""}, 400, "together"),
        ({"lat": "52.37", "long": "4.89"}, 400, "outside"),
        ({"lat": "north"}, 400, "decimal degrees"),
        ({"email": "not-an-address"}, 400, "email"),
        ({"description": "x" * 4001}, 400, "4,000"),
    ],
)
async def test_post_request_errors(
    intake: Intake, change: dict[str, str], status: int, fragment: str
) -> None:
    response = await intake.client.post("/open311/v2/requests.xml", data=request_form(intake, **change))
    assert response.status_code == status, response.text
    root = assert_like_spec(response.content, SPEC_ERRORS)
    assert fragment in (root[0].findtext("description") or "")
    assert await intake.count(Signal) == 0


async def test_address_string_alone_is_a_location(intake: Intake) -> None:
    form = request_form(intake, lat="", long="", address_string="Markt 1, Gouda")
    response = await intake.client.post("/open311/v2/requests.json", data=form)
    assert response.status_code == 200, response.text
    signal = await intake.get(Signal, response.json()[0]["service_request_id"])
    assert signal.lat is None and signal.extra["open311"]["address_string"] == "Markt 1, Gouda"


async def test_a_photo_sent_with_the_request_is_stored_with_the_signal(intake: Intake) -> None:
    """The Media Handling extension: the photo itself in a multipart field ``media``, checked like
    a portal's upload, stored with the signal in its transaction (``signal.received`` counts it,
    and ``signal.attachment_added`` tells the partners and departments); staff open it as any other."""
    form = request_form(intake)
    response = await intake.client.post(
        "/open311/v2/requests.json", data=form, files={"media": ("foto.jpg", JPEG, "image/jpeg")}
    )
    assert response.status_code == 200, response.text
    signal_id = response.json()[0]["service_request_id"]
    assert (await intake.get(Signal, signal_id)).attachments == 1
    async with intake.runtime.sessions() as session:
        [stored] = (await session.exec(select(Attachment))).all()
    assert (stored.signal_id, stored.media_type, stored.size) == (signal_id, "image/jpeg", len(JPEG))
    events = {subject: json.loads(payload) for subject, payload in await _outbox(intake, signal_id)}
    assert events["civic.gouda.signal.received"]["data"]["attachments"] == 1
    assert events["civic.gouda.signal.attachment_added"]["data"] == {"signal_id": signal_id, "attachments": 1}
    listed = await intake.client.get(f"/v1/signals/{signal_id}/attachments", headers=intake.auth())
    [item] = listed.json()["items"]
    opened = await intake.client.get(
        f"/v1/signals/{signal_id}/attachments/{item['id']}", headers=intake.auth()
    )
    assert opened.status_code == 200 and opened.content == JPEG


async def test_a_refused_photo_creates_no_request(intake: Intake) -> None:
    """A script named ``.jpg`` is refused with the spec's error array, and nothing is stored."""
    response = await intake.client.post(
        "/open311/v2/requests.xml",
        data=request_form(intake),
        files={"media": ("foto.jpg", SCRIPT, "image/jpeg")},
    )
    assert response.status_code == 400, response.text
    root = assert_like_spec(response.content, SPEC_ERRORS)
    assert "not a photo or PDF" in (root[0].findtext("description") or "")
    assert await intake.count(Signal) == 0 and await intake.count(Attachment) == 0
    assert not any(intake.settings.attachments_dir.rglob("*.*"))

    # Under an Idempotency-Key, the same form with another photo is another request.
    key = {"Idempotency-Key": "open311-foto-1"}
    first = await intake.client.post(
        "/open311/v2/requests.json",
        data=request_form(intake),
        files={"media": ("foto.jpg", JPEG, "image/jpeg")},
        headers=key,
    )
    assert first.status_code == 200, first.text
    other = await intake.client.post(
        "/open311/v2/requests.json",
        data=request_form(intake),
        files={"media": ("foto.png", PNG, "image/png")},
        headers=key,
    )
    assert other.status_code == 400 and "another request" in other.text
    assert await intake.count(Signal) == 1 and await intake.count(Attachment) == 1


async def _outbox(intake: Intake, signal_id: str) -> list[tuple[str, str]]:
    async with intake.runtime.sessions() as session:
        rows = (await session.exec(select(OutboxMessage))).all()
    return [(row.subject, row.payload) for row in rows if signal_id in row.payload]


# -- GET requests ----------------------------------------------------------------------------------


async def _create(intake: Intake, **extra: str) -> str:
    form = request_form(intake, **extra)
    if form["service_code"] != "container":
        del form["attribute[container_type]"]
    response = await intake.client.post("/open311/v2/requests.json", data=form)
    assert response.status_code == 200, response.text
    return str(response.json()[0]["service_request_id"])


async def test_get_requests_follows_the_spec_and_shows_nothing_personal(intake: Intake) -> None:
    first = await _create(intake)
    second = await _create(intake, service_code="kerstbomen", description="Kerstboom op de stoep")
    portal = (await intake.post_signal()).json()["id"]  # not classified yet: no service, not listed

    xml = await intake.client.get("/open311/v2/requests.xml", params={"jurisdiction_id": "gouda"})
    root = assert_like_spec(xml.content, SPEC_REQUESTS)
    assert {r.findtext("service_request_id") for r in root} == {first, second}

    js = (await intake.client.get("/open311/v2/requests.json", params={"jurisdiction_id": "gouda"})).json()
    assert [r["service_request_id"] for r in js] == [second, first]  # newest first
    for request in js:
        assert list(request) == spec_json_keys(SPEC_REQUESTS)
        assert isinstance(request["service_request_id"], str) and request["status"] == "open"
        assert request["requested_datetime"].endswith("Z") and request["zipcode"] is None
    one = next(r for r in js if r["service_request_id"] == first)
    assert one["description"] == "De glasbak op de Markt zit vol. Bel [PHONE]."
    assert (one["lat"], one["long"]) == (52.012, 4.71) and one["service_name"] == "Container"
    assert "binnenstad" in one["address"]
    assert "piet" not in json.dumps(js).lower() and "06-87654321" not in json.dumps(js)

    filtered = await intake.client.get(
        "/open311/v2/requests.json", params={"jurisdiction_id": "gouda", "service_code": "kerstbomen,dumping"}
    )
    assert [r["service_request_id"] for r in filtered.json()] == [second]
    by_id = await intake.client.get(
        "/open311/v2/requests.json",
        params={"jurisdiction_id": "gouda", "service_request_id": f"{first},{portal}", "status": "closed"},
    )
    assert [r["service_request_id"] for r in by_id.json()] == [first]  # ids override the status filter
    closed = await intake.client.get(
        "/open311/v2/requests.json", params={"jurisdiction_id": "gouda", "status": "closed"}
    )
    assert closed.json() == []
    old = (utcnow() - timedelta(days=200)).strftime("%Y-%m-%dT%H:%M:%SZ")
    none = await intake.client.get(
        "/open311/v2/requests.json", params={"jurisdiction_id": "gouda", "end_date": old}
    )
    assert none.json() == []

    single = await intake.client.get(f"/open311/v2/requests/{first}.xml", params={"jurisdiction_id": "gouda"})
    root = assert_like_spec(single.content, SPEC_REQUESTS)
    assert len(root) == 1
    token = await intake.client.get(f"/open311/v2/tokens/{first}.xml", params={"jurisdiction_id": "gouda"})
    assert_like_spec(token.content, SPEC_TOKEN)


async def test_default_jurisdiction(intake: Intake) -> None:
    intake.context.settings.open311_default_jurisdiction = "gouda"
    response = await intake.client.get("/open311/v2/services.json")
    assert response.status_code == 200 and response.json()


# -- servicerequestupdates -------------------------------------------------------------------------


async def _route(
    intake: Intake,
    bus: Any,
    request_id: str,
    partners: list[str],
    wait_until: Any,
    *,
    to: str = "resolved",
    case_id: str = "case-9",
) -> None:
    signal = await intake.get(Signal, request_id)
    routed = SignalRouted(
        signal_id=request_id,
        case_id=case_id,
        tracking_code=signal.tracking_code,
        responsible="stadsbeheer",
        partners=partners,
        priority="normal",
        rule_id="afval",
    )
    changed = CaseStatusChanged(
        case_id=case_id,
        signal_id=request_id,
        tracking_code=signal.tracking_code,
        to=to,
        public_note="Geleegd. Vragen? Mail beheer@gouda.example",
        actor="department",
        sequence=3,
    )
    for data in (routed, changed):
        await bus.publish(data.bus_subject("gouda"), make_event(tenant="gouda", service="routing", data=data))

    async def followed() -> bool:
        current = await intake.get(Signal, request_id)
        return current.case_id == case_id and current.status == to and current.partners == partners

    await wait_until(followed, timeout=10, message="intake to follow the case")


async def test_updates_are_served_from_the_status_history(intake: Intake, bus: Any, wait_until: Any) -> None:
    request_id = await _create(intake)
    await _route(intake, bus, request_id, [], wait_until)
    xml = await intake.client.get(
        "/open311/v2/servicerequestupdates.xml", params={"jurisdiction_id": "gouda"}
    )
    root = assert_like_spec(xml.content, SPEC_UPDATES)
    [update] = list(root)
    assert update.findtext("service_request_id") == request_id and update.findtext("status") == "fixed"
    assert update.findtext("description") == "Geleegd. Vragen? Mail [EMAIL]"
    js = (
        await intake.client.get("/open311/v2/servicerequestupdates.json", params={"jurisdiction_id": "gouda"})
    ).json()
    assert [sorted(u) for u in js] == [sorted(spec_json_keys(SPEC_UPDATES))]
    request = (
        await intake.client.get(
            f"/open311/v2/requests/{request_id}.json", params={"jurisdiction_id": "gouda"}
        )
    ).json()
    assert request[0]["status"] == "closed" and request[0]["agency_responsible"] == "stadsbeheer"


async def test_posted_updates_go_to_routing_with_intakes_service_key(
    intake: Intake, bus: Any, receiver: Receiver, wait_until: Any
) -> None:
    intake.context.settings.routing_url = receiver.url
    request_id = await _create(intake)
    form = {
        "jurisdiction_id": "gouda",
        "service_request_id": request_id,
        "update_id": "woco-778",
        "updated_datetime": "2026-11-30T08:00:00Z",
        "status": "FIXED",
        "description": "Container geleegd. Bel 06-11111111.",
        "email": "medewerker@woco.example",
    }
    _, partner_key = intake.gouda.add_key(["partner:woco"])

    # Before routing: no case yet.
    early = await intake.client.post(
        "/open311/v2/servicerequestupdates.json", data={**form, "api_key": intake.gouda.key}
    )
    assert early.status_code == 400 and "no case" in early.json()[0]["description"]
    await _route(intake, bus, request_id, ["woco"], wait_until)

    # No service key configured yet: a clear error, nothing sent.
    missing = await intake.client.post(
        "/open311/v2/servicerequestupdates.json", data={**form, "api_key": partner_key}
    )
    assert missing.status_code == 400 and "service key" in missing.json()[0]["description"]
    key_file = intake.settings.service_keys_dir / "gouda"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text("cs_servicekey.secret\n")

    xml = await intake.client.post(
        "/open311/v2/servicerequestupdates.xml", data={**form, "api_key": partner_key}
    )
    assert xml.status_code == 200, xml.text
    root = ET.fromstring(xml.content)
    assert (root.tag, root[0].tag, root[0].findtext("update_id")) == (
        "service_request_updates",
        "request_update",
        "woco-778",
    )
    [(case_id, authorization, body)] = receiver.received
    assert case_id == "case-9" and authorization == "Bearer cs_servicekey.secret"
    partner_key_id = partner_key[3:].split(".", 1)[0]
    assert body == {
        "status": "resolved",
        "public_note": "Container geleegd. Bel [PHONE].",
        "internal_note": None,
        "update_id": f"open311:{partner_key_id}:woco-778",
    }

    _, other_partner = intake.gouda.add_key(["partner:welzijn"])
    refused = await intake.client.post(
        "/open311/v2/servicerequestupdates.json", data={**form, "api_key": other_partner}
    )
    assert refused.status_code == 403
    _, reader = intake.gouda.add_key(["cases:read"])
    no_scope = await intake.client.post(
        "/open311/v2/servicerequestupdates.json", data={**form, "api_key": reader}
    )
    assert no_scope.status_code == 403
    bad_status = await intake.client.post(
        "/open311/v2/servicerequestupdates.json", data={**form, "api_key": partner_key, "status": "EXPLODED"}
    )
    assert bad_status.status_code == 400

    receiver.status = 422
    refused_by_routing = await intake.client.post(
        "/open311/v2/servicerequestupdates.json",
        data={**form, "api_key": partner_key, "update_id": "woco-779"},
    )
    assert (
        refused_by_routing.status_code == 400
        and "refused by the test" in refused_by_routing.json()[0]["description"]
    )
    assert len(receiver.received) == 2


# -- what GET requests publishes, and whose requests it lists ---------------------------------------


async def _classify(intake: Intake, bus: Any, signal_id: str, subtopic: str, wait_until: Any) -> None:
    """The classifier's verdict, over the bus as in production."""
    data = SignalClassified(
        signal_id=signal_id,
        topic="afval" if subtopic == "container" else "belastingen",
        subtopic=subtopic,
        confidence=0.9,
        alternatives=[Alternative(topic="afval", subtopic=subtopic, probability=0.9)],
        kind="report",
        needs_review=False,
        model_version="test",
    )
    await bus.publish(data.bus_subject("gouda"), make_event(tenant="gouda", service="classifier", data=data))

    async def followed() -> bool:
        return bool((await intake.get(Signal, signal_id)).subtopic == subtopic)

    await wait_until(followed, timeout=10, message="intake to follow the classification")


async def _public(intake: Intake, path: str, **params: str) -> tuple[Any, bytes]:
    """The same GET as JSON (parsed) and as XML (raw bytes)."""
    js = await intake.client.get(f"{path}.json", params={"jurisdiction_id": "gouda", **params})
    xml = await intake.client.get(f"{path}.xml", params={"jurisdiction_id": "gouda", **params})
    assert js.status_code == 200 and xml.status_code == 200, (js.text, xml.text)
    return js.json(), xml.content


async def test_only_requests_posted_via_open311_publish_their_description(
    intake: Intake, bus: Any, wait_until: Any
) -> None:
    """A resident who wrote through the portal (or the phone line …) never agreed to have their
    words published: their report is listed, but without a description, in JSON and in XML, in
    the list and in the detail. A request an Open311 client posted shows its text, redacted, until
    the person's data is erased."""
    via_open311 = await _create(intake)
    web = (await intake.post_signal()).json()["id"]
    await _classify(intake, bus, web, "container", wait_until)
    web_words = (b"Er ligt afval", b"Bel mij op")  # from the portal's text (conftest.SIGNAL)

    listed, listed_xml = await _public(intake, "/open311/v2/requests")
    assert {r["service_request_id"] for r in listed} == {via_open311, web}
    by_id = {r["service_request_id"]: r for r in listed}
    assert by_id[web]["description"] is None and by_id[web]["service_code"] == "container"
    assert by_id[via_open311]["description"] == "De glasbak op de Markt zit vol. Bel [PHONE]."
    root = assert_like_spec(listed_xml, SPEC_REQUESTS)
    xml_by_id = {r.findtext("service_request_id"): r for r in root}
    web_description = xml_by_id[web].find("description")
    assert web_description is not None and not web_description.text and not list(web_description)
    assert xml_by_id[via_open311].findtext("description") == "De glasbak op de Markt zit vol. Bel [PHONE]."

    detail, detail_xml = await _public(intake, f"/open311/v2/requests/{web}")
    assert [r["service_request_id"] for r in detail] == [web] and detail[0]["description"] is None
    assert_like_spec(detail_xml, SPEC_REQUESTS)
    for body in (json.dumps(listed, ensure_ascii=False).encode(), listed_xml):
        assert not any(words in body for words in web_words)
    for body in (json.dumps(detail, ensure_ascii=False).encode(), detail_xml):
        assert not any(words in body for words in (*web_words, b"[PHONE]"))

    async with intake.runtime.sessions() as session, session.begin():
        await privacy.erase_signals(session, "gouda", [via_open311], "test", intake.settings.attachments_dir)
    erased, erased_xml = await _public(intake, f"/open311/v2/requests/{via_open311}")
    assert erased[0]["description"] is None and b"glasbak" not in erased_xml

    # A municipality that wants no resident's words public, redacted or not, switches them off.
    kept = await _create(intake)
    tenant_file = intake.gouda.folder / "tenant.yaml"
    settings = yaml.safe_load(tenant_file.read_text(encoding="utf-8"))
    tenant_file.write_text(
        yaml.safe_dump({**settings, "open311": {"public_descriptions": False}}), encoding="utf-8"
    )
    intake.runtime.tenants.refresh(force=True)
    hidden, hidden_xml = await _public(intake, f"/open311/v2/requests/{kept}")
    assert hidden[0]["description"] is None and b"glasbak" not in hidden_xml
    assert hidden[0]["service_code"] == "container"  # the request itself is still listed


async def test_an_open311_request_stays_listed_under_its_service_when_classified_privately(
    intake: Intake, bus: Any, wait_until: Any
) -> None:
    """The classifier may file an Open311 client's request under a topic that is no Open311
    service (here the municipal tax ``woz``); the client still finds it (request, token, updates),
    under the service_code it posted. A portal's report filed there stays unlisted."""
    request_id = await _create(intake)
    portal = (await intake.post_signal()).json()["id"]
    for signal_id in (request_id, portal):
        await _classify(intake, bus, signal_id, "woz", wait_until)

    listed, _ = await _public(intake, "/open311/v2/requests")
    assert [r["service_request_id"] for r in listed] == [request_id]
    assert (listed[0]["service_code"], listed[0]["service_name"]) == ("container", "Container")
    filtered, _ = await _public(intake, "/open311/v2/requests", service_code="container")
    assert [r["service_request_id"] for r in filtered] == [request_id]
    assert (await _public(intake, "/open311/v2/requests", service_code="woz"))[0] == []

    one, _ = await _public(intake, f"/open311/v2/requests/{request_id}")
    assert one[0]["service_code"] == "container"
    token, _ = await _public(intake, f"/open311/v2/tokens/{request_id}")
    assert token == [{"service_request_id": request_id, "token": request_id}]
    hidden = await intake.client.get(
        f"/open311/v2/requests/{portal}.json", params={"jurisdiction_id": "gouda"}
    )
    assert hidden.status_code == 404

    await _route(intake, bus, request_id, [], wait_until)
    updates, _ = await _public(intake, "/open311/v2/servicerequestupdates")
    assert [(u["service_request_id"], u["status"]) for u in updates] == [(request_id, "fixed")]


async def test_status_filter_takes_the_specs_values_in_any_case(intake: Intake) -> None:
    request_id = await _create(intake)
    for status in ("OPEN", "Open", "open,CLOSED"):
        found, _ = await _public(intake, "/open311/v2/requests", status=status)
        assert [r["service_request_id"] for r in found] == [request_id], status
    assert (await _public(intake, "/open311/v2/requests", status="CLOSED"))[0] == []
    assert (await _public(intake, "/open311/v2/requests", status="closed,Closed"))[0] == []


def _updates_reach_routing_at(intake: Intake, receiver: Receiver) -> None:
    """Updates that Open311 clients post are passed on to ``receiver`` (routing's stand-in), with
    intake's service key for routing in place."""
    intake.context.settings.routing_url = receiver.url
    key_file = intake.settings.service_keys_dir / "gouda"
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text("cs_servicekey.secret\n")


async def _post_update(
    intake: Intake, request_id: str, status: str, update_id: str, description: str, fmt: str = "json"
) -> Any:
    """An Open311 client's ``POST servicerequestupdates`` with the tenant's key, as a form."""
    return await intake.client.post(
        f"/open311/v2/servicerequestupdates.{fmt}",
        data={
            "api_key": intake.gouda.key,
            "jurisdiction_id": "gouda",
            "service_request_id": request_id,
            "update_id": update_id,
            "status": status,
            "description": description,
        },
    )


async def test_open_on_an_ended_case_asks_routing_to_reopen_it(
    intake: Intake, bus: Any, receiver: Receiver, wait_until: Any
) -> None:
    """OPEN means "in progress" while the case runs, and a reopening once it has ended (routing
    has no way from resolved to in_progress); REOPEN says so outright. Routing's refusal is the
    spec's error array, never a 500."""
    _updates_reach_routing_at(intake, receiver)
    running = await _create(intake)
    ended = await _create(intake, description="Nog een")
    await _route(intake, bus, running, [], wait_until, to="in_progress", case_id="case-1")
    await _route(intake, bus, ended, [], wait_until, to="resolved", case_id="case-2")

    async def post(request_id: str, status: str, update_id: str, fmt: str = "json") -> Any:
        return await _post_update(intake, request_id, status, update_id, "Toch niet opgelost.", fmt)

    for request_id, status, update_id in (
        (running, "OPEN", "u1"),
        (ended, "OPEN", "u2"),
        (ended, "open", "u3"),
    ):
        answer = await post(request_id, status, update_id)
        assert answer.status_code == 200 and answer.json() == [{"update_id": update_id}], answer.text
    assert [(case_id, body["status"]) for case_id, _, body in receiver.received] == [
        ("case-1", "in_progress"),
        ("case-2", "reopened"),
        ("case-2", "reopened"),
    ]
    explicit = await post(ended, "REOPEN", "u4")
    assert explicit.status_code == 200, explicit.text
    assert receiver.received[-1][2]["status"] == "reopened"

    receiver.status = 409  # routing's lifecycle refuses the move (say, the case was cancelled)
    refused = await post(ended, "OPEN", "u5", fmt="xml")
    assert refused.status_code == 400, refused.text
    root = assert_like_spec(refused.content, SPEC_ERRORS)
    assert "refused by the test" in (root[0].findtext("description") or "")
    receiver.status = 500
    broken = await post(ended, "OPEN", "u6")
    assert broken.status_code == 400 and broken.json()[0]["code"] == 400


async def test_planned_and_for_triage_from_mysocietys_update_states_go_to_routing(
    intake: Intake, bus: Any, receiver: Receiver, wait_until: Any
) -> None:
    """mySociety's open311-adapter also sends PLANNED (work is planned: in progress for the
    resident) and FOR_TRIAGE (back to the triage department); both are passed on, in any case."""
    _updates_reach_routing_at(intake, receiver)
    request_id = await _create(intake)
    await _route(intake, bus, request_id, [], wait_until, to="assigned", case_id="case-7")

    for update_id, status in (("p1", "PLANNED"), ("t1", "for_triage")):
        answer = await _post_update(intake, request_id, status, update_id, "Ingepland voor volgende week.")
        assert answer.status_code == 200 and answer.json() == [{"update_id": update_id}], answer.text
    assert [(case_id, body["status"]) for case_id, _, body in receiver.received] == [
        ("case-7", "in_progress"),
        ("case-7", "triage"),
    ]


async def test_a_residents_own_answer_is_not_published(intake: Intake, bus: Any, wait_until: Any) -> None:
    """The resident answers staff's question on their tracking page; their words are on that page,
    which only they open, but neither in ``status_notes`` nor in ``servicerequestupdates``."""
    request_id = await _create(intake)
    signal = await intake.get(Signal, request_id)
    changes = [
        ("waiting_on_resident", "Welke glasbak bedoelt u?", "responsible", 1),
        ("in_progress", "Die bij mijn huis, ik ben Anna Jansen.", "resident", 2),
    ]
    for to, note, actor, sequence in changes:
        changed = CaseStatusChanged(
            case_id="case-7",
            signal_id=request_id,
            tracking_code=signal.tracking_code,
            to=to,
            public_note=note,
            actor=actor,
            sequence=sequence,
        )
        await bus.publish(
            changed.bus_subject("gouda"), make_event(tenant="gouda", service="routing", data=changed)
        )

    async def answered() -> bool:
        return (await intake.get(Signal, request_id)).status_sequence == 2

    await wait_until(answered, timeout=10, message="intake to follow the answer")
    [request], _ = await _public(intake, f"/open311/v2/requests/{request_id}")
    assert request["status_notes"] is None
    updates, updates_xml = await _public(intake, "/open311/v2/servicerequestupdates")
    assert [u["description"] for u in updates] == ["Welke glasbak bedoelt u?", None]
    assert b"Anna" not in updates_xml
    page = (await intake.client.get(f"/v1/tracking/{signal.tracking_code}")).json()
    assert page["history"][-1]["note"] == "Die bij mijn huis, ik ben Anna Jansen."
