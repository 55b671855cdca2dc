"""The AsyncAPI document (docs/asyncapi.yaml) stays true to the code.

It is generated from the event models, so these tests check what generation alone cannot: that the
committed file is the generated one, that its schemas, examples and references hold together, that
every event model is in it on the subject the code publishes to, and that :data:`ROUTES` names the
durable consumers the services really run and the services that really publish.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from civicsignals.common import asyncapi
from civicsignals.common.events import ALL_EVENT_MODELS, SignalReceived

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "docs" / "asyncapi.yaml"
DOC_URI = "urn:civicsignals:asyncapi"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return asyncapi.build_document()


def payload_validator(document: dict[str, Any], message: str, part: str = "payload") -> Draft202012Validator:
    """A validator for a message's payload (or headers) whose ``#/components/...`` references
    resolve against the whole document, as an AsyncAPI reader resolves them."""
    registry: Registry[Any] = Registry().with_resource(DOC_URI, DRAFT202012.create_resource(document))
    pointer = f"{DOC_URI}#/components/messages/{message}/{part}"
    return Draft202012Validator({"$ref": pointer}, registry=registry)


def test_committed_document_is_the_generated_one() -> None:
    assert COMMITTED.exists(), (
        "docs/asyncapi.yaml is missing: run `civicsignals-asyncapi --out docs/asyncapi.yaml`"
    )
    committed = COMMITTED.read_text(encoding="utf-8")
    generated = asyncapi.render()
    assert yaml.safe_load(committed) == yaml.safe_load(generated), (
        "docs/asyncapi.yaml is out of date: run `civicsignals-asyncapi --out docs/asyncapi.yaml`"
    )
    assert committed == generated, "docs/asyncapi.yaml differs in layout: regenerate it"


def test_rendering_is_stable_and_round_trips(document: dict[str, Any]) -> None:
    text = asyncapi.render()
    assert text == asyncapi.render()
    assert yaml.safe_load(text) == document


def test_check_command_fails_on_a_stale_file_and_passes_on_a_fresh_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "docs" / "asyncapi.yaml"
    assert asyncapi.main(["--check", "--out", str(out)]) == 1
    assert "is missing" in capsys.readouterr().err

    assert asyncapi.main(["--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == asyncapi.render()
    assert asyncapi.main(["--check", "--out", str(out)]) == 0

    out.write_text(out.read_text(encoding="utf-8").replace("signal.received", "signal.recieved", 1))
    assert asyncapi.main(["--check", "--out", str(out)]) == 1
    assert "out of date" in capsys.readouterr().err


def test_document_has_the_asyncapi_3_structure(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert {"title", "version"} <= set(document["info"])
    assert [server["protocol"] for server in document["servers"].values()] == ["nats"]
    assert all(server["host"] for server in document["servers"].values())
    for name, channel in document["channels"].items():
        placeholders = set(re.findall(r"{([^}]+)}", channel["address"]))
        assert placeholders == set(channel.get("parameters", {})), name
    for name, operation in document["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        channel_ref = operation["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/"), name
        # An operation's messages must be messages of its channel (AsyncAPI 3.0 Operation Object).
        assert operation["messages"], name
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), name
    for name, message in document["components"]["messages"].items():
        assert {"name", "contentType", "headers", "payload", "examples"} <= set(message), name
        assert message["examples"], f"{name} has no example"


# The fields the AsyncAPI 3.0.0 JSON Schema (asyncapi/spec-json-schemas, definitions/3.0.0) allows
# where it says ``additionalProperties: false``, restricted to the ones this generator may write.
ROOT_FIELDS = {
    "asyncapi",
    "id",
    "info",
    "servers",
    "defaultContentType",
    "channels",
    "operations",
    "components",
}
SERVER_FIELDS = {"host", "pathname", "title", "summary", "description", "protocol", "protocolVersion"}
CHANNEL_FIELDS = {"address", "messages", "parameters", "title", "summary", "description", "servers", "tags"}
OPERATION_FIELDS = {"title", "summary", "description", "action", "channel", "messages", "tags"}
MESSAGE_FIELDS = {"title", "summary", "description", "name", "contentType", "headers", "payload", "examples"}
EXAMPLE_FIELDS = {"name", "summary", "headers", "payload"}
PARAMETER_FIELDS = {"description", "enum", "default", "examples", "location"}
COMPONENT_KEY = re.compile(r"^[\w\d\.\-_]+$")
RUNTIME_EXPRESSION = re.compile(r"^\$message\.(header|payload)#(\/(([^\/~])|(~[01]))*)*")


def test_document_uses_only_fields_asyncapi_3_allows(document: dict[str, Any]) -> None:
    assert set(document) <= ROOT_FIELDS
    for server in document["servers"].values():
        assert {"host", "protocol"} <= set(server) <= SERVER_FIELDS
    for channel in document["channels"].values():
        assert set(channel) <= CHANNEL_FIELDS
    for operation in document["operations"].values():
        assert set(operation) <= OPERATION_FIELDS
    components = document["components"]
    for kind in ("schemas", "parameters", "messages"):
        for key in components[kind]:
            assert COMPONENT_KEY.match(key), f"components.{kind}.{key}"
    for message in components["messages"].values():
        assert set(message) <= MESSAGE_FIELDS
        for example in message["examples"]:
            assert set(example) <= EXAMPLE_FIELDS
    for parameter in components["parameters"].values():
        assert set(parameter) <= PARAMETER_FIELDS
        assert all(isinstance(value, str) for value in parameter.get("examples", []))
        if "location" in parameter:
            assert RUNTIME_EXPRESSION.match(parameter["location"])


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    refs = list(asyncapi.iter_refs(document))
    assert len(refs) > 50
    for where, ref in refs:
        try:
            asyncapi.resolve(document, ref)
        except (KeyError, IndexError) as exc:
            pytest.fail(f"{'/'.join(where)}: $ref {ref} does not resolve ({exc})")


def test_a_dangling_reference_is_found(document: dict[str, Any]) -> None:
    broken = copy.deepcopy(document)
    broken["channels"]["signal.received"]["messages"]["signal.received.v1"]["$ref"] += "x"
    with pytest.raises(KeyError):
        for _, ref in asyncapi.iter_refs(broken):
            asyncapi.resolve(broken, ref)


def test_every_schema_is_a_valid_json_schema(document: dict[str, Any]) -> None:
    components = document["components"]
    schemas = [
        *components["schemas"].values(),
        *(message["payload"] for message in components["messages"].values()),
    ]
    for schema in schemas:
        Draft202012Validator.check_schema(schema)
        Draft7Validator.check_schema(schema)  # AsyncAPI's own schema format is draft-07 based
    assert all("$defs" not in schema for schema in schemas), "a $defs would not resolve in the document"


def test_every_example_validates_against_its_message(document: dict[str, Any]) -> None:
    for name, message in document["components"]["messages"].items():
        payloads = payload_validator(document, name)
        headers = payload_validator(document, name, "headers")
        for example in message["examples"]:
            payloads.validate(example["payload"])
            headers.validate(example["headers"])


def test_an_example_that_breaks_the_schema_is_rejected(document: dict[str, Any]) -> None:
    """The validation above is not vacuous: a wrong type, a missing field and a wrong header fail."""
    name = asyncapi.message_id(SignalReceived)
    payloads = payload_validator(document, name)
    example = document["components"]["messages"][name]["examples"][0]

    wrong_type = copy.deepcopy(example["payload"])
    wrong_type["type"] = "nl.civicsignals.signal.classified.v1"
    missing = copy.deepcopy(example["payload"])
    del missing["data"]["tracking_code"]
    bad_kind = copy.deepcopy(example["payload"])
    bad_kind["data"]["kind"] = "rant"
    for payload in (wrong_type, missing, bad_kind):
        with pytest.raises(ValidationError):
            payloads.validate(payload)
    with pytest.raises(ValidationError):
        payload_validator(document, name, "headers").validate({"traceparent": "not-a-traceparent"})


def test_examples_are_events_the_models_accept(document: dict[str, Any]) -> None:
    """The examples are what a consumer reads: ``read_data`` must accept each one."""
    from civicsignals.common.events import CloudEvent, read_data

    for model in ALL_EVENT_MODELS:
        message = document["components"]["messages"][asyncapi.message_id(model)]
        for example in message["examples"]:
            event = CloudEvent.model_validate(example["payload"])
            assert event.type == model.event_type()
            assert event.source == f"/civicsignals/{asyncapi.ROUTES[model].publisher}"
            read_data(event, model)
            assert example["headers"]["Nats-Msg-Id"] == event.id


def test_every_event_model_has_a_channel_a_message_and_a_send_operation(document: dict[str, Any]) -> None:
    messages = document["components"]["messages"]
    assert len(messages) == len(ALL_EVENT_MODELS) + 1  # and the dead letter
    for model in ALL_EVENT_MODELS:
        message_id = asyncapi.message_id(model)
        message = messages[message_id]
        assert message["name"] == model.event_type()
        assert message["payload"]["properties"]["type"]["const"] == model.event_type()
        assert message["payload"]["properties"]["data"]["$ref"] == f"#/components/schemas/{model.__name__}"

        channels = [
            name
            for name, channel in document["channels"].items()
            if channel["messages"].get(message_id) == {"$ref": f"#/components/messages/{message_id}"}
        ]
        assert len(channels) == 1, f"{model.event_type()} is on {channels}"
        channel_ref = f"#/channels/{channels[0]}"
        sends = [
            (name, operation)
            for name, operation in document["operations"].items()
            if operation["action"] == "send" and operation["channel"]["$ref"] == channel_ref
        ]
        assert len(sends) == 1, f"{model.event_type()} has sends {[name for name, _ in sends]}"
        send = sends[0][1]
        assert send["messages"] == [{"$ref": f"{channel_ref}/messages/{message_id}"}]
        assert send["tags"] == [{"name": asyncapi.ROUTES[model].publisher}]
        receivers = {
            name
            for name, operation in document["operations"].items()
            if operation["action"] == "receive" and operation["channel"]["$ref"] == channel_ref
        }
        assert set(asyncapi.ROUTES[model].consumers) <= receivers


def test_channel_addresses_are_the_subjects_the_code_publishes_to(document: dict[str, Any]) -> None:
    tenant, department = "gouda", "afval-en-reiniging"
    for model in ALL_EVENT_MODELS:
        channel = document["channels"][asyncapi.short_name(model)]
        address = channel["address"].replace("{tenant}", tenant).replace("{department}", department)
        department_subject = getattr(model, "department_subject", None)
        expected = department_subject(tenant, department) if department_subject else model.bus_subject(tenant)
        assert address == expected, model.__name__
        # What a consumer subscribes to matches the channel: `*` where the tenant goes.
        if department_subject is None:
            assert channel["address"].replace("{tenant}", "*") == model.subscription()
    dead = document["channels"][asyncapi.DEAD_LETTER_CHANNEL]["address"]
    assert dead.replace("{dlqTenant}", tenant).replace("{consumer}", "x") == f"dlq.{tenant}.x"
