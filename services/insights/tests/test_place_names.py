"""The names of departments, areas and languages on the staff pages: the tenant's own files name
departments and areas, the staff pages' words name languages; codes nothing names stay codes, and
everything programs read (links, filters, exports) keeps the codes."""

from __future__ import annotations

import csv
import html
import io
import json
import os
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from civicsignals.common.events import CloudEvent
from civicsignals.common.tenants import Tenant, TenantRegistry
from civicsignals.insights import synthetic
from civicsignals.insights.names import PlaceNames, place_names
from civicsignals.insights.pages import Wording

from .conftest import Insights

DEPARTMENTS = [
    {"code": "afval-en-reiniging", "name": "Afval en reiniging"},
    {"code": "handhaving", "name": "Toezicht en handhaving"},
    {"code": "openbare-ruimte", "name": "Beheer openbare ruimte"},
    {"code": "groen-en-water"},  # no name: shown as coded
    # "wonen", the department of synthetic's topic wonen, is not listed at all
]


def _square(west: float, south: float) -> dict[str, Any]:
    ring = [[west, south], [west + 0.05, south], [west + 0.05, south + 0.02], [west, south + 0.02]]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def _feature(properties: dict[str, str], west: float) -> dict[str, Any]:
    return {"type": "Feature", "properties": properties, "geometry": _square(west, 52.0)}


AREAS = {
    "type": "FeatureCollection",
    "features": [
        _feature(
            {"code": "noord-oost", "name": "Noord-Oost", "district": "noord", "district_name": "Gouda-Noord"},
            4.6,
        ),
        _feature(
            {"code": "noord-west", "name": "Noord-West", "district": "noord", "district_name": "Gouda-Noord"},
            4.65,
        ),
        _feature(
            {"code": "binnenstad", "name": "Binnenstad", "district": "centrum", "district_name": "Centrum"},
            4.7,
        ),
        _feature({"code": "zonder-naam"}, 4.75),
    ],
}


def _write(path: Path, text: str) -> None:
    """Write a tenant file with a modification time of its own, so a rewrite within the file
    system's time resolution still counts as a change for the registry."""
    previous = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    stamp = max(previous + 1_000_000_000, path.stat().st_mtime_ns)
    os.utime(path, ns=(stamp, stamp))


def _name_places(insights: Insights, departments: list[dict[str, str]] = DEPARTMENTS) -> None:
    """Give the test tenant the departments and areas above, and have the registry read them."""
    folder = insights.tenant_key.folder
    _write(folder / "departments.yaml", yaml.safe_dump({"departments": departments}))
    _write(folder / "areas.geojson", json.dumps(AREAS))
    registry: TenantRegistry = insights.app.state.tenants
    registry.refresh(force=True)
    assert not registry.errors, registry.errors


def _signals(
    topic: str, area: str, language: str, count: int, *, seed: int, routed: bool = True
) -> list[CloudEvent]:
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(days=3)
    events: list[CloudEvent] = []
    for i in range(count):
        events += synthetic.signal_events(
            rng,
            "gouda",
            start + timedelta(minutes=7 * i),
            topic=topic,
            area=area,
            language=language,
            passive=False,
            now=datetime.now(UTC),
        )
    if not routed:  # a case nobody was made responsible for: "unassigned"
        events = [e for e in events if not e.type.endswith("signal.routed.v1")]
        assert any(e.type.endswith("case.status_changed.v1") for e in events)
    return events


async def _load(insights: Insights) -> None:
    await insights.apply(
        _signals("afval", "noord-oost", "nl", 8, seed=1)  # Afval en reiniging
        + _signals("overlast-en-veiligheid", "noord", "en", 6, seed=2)  # a district's code
        + _signals("wegen-verkeer", "binnenstad", "other", 5, seed=3)
        + _signals("wonen", "korte-akkeren", "tr", 4, seed=4)  # named by no file of the tenant
        + _signals("groen-water", "zonder-naam", "nl", 3, seed=5)  # a department without a name
        + _signals("belastingen", "noord-west", "nl", 6, seed=6, routed=False)
    )


async def _page(insights: Insights, path: str, **params: str) -> str:
    response = await insights.client.get(path, params=params, headers=insights.auth)
    assert response.status_code == 200, response.text
    return html.unescape(response.text)


def _row_headers(page: str) -> list[str]:
    """The departments table's first column."""
    table = page.split('id="departments"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<th scope="row">([^<]*)</th>', table)


def _bar_labels(page: str, chart: str) -> set[str]:
    """The labels of one bar chart of the dashboard (its section's id), whole (a long one is cut
    to fit on the chart, and whole in its ``<title>``)."""
    section = page.split(f'id="{chart}"', 1)[1].split("</section>", 1)[0]
    return set(re.findall(r"<title>([^<]*)</title>[^<]*</text>", section))


def _heatmap_languages(page: str) -> list[str]:
    head = page.split('<table class="heatmap">', 1)[1].split("</thead>", 1)[0]
    return re.findall(r"<th>([^<]*)</th>", head)[1:]


# -- the names -----------------------------------------------------------------------------------


def _tenant(**values: Any) -> Tenant:
    return Tenant(code="gouda", folder=Path("/nonexistent"), **values)


def test_a_tenants_files_name_its_departments_and_areas_and_districts() -> None:
    tenant = _tenant(departments={d["code"]: d for d in DEPARTMENTS}, areas=AREAS)
    names = PlaceNames.from_tenant(tenant)
    assert names.departments == {
        "afval-en-reiniging": "Afval en reiniging",
        "handhaving": "Toezicht en handhaving",
        "openbare-ruimte": "Beheer openbare ruimte",
    }
    assert names.areas == {
        "noord-oost": "Noord-Oost",
        "noord-west": "Noord-West",
        "binnenstad": "Binnenstad",
        "noord": "Gouda-Noord",
        "centrum": "Centrum",
    }
    # An area's own code wins over a district of the same code; blank names count as none.
    clash = {
        "type": "FeatureCollection",
        "features": [
            _feature({"code": "a", "name": "  ", "district": "b", "district_name": "District B"}, 4.6),
            _feature({"code": "b", "name": "Area B"}, 4.7),
        ],
    }
    assert PlaceNames.from_tenant(_tenant(areas=clash)).areas == {"b": "Area B"}
    assert PlaceNames.from_tenant(None) == PlaceNames() == PlaceNames.from_tenant(_tenant())


def test_the_names_are_built_once_per_loaded_tenant() -> None:
    tenant = _tenant(departments={d["code"]: d for d in DEPARTMENTS}, areas=AREAS)
    assert place_names(tenant) is place_names(tenant)
    reloaded = _tenant(departments={"afval-en-reiniging": {"code": "afval-en-reiniging", "name": "Afval"}})
    assert place_names(reloaded).department("afval-en-reiniging") == "Afval"  # a new load, new names
    assert place_names(None) == PlaceNames()


def test_wording_names_departments_areas_and_languages_and_falls_back_to_the_code() -> None:
    places = PlaceNames.from_tenant(_tenant(departments={d["code"]: d for d in DEPARTMENTS}, areas=AREAS))
    dutch, english = Wording("nl", places=places), Wording("en", places=places)
    assert (dutch.department("afval-en-reiniging"), english.department("afval-en-reiniging")) == (
        "Afval en reiniging",
        "Afval en reiniging",  # the municipality's own name, on English pages too
    )
    assert (dutch.department("unassigned"), english.department("unassigned")) == (
        "niet toegewezen",
        "unassigned",
    )
    assert dutch.department("wonen") == "wonen" and dutch.department("groen-en-water") == "groen-en-water"
    assert dutch.value("department", "handhaving") == "Toezicht en handhaving"
    assert (dutch.value("area", "noord-oost"), dutch.value("area", "noord")) == ("Noord-Oost", "Gouda-Noord")
    assert (dutch.value("area", "unknown"), english.value("area", "unknown")) == ("onbekend", "unknown")
    assert dutch.value("area", "korte-akkeren") == "korte-akkeren"
    languages = ("nl", "en", "other", "unknown", "tr", "xx")
    assert [dutch.value("language", code) for code in languages] == [
        "Nederlands",
        "Engels",
        "andere taal",
        "onbekend",
        "Turks",  # a portal's own language: its CLDR name
        "xx",  # no language: as coded
    ]
    assert [english.value("language", code) for code in languages] == [
        "Dutch",
        "English",
        "other language",
        "unknown",
        "Turkish",
        "xx",
    ]
    # Without a tenant (the login pages): languages named, departments and areas as coded.
    bare = Wording("nl")
    assert (bare.department("afval-en-reiniging"), bare.value("area", "noord-oost")) == (
        "afval-en-reiniging",
        "noord-oost",
    )
    assert bare.value("language", "en") == "Engels" and bare.department("unassigned") == "niet toegewezen"


# -- the pages -----------------------------------------------------------------------------------


async def test_the_dashboard_shows_names_and_links_by_code(insights: Insights) -> None:
    _name_places(insights)
    await _load(insights)
    dutch = await _page(insights, "/dashboard")
    assert _row_headers(dutch) == [  # in the order of the names shown (the export: of the codes)
        "Afval en reiniging",
        "Beheer openbare ruimte",
        "groen-en-water",  # listed without a name: the code, as before
        "niet toegewezen",
        "Toezicht en handhaving",
        "wonen",  # not in departments.yaml at all: the code
    ]
    assert _bar_labels(dutch, "areas") == {
        "Noord-Oost",
        "Noord-West",
        "Gouda-Noord",
        "Binnenstad",
        "korte-akkeren",
        "zonder-naam",
    }
    assert _bar_labels(dutch, "languages") == {"Nederlands", "Engels", "andere taal", "Turks"}
    assert sorted(_heatmap_languages(dutch)) == sorted(["Nederlands", "Engels", "andere taal", "Turks"])
    assert "Afval, taal Nederlands: " in dutch and "taal nl:" not in dutch
    # The links keep the codes.
    assert "area=noord-oost" in dutch and re.search(r"area=noord[&\"]", dutch) and "language=other" in dutch
    assert "/dashboard/signals?" in dutch and "language=nl" in dutch

    english = await _page(insights, "/dashboard", lang="en")
    assert "unassigned" in _row_headers(english) and "Afval en reiniging" in _row_headers(english)
    assert "niet toegewezen" not in english
    assert _bar_labels(english, "areas") == _bar_labels(dutch, "areas")
    assert _bar_labels(english, "languages") == {"Dutch", "English", "other language", "Turkish"}
    assert sorted(_heatmap_languages(english)) == sorted(["Dutch", "English", "other language", "Turkish"])
    assert "Waste in Dutch: " in english

    # Over time by area or language: the lines' legend by name.
    by_area = await _page(insights, "/dashboard", split="area")
    over_time = by_area.split('id="over-time"', 1)[1].split("</section>", 1)[0]
    assert "<title>Noord-Oost</title>" in over_time and "<title>noord-oost</title>" not in over_time
    by_language = await _page(insights, "/dashboard", split="language", lang="en")
    over_time = by_language.split('id="over-time"', 1)[1].split("</section>", 1)[0]
    assert "<title>Dutch</title>" in over_time and "<title>nl</title>" not in over_time

    # A filter's chip names its value; the form keeps the code.
    narrowed = await _page(insights, "/dashboard", area="noord-oost", language="other")
    assert "gebied: Noord-Oost ✕" in narrowed and "taal: andere taal ✕" in narrowed
    assert '<input type="hidden" name="area" value="noord-oost">' in narrowed
    narrowed = await _page(insights, "/dashboard", area="noord", lang="en")
    assert "area: Gouda-Noord ✕" in narrowed


async def test_the_signal_list_shows_names(insights: Insights) -> None:
    _name_places(insights)
    await _load(insights)
    listing = await _page(insights, "/dashboard/signals", area="noord-oost")
    assert "gebied: <strong>Noord-Oost</strong>" in listing
    assert "<td>Nederlands</td><td>Noord-Oost</td>" in listing
    assert "<td>nl</td>" not in listing and "<td>noord-oost</td>" not in listing
    assert "area=noord-oost" in listing  # the export links keep the code

    listing = await _page(insights, "/dashboard/signals", language="other", lang="en")
    assert "language: <strong>other language</strong>" in listing
    assert "<td>other language</td><td>Binnenstad</td>" in listing and "<td>other</td>" not in listing
    everything = await _page(insights, "/dashboard/signals", lang="en")
    for cells in (
        "<td>English</td><td>Gouda-Noord</td>",  # a district's code, named by areas.geojson
        "<td>Turkish</td><td>korte-akkeren</td>",  # a portal's language by CLDR; an area as coded
        "<td>Dutch</td><td>zonder-naam</td>",  # an area without a name
    ):
        assert cells in everything, cells


async def test_a_renamed_department_shows_without_a_restart(insights: Insights) -> None:
    _name_places(insights)
    await _load(insights)
    assert "Afval en reiniging" in _row_headers(await _page(insights, "/dashboard"))
    renamed = [
        {**d, "name": "Stadsreiniging"} if d["code"] == "afval-en-reiniging" else d for d in DEPARTMENTS
    ]
    _name_places(insights, renamed)
    headers = _row_headers(await _page(insights, "/dashboard"))
    assert "Stadsreiniging" in headers and "Afval en reiniging" not in headers


async def test_the_exports_keep_the_codes(insights: Insights) -> None:
    _name_places(insights)
    await _load(insights)

    async def rows(chart: str) -> list[dict[str, str]]:
        response = await insights.client.get(f"/dashboard/exports/{chart}.csv", headers=insights.auth)
        assert response.status_code == 200, response.text
        return list(csv.DictReader(io.StringIO(response.text)))

    departments = {row["department"] for row in await rows("departments")}
    assert {"afval-en-reiniging", "handhaving", "unassigned", "wonen"} <= departments
    assert not departments & {"Afval en reiniging", "Toezicht en handhaving", "niet toegewezen"}
    assert {row["area"] for row in await rows("areas")} == {
        "noord-oost",
        "noord-west",
        "noord",
        "binnenstad",
        "korte-akkeren",
        "zonder-naam",
    }
    assert {row["language"] for row in await rows("languages")} == {"nl", "en", "other", "tr"}
    assert {row["language"] for row in await rows("topic-language")} == {"nl", "en", "other", "tr"}
    signals = await rows("signals")
    assert {"noord-oost", "noord"} <= {row["area"] for row in signals}
    assert {row["language"] for row in signals} == {"nl", "en", "other", "tr"}
    api = await insights.client.get("/v1/exports/departments.json", headers=insights.auth)
    assert "afval-en-reiniging" in {row["department"] for row in api.json()["rows"]}
