"""An Open311 client written by others works against intake unchanged (issue 9, item 4).

``civicbot`` (PyPI, 2026) carries a GeoReport v2 client that was written against the published
specification and real cities' endpoints, not against ours. It is used here as it ships: its own
URLs, its own form encoding (``attribute[code]`` and ``attribute[code][]``), its own checks of a
request against the service definition it fetches (``validate_remote``), and its own parsing of
the answers. Intake is served by a real uvicorn server on loopback; the client runs in a thread
(it is synchronous, on urllib), so the app keeps serving on the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
import uvicorn
from civicbot.http import HttpError, HttpTransport, RateLimiter
from civicbot.open311 import CONFIRM_TOKEN, Open311Client, ValidationError
from civicbot.registry import Endpoint

from civicsignals.devstack.ports import free_port
from civicsignals.intake.models import Signal

from .conftest import Intake

T = TypeVar("T")


@pytest.fixture
async def open311(intake: Intake) -> AsyncIterator[Open311Client]:
    """The client, pointed at intake's Open311 root on a real port, for tenant gouda."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(intake.app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    endpoint = Endpoint(
        id="gouda-test", name="Gouda (test)", base_url=f"http://127.0.0.1:{port}/open311/v2", write=True
    )
    # the client waits half a second between calls to one host, out of politeness to real cities
    transport = HttpTransport(rate_limiter=RateLimiter(min_interval=0.0))
    try:
        yield Open311Client(endpoint, transport=transport, jurisdiction_id="gouda")
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(function, *args, **kwargs)


async def test_the_client_reads_the_service_list_and_definitions(open311: Open311Client) -> None:
    services = await _call(open311.list_services)

    by_code = {service["service_code"]: service for service in services}
    assert {"container", "dumping"} <= set(by_code)
    assert by_code["container"]["metadata"] is True and by_code["container"]["type"] == "realtime"
    definition = await _call(open311.get_service_definition, "container")
    (attribute,) = definition["attributes"]
    assert (attribute["code"], attribute["datatype"], attribute["required"]) == (
        "container_type",
        "singlevaluelist",
        True,
    )
    assert {value["key"] for value in attribute["values"]} >= {"glas", "rest"}


async def test_the_client_files_requests_checked_against_our_definitions_and_reads_them_back(
    open311: Open311Client, intake: Intake
) -> None:
    container = await _call(
        open311.create_request,
        "container",
        dry_run=False,
        confirm=CONFIRM_TOKEN,
        api_key=intake.gouda.key,
        validate_remote=True,
        lat=52.0116,
        lng=4.7105,
        description="De glasbak op de Markt zit vol. Bel 06-87654321.",
        email="piet@example.org",
        first_name="Piet",
        last_name="Puk",
        attributes={"container_type": "glas"},
    )
    dumping = await _call(
        open311.create_request,
        "dumping",
        dry_run=False,
        confirm=CONFIRM_TOKEN,
        api_key=intake.gouda.key,
        validate_remote=True,
        address_string="Markt 1, Gouda",
        description="Grofvuil en huisvuil naast de container.",
        attributes={"what": ["grofvuil", "huisvuil"]},
    )

    (created,) = container.response
    (second,) = dumping.response
    first_id, second_id = created["service_request_id"], second["service_request_id"]
    assert isinstance(first_id, str) and isinstance(second_id, str) and first_id != second_id
    signal = await intake.get(Signal, first_id)
    assert (signal.channel, signal.service_code, signal.has_contact) == ("open311", "container", True)
    assert signal.extra["open311"]["attributes"] == {"container_type": "glas"}
    assert (await intake.get(Signal, second_id)).extra["open311"]["attributes"] == {
        "what": ["grofvuil", "huisvuil"]
    }

    listed = await _call(open311.list_requests, service_request_ids=[first_id, second_id])
    assert sorted(request["service_request_id"] for request in listed) == sorted([first_id, second_id])
    one = await _call(open311.get_request, first_id)
    assert one is not None and one["service_request_id"] == first_id and one["status"] == "open"
    assert one["service_code"] == "container" and one["lat"] == pytest.approx(52.0116, abs=0.01)
    for request in [*listed, one]:  # the public reads name nobody
        assert "piet@example.org" not in json.dumps(request) and "06-87654321" not in json.dumps(request)


async def test_the_client_sees_our_refusals_as_the_specs_error_arrays(
    open311: Open311Client, intake: Intake
) -> None:
    # the client's own check, from the definition it fetched: a required attribute is missing
    with pytest.raises(ValidationError, match="container_type"):
        await _call(
            open311.create_request,
            "container",
            dry_run=False,
            confirm=CONFIRM_TOKEN,
            api_key=intake.gouda.key,
            validate_remote=True,
            lat=52.0116,
            lng=4.7105,
            description="Vol.",
        )
    # ours, when the client does not check first
    for api_key, attributes, status, fragment in (
        ("cs_0000.not-a-key", {"container_type": "glas"}, 403, "api_key"),
        (intake.gouda.key, {"container_type": "beton"}, 400, "container_type"),
    ):
        with pytest.raises(HttpError) as refused:
            await _call(
                open311.create_request,
                "container",
                dry_run=False,
                confirm=CONFIRM_TOKEN,
                api_key=api_key,
                lat=52.0116,
                lng=4.7105,
                description="Vol.",
                attributes=attributes,
            )
        assert refused.value.status == status
        (error,) = json.loads(refused.value.body)
        assert error["code"] == status and fragment in error["description"]
    assert await intake.count(Signal) == 0
