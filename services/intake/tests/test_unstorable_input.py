"""NUL characters in forms, query strings and paths: refused before any route runs (the input
guard of every service, ``libs/common/.../inputguard.py``), on SQLite and on PostgreSQL, where
they used to fail the transaction with a 500."""

from __future__ import annotations

import pytest
from sqlmodel import func, select

from civicsignals.intake.models import Signal

from .conftest import JPEG, Intake


async def _signals(intake: Intake) -> int:
    async with intake.app.state.runtime.sessions() as session:
        return int((await session.exec(select(func.count()).select_from(Signal))).one())


def _problem_names(response: object, pointer: str) -> None:
    assert response.status_code == 422, response.text  # type: ignore[attr-defined]
    assert response.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    assert pointer in [error["pointer"] for error in response.json()["errors"]]  # type: ignore[attr-defined]


def _form(intake: Intake) -> dict[str, str]:
    return {
        "api_key": intake.gouda.key,
        "jurisdiction_id": "gouda",
        "service_code": "container",
        "lat": "52.0116",
        "long": "4.7105",
        "attribute[container_type]": "glas",
        "description": "De glasbak zit vol\x00",
    }


async def test_a_nul_in_an_open311_form_field_stores_nothing(intake: Intake) -> None:
    response = await intake.client.post("/open311/v2/requests.json", data=_form(intake))
    _problem_names(response, "/description")
    assert await _signals(intake) == 0


@pytest.mark.parametrize(
    "path",
    [
        "/open311/v2/requests.json?jurisdiction_id=gouda&service_code=%00",
        "/v1/tracking/ABCD-EFGH-JKLM?lang=%00",
    ],
    ids=["open311-filter", "tracking"],
)
async def test_a_nul_in_the_query_string_is_refused(intake: Intake, path: str) -> None:
    response = await intake.client.get(path)
    _problem_names(response, "/service_code" if "service_code" in path else "/lang")


async def test_a_nul_in_the_path_is_refused(intake: Intake) -> None:
    response = await intake.client.get("/v1/tracking/ABCD%00EFGH")
    _problem_names(response, "")


async def test_a_nul_in_a_multipart_field_that_postgresql_refuses_is_a_422(
    intake: Intake, database_url: str
) -> None:
    """A multipart form passes the guard (its file may hold any byte); on PostgreSQL the refused
    value rolls the transaction back and the problem handler answers it as the client's error."""
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite stores U+0000; only PostgreSQL refuses it")
    response = await intake.client.post(
        "/open311/v2/requests.json", data=_form(intake), files={"media": ("foto.jpg", JPEG, "image/jpeg")}
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert await _signals(intake) == 0


@pytest.mark.parametrize("depth", ["nan", "inf", "-Infinity", "1e999"])
async def test_an_open311_number_attribute_must_be_finite(intake: Intake, depth: str) -> None:
    """``float()`` reads these; PostgreSQL's JSON refuses NaN, so they are the spec's 400 error array."""
    form = {
        **_form(intake),
        "service_code": "onderhoud-stoep-rijweg-parkeerplaats",
        "description": "Diep gat in de stoep",
        "attribute[depth_cm]": depth,
    }
    form.pop("attribute[container_type]")
    response = await intake.client.post("/open311/v2/requests.json", data=form)
    assert response.status_code == 400, response.text
    assert response.json() == [{"code": 400, "description": "attribute[depth_cm] must be a finite number"}]
    assert await _signals(intake) == 0
    form["attribute[depth_cm]"] = "12.5"  # the same request with a number is taken
    assert (await intake.client.post("/open311/v2/requests.json", data=form)).status_code == 200
