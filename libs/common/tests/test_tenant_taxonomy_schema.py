"""taxonomy.yaml and the classifier settings of tenant.yaml in a tenant folder: what loads, what is
refused (with file, line and pointer), and that a refused change keeps the last good taxonomy."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from civicsignals.common.tenant_schemas import check_folder
from civicsignals.common.tenants import TenantRegistry, load_tenant

#: As routing's tests write it: codes only, two topics without subtopics.
CODES_ONLY = """\
version: 1
topics:
  - code: afval
    subtopics: [{code: container}]
  - code: zorg
"""
DUTCH_ONLY = """\
topics:
  - code: afval
    name_nl: Afval
    open311: true
    subtopics:
      - code: container
        name_nl: Container
      - code: grofvuil
        name_nl: Grofvuil
        examples_nl: [Er staat een bank op de stoep]
"""


def _touch_later(path: Path) -> None:
    stamp = time.time_ns() + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


@pytest.mark.parametrize("text", [CODES_ONLY, DUTCH_ONLY], ids=["codes-only", "dutch-only"])
def test_a_taxonomy_needs_only_codes(make_tenant: Any, text: str) -> None:
    gouda = make_tenant("gouda")
    (gouda.folder / "taxonomy.yaml").write_text(text, encoding="utf-8")
    assert check_folder(gouda.folder, strict=True).issues == []
    assert load_tenant(gouda.folder).taxonomy == yaml.safe_load(text)


@pytest.mark.parametrize(
    ("change", "line", "pointer", "message"),
    [
        (
            lambda t: t.replace("code: grofvuil", "code: container"),
            8,
            "/topics/0/subtopics/1/code",
            "subtopic code 'container' is listed twice in topic 'afval'",
        ),
        (
            lambda t: t + "  - code: afval\n",
            11,
            "/topics/1/code",
            "topic code 'afval' is listed twice (also topic 0)",
        ),
        (
            lambda t: t.replace("      - code: grofvuil\n", "      - name_nl: Grof\n"),
            8,
            "/topics/0/subtopics/1",
            "'code' is a required property",
        ),
        (
            lambda t: t.replace("name_nl: Grofvuil", "name_nl: [Grof, vuil]"),
            9,
            "/topics/0/subtopics/1/name_nl",
            "is not of type 'string', 'null'",
        ),
        (
            lambda t: t.replace(
                "        name_nl: Container\n", "        name_nl: Container\n        name_nl: Bak\n"
            ),
            8,
            "",
            "key 'name_nl' is given twice",
        ),
    ],
    ids=["subtopic-twice", "topic-twice", "no-code", "name-not-text", "key-twice"],
)
def test_what_the_classifier_cannot_use_is_refused_with_file_line_and_pointer(
    make_tenant: Any, change: Any, line: int, pointer: str, message: str
) -> None:
    gouda = make_tenant("gouda")
    path = gouda.folder / "taxonomy.yaml"
    path.write_text(change(DUTCH_ONLY), encoding="utf-8")
    [issue] = check_folder(gouda.folder, strict=True).issues
    assert (issue.file, issue.line, issue.pointer) == (path, line, pointer)
    assert message in issue.message, issue.message
    assert str(issue).startswith(f"{path} line {line}: ")


def test_a_refused_taxonomy_keeps_the_last_good_one(make_tenant: Any) -> None:
    gouda = make_tenant("gouda")
    path = gouda.folder / "taxonomy.yaml"
    path.write_text(DUTCH_ONLY, encoding="utf-8")
    registry = TenantRegistry(gouda.tenants_dir, check_interval_s=0)
    good = registry.get("gouda")
    assert good is not None and good.taxonomy == yaml.safe_load(DUTCH_ONLY)

    path.write_text(DUTCH_ONLY.replace("code: grofvuil", "code: container"), encoding="utf-8")
    _touch_later(path)
    tenant = registry.get("gouda")
    assert tenant is not None and tenant.taxonomy == yaml.safe_load(DUTCH_ONLY)
    assert f"{path} line 8: subtopic code 'container' is listed twice" in registry.errors["gouda"]


def test_the_cold_start_has_a_review_threshold_of_its_own(make_tenant: Any) -> None:
    settings = {"classifier": {"review_threshold": 0.45, "cold_start_review_threshold": 0.08}}
    gouda = make_tenant("gouda", settings=settings)
    assert load_tenant(gouda.folder).settings["classifier"] == settings["classifier"]

    leiden = make_tenant("leiden", settings={"classifier": {"cold_start_review_threshold": 1.5}})
    [issue] = check_folder(leiden.folder).issues
    assert issue.pointer == "/classifier/cold_start_review_threshold" and "1.5" in issue.message
