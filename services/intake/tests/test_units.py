"""Framework-free parts of intake: rate limiter, file sniffing, areas, Open311 catalogue and XML."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from civicsignals.common.problems import Problem
from civicsignals.common.ratelimit import TokenBucketLimiter
from civicsignals.intake.attachments import AttachmentRefused, check_claims, sniff
from civicsignals.intake.open311 import render
from civicsignals.intake.open311.catalogue import (
    AttributeError311,
    load_services_file,
    services_from_taxonomy,
    validate_attributes,
)
from civicsignals.intake.open311.service import Open311Error, date_range, parse_form, parse_time
from civicsignals.intake.tenantconfig import AreaConfigError, AreaIndex

from .conftest import DEMO_AREAS, HEIC, JPEG, PDF, PNG, REPO, SCRIPT, WEBP


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert limiter.acquire("b") == 0.0  # every key has its own bucket
    clock.now = 0.5
    assert limiter.acquire("a") == 0.0
    with pytest.raises(Problem) as refused:
        limiter.check("a")
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "1"}
    clock.now = 100.0
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]  # refilled, but never past the burst
    assert limiter.acquire("a") > 0


def test_token_bucket_forgets_the_least_recently_used_keys() -> None:
    limiter = TokenBucketLimiter(rate_per_s=0.001, burst=1, max_keys=2, clock=Clock())
    limiter.acquire("a")
    limiter.acquire("b")
    limiter.acquire("c")  # "a" is forgotten: it comes back full
    assert limiter.acquire("a") == 0.0 and limiter.acquire("c") > 0


@given(st.lists(st.floats(min_value=0, max_value=10), min_size=1, max_size=50))
def test_token_bucket_never_allows_more_than_burst_plus_rate_times_time(gaps: list[float]) -> None:
    clock = Clock()
    limiter = TokenBucketLimiter(rate_per_s=1.0, burst=5, clock=clock)
    allowed = 0
    for gap in gaps:
        clock.now += gap
        allowed += limiter.acquire("k") == 0.0
    assert allowed <= 5 + clock.now * 1.0 + 1e-9


@pytest.mark.parametrize(
    ("content", "kind"), [(PNG, "png"), (JPEG, "jpeg"), (PDF, "pdf"), (WEBP, "webp"), (HEIC, "heic")]
)
def test_sniffing_reads_the_content(content: bytes, kind: str) -> None:
    assert sniff(content) == kind


@pytest.mark.parametrize(
    "content",
    [
        SCRIPT,
        b"  <?php system($_GET['c']); ?>",
        b"MZ\x90\x00\x03",
        b"\x7fELF\x02\x01",
        b"<!DOCTYPE html><p>",
        b"",
        b"hello",
    ],
)
def test_sniffing_refuses_what_is_not_a_photo_or_pdf(content: bytes) -> None:
    with pytest.raises(AttachmentRefused):
        sniff(content)


def test_claims_must_match_the_content() -> None:
    check_claims("jpeg", "IMG.JPG", "image/jpeg")
    check_claims("heic", "photo.heif", "image/heic")
    check_claims("png", None, "application/octet-stream")
    check_claims("png", "no-extension", None)
    for filename, declared in (
        ("a.jpg", None),
        (None, "image/jpeg"),
        ("a.png.sh", None),
        ("a.png", "text/plain"),
    ):
        with pytest.raises(AttachmentRefused):
            check_claims("png", filename, declared)


def test_demo_areas_cover_the_bounding_box_and_name_their_districts() -> None:
    index = AreaIndex.from_geojson(json.loads(DEMO_AREAS.read_text()), DEMO_AREAS)
    for lat in (51.951, 51.99, 52.0, 52.03, 52.079):
        for lon in (4.601, 4.65, 4.71, 4.76, 4.799):
            assert index.locate(lat, lon) is not None, (lat, lon)
    market = index.locate(52.0116, 4.7105)
    assert market is not None and (market.code, market.district) == ("binnenstad", "centrum")
    assert index.locate(52.37, 4.89) is None


def test_broken_areas_are_refused_with_the_file_named(tmp_path: Path) -> None:
    path = tmp_path / "areas.geojson"
    with pytest.raises(AreaConfigError, match=r"areas\.geojson: feature 1 has no properties\.code"):
        AreaIndex.from_geojson({"type": "FeatureCollection", "features": [{"properties": {}}]}, path)
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    with pytest.raises(AreaConfigError, match="valid"):
        AreaIndex.from_geojson(
            {"type": "FeatureCollection", "features": [{"properties": {"code": "x"}, "geometry": bowtie}]},
            path,
        )


def test_the_shipped_open311_catalogue_is_generated_from_the_default_taxonomy() -> None:
    script = REPO / "services/intake/scripts/generate_open311_services.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    catalogue = load_services_file()
    assert len(catalogue.services) > 50 and catalogue.get("container") is not None
    datatypes = {a.datatype for s in catalogue.services for a in s.attributes}
    assert datatypes == {"string", "number", "datetime", "text", "singlevaluelist", "multivaluelist"}


def test_a_tenant_taxonomy_can_open_or_close_topics_for_open311() -> None:
    taxonomy = {
        "topics": [
            {
                "code": "belastingen",
                "name_nl": "Belastingen",
                "open311": True,
                "subtopics": [
                    {"code": "woz", "name_nl": "WOZ"},
                    {"code": "geheim", "name_nl": "Geheim", "open311": False},
                ],
            },
            {
                "code": "afval",
                "name_nl": "Afval",
                "subtopics": [{"code": "container", "name_nl": "Container", "open311_attributes": []}],
            },
            {
                "code": "wonen",
                "name_nl": "Wonen",
                "subtopics": [{"code": "leegstand", "name_nl": "Leegstand"}],
            },
        ]
    }
    services = services_from_taxonomy(taxonomy)
    assert [s.service_code for s in services] == ["woz", "container"]
    assert services[1].attributes == []  # the tenant's own (empty) attributes win over the defaults


def test_attribute_values_are_checked_by_datatype() -> None:
    catalogue = load_services_file()
    lamp = catalogue.get("straatverlichting")
    hole = catalogue.get("onderhoud-stoep-rijweg-parkeerplaats")
    assert lamp is not None and hole is not None
    assert validate_attributes(lamp, {"pole_number": ["12-3"], "since": ["2026-11-01T00:00:00Z"]}) == {
        "pole_number": "12-3",
        "since": "2026-11-01T00:00:00Z",
    }
    assert validate_attributes(hole, {"depth_cm": ["7.5"]}) == {"depth_cm": 7.5}
    for service, given_values in (
        (lamp, {"since": ["last week"]}),
        (lamp, {"pole_number": ["a\nb"]}),
        (lamp, {"pole_number": ["1", "2"]}),
        (hole, {"depth_cm": ["deep"]}),
    ):
        with pytest.raises(AttributeError311):
            validate_attributes(service, given_values)


def test_form_parsing_and_dates() -> None:
    form = parse_form(
        [
            ("api_key", "k"),
            ("attribute[a]", "1"),
            ("attribute[b][]", "x"),
            ("attribute[b][]", "y"),
            ("api_key", "later"),
        ]
    )
    assert form.get("api_key") == "k" and form.attributes == {"a": ["1"], "b": ["x", "y"]}
    assert parse_time("2010-05-24T00:00:00Z", "start_date").isoformat() == "2010-05-24T00:00:00+00:00"  # type: ignore[union-attr]
    # A '+' in a query string arrives as a space.
    assert parse_time("2010-05-24T02:00:00 02:00", "x").isoformat() == "2010-05-24T00:00:00+00:00"  # type: ignore[union-attr]
    with pytest.raises(Open311Error):
        parse_time("2010-05-24T00:00:00", "start_date")
    now = parse_time("2026-11-28T00:00:00Z", "now")
    assert now is not None
    start, end = date_range(None, None, now)
    assert (end - start).days == 90 and end == now


def test_xml_has_the_declaration_empty_elements_and_booleans() -> None:
    body = render.to_xml(
        "service_requests", [{"service_request_id": "1", "account_id": None, "metadata": True}], "request"
    )
    assert body.startswith(b'<?xml version="1.0" encoding="utf-8"?>\n<service_requests>')
    root = ET.fromstring(body)
    assert root[0].find("account_id") is not None and root[0].findtext("account_id") == ""
    assert root[0].findtext("metadata") == "true"
    tricky = render.to_xml("errors", [{"code": 400, "description": "<script>&amp;"}], "error")
    assert ET.fromstring(tricky)[0].findtext("description") == "<script>&amp;"


def test_the_migrations_create_exactly_the_models(database_url: str) -> None:
    from civicsignals.common.migrations import pending_changes, service_tables
    from civicsignals.intake import app  # noqa: F401  (registers every table intake uses)

    mine = service_tables("intake")
    assert {"signal", "contact", "attachment", "conversation", "feedback", "outbox", "inbox"} <= set(
        mine.tables
    )
    assert "actor" in mine.tables["status_entry"].columns
    assert pending_changes(database_url, "civicsignals.intake.migrations", mine) == []
