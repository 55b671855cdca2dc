"""A tenant's own taxonomy.yaml: the tenant schema (what every service and ``civicsignals-admin
validate`` check) accepts exactly what the classifier can use, and the registry never serves the
default taxonomy to a tenant that has its own."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from civicsignals.classifier.registry import COLDSTART_DIR, DEFAULT_COLDSTART, ModelRegistry, TaxonomyRefused
from civicsignals.classifier.taxonomy import TaxonomyError, load_taxonomy, parse_taxonomy
from civicsignals.common.tenant_schemas import check_file

GOOD = """\
version: 2
topics:
  - code: grachten
    name_nl: Grachten
    description_nl: Alles over de grachten, kademuren en bruggen over het water.
    subtopics:
      - code: kademuur
        name_nl: Kademuur
        description_nl: Een kademuur verzakt, scheurt of brokkelt af.
      - code: drijfvuil
        name_nl: Drijfvuil
        description_nl: Afval, flessen en plastic drijven in de gracht.
  - code: fietsen
    name_nl: Fietsen
    subtopics:
      - code: weesfiets
        name_nl: Weesfiets
        description_nl: Een achtergelaten fiets staat al weken op dezelfde plek.
"""

#: Variants of GOOD: (id, the text, whether it can be used).
VARIANTS: list[tuple[str, str, bool]] = [
    ("no-name-en", GOOD, True),
    ("codes-only", "topics:\n  - code: afval\n    subtopics: [{code: container}]\n  - code: zorg\n", True),
    ("null-subtopics", GOOD.split("    subtopics:\n      - code: weesfiets")[0] + "    subtopics:\n", True),
    ("blank-names", GOOD.replace("name_nl: Kademuur", "name_nl: ''"), True),
    ("null-description", GOOD.replace("description_nl: Een kademuur verzakt, scheurt of brokkelt af.", "description_nl:"), True),
    ("no-version", GOOD.replace("version: 2\n", ""), True),
    ("text-version", GOOD.replace("version: 2", "version: '2026-12'"), True),
    ("other-services-fields", GOOD.replace("    name_nl: Fietsen\n", "    name_nl: Fietsen\n    open311: false\n"), True),
    ("examples", GOOD.replace("        name_nl: Weesfiets\n", "        name_nl: Weesfiets\n        examples_nl: [Fiets zonder zadel]\n"), True),
    ("examples-en", GOOD.replace("        name_nl: Weesfiets\n", "        name_nl: Weesfiets\n        examples_en: [Bike without a saddle]\n"), True),
    ("no-topics", "version: 1\ntopics: []\n", False),
    ("topics-not-a-list", "topics: {code: afval}\n", False),
    ("topic-without-code", GOOD.replace("  - code: fietsen\n", "  - name_en: Bicycles\n"), False),
    ("subtopic-without-code", GOOD.replace("      - code: drijfvuil\n", "      - name_en: Litter\n"), False),
    ("bad-code", GOOD.replace("code: weesfiets", "code: Wees_Fiets"), False),
    ("long-code", GOOD.replace("code: weesfiets", "code: " + "w" * 65), False),
    ("duplicate-topic", GOOD.replace("code: fietsen", "code: grachten"), False),
    ("duplicate-subtopic", GOOD.replace("code: drijfvuil", "code: kademuur"), False),
    ("duplicate-key", GOOD.replace("    name_nl: Fietsen\n", "    name_nl: Fietsen\n    name_nl: Fiets\n"), False),
    ("name-not-text", GOOD.replace("name_nl: Weesfiets", "name_nl: [Wees, fiets]"), False),
    ("examples-not-a-list", GOOD.replace("        name_nl: Weesfiets\n", "        name_nl: Weesfiets\n        examples_nl: Fiets\n"), False),
    ("examples-en-not-a-list", GOOD.replace("        name_nl: Weesfiets\n", "        name_nl: Weesfiets\n        examples_en: Bike\n"), False),
    ("examples-tr", GOOD.replace("        name_nl: Weesfiets\n", "        name_nl: Weesfiets\n        examples_tr: [Selesiz bisiklet]\n"), True),
    ("examples-tr-not-a-list", GOOD.replace("        name_nl: Weesfiets\n", "        name_nl: Weesfiets\n        examples_tr: Bisiklet\n"), False),
    ("version-not-text", GOOD.replace("version: 2", "version: 2.5"), False),
    ("subtopic-not-a-mapping", GOOD.replace("      - code: weesfiets\n", "      - weesfiets\n      - code: weesfiets\n"), False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "usable"), [(t, u) for _, t, u in VARIANTS], ids=[i for i, _, _ in VARIANTS]
)
def test_the_schema_accepts_exactly_what_the_classifier_can_use(
    tmp_path: Path, text: str, usable: bool
) -> None:
    path = tmp_path / "taxonomy.yaml"
    path.write_text(text, encoding="utf-8")
    _, issues = check_file(path)
    try:
        parse_taxonomy(path.read_text(encoding="utf-8"), source=str(path))
        classifier_ok = True
    except TaxonomyError:
        classifier_ok = False
    assert classifier_ok is usable
    assert (not issues) is usable, [str(issue) for issue in issues]


def _validate(folder: Path) -> tuple[int, str]:
    admin = pytest.importorskip("civicsignals.admin.cli")
    out = io.StringIO()
    code = admin.main(["--tenants-dir", str(folder.parent), "validate", str(folder)], out=out)
    return code, out.getvalue()


def test_validate_accepts_a_taxonomy_without_english_names(make_tenant) -> None:
    tenant = make_tenant("delft")
    (tenant.folder / "taxonomy.yaml").write_text(GOOD, encoding="utf-8")
    code, out = _validate(tenant.folder)
    assert code == 0, out


def test_validate_refuses_a_subtopic_without_code_naming_file_line_and_field(make_tenant) -> None:
    tenant = make_tenant("delft")
    path = tenant.folder / "taxonomy.yaml"
    path.write_text(
        GOOD.replace("      - code: drijfvuil\n", "      - name_nl: Drijfvuil\n"), encoding="utf-8"
    )
    code, out = _validate(tenant.folder)
    assert code == 1
    assert re.search(
        rf"{re.escape(str(path))} line 10: 'code' is a required property \(at /topics/0/subtopics/1\)", out
    ), out


def test_validate_refuses_a_topic_code_used_twice(make_tenant) -> None:
    tenant = make_tenant("delft")
    path = tenant.folder / "taxonomy.yaml"
    path.write_text(GOOD.replace("code: fietsen", "code: grachten"), encoding="utf-8")
    code, out = _validate(tenant.folder)
    assert code == 1
    assert f"{path} line 13: topic code 'grachten' is listed twice" in out and "/topics/1/code" in out, out


async def test_the_registry_keeps_a_tenants_last_good_taxonomy(models_dir: Path, wait_until) -> None:
    """Even a taxonomy the schema let through (it should not) never hands the tenant the default
    taxonomy: the last good one stays, and a tenant without one is not served."""
    registry = ModelRegistry(models_dir)
    await registry.load()
    good = yaml.safe_load(GOOD)
    key = registry.set_tenant_taxonomy("delft", good)
    assert key is not None and key != "default"
    model = await wait_until(
        lambda: registry.serving_version("delft") and registry.model_for("delft"), timeout=60, message="build"
    )
    assert {topic for topic, _ in model.labels} == {"grachten", "fietsen"}

    broken = yaml.safe_load(GOOD.replace("name_nl: Weesfiets", "name_nl: [Wees, fiets]"))
    assert registry.set_tenant_taxonomy("delft", broken, source="delft/taxonomy.yaml") == key
    assert registry.model_for("delft") is model and "delft" not in registry.refused

    # A tenant whose own taxonomy never was usable gets nothing, not the default taxonomy.
    assert registry.set_tenant_taxonomy("leiden", broken, source="leiden/taxonomy.yaml") is None
    with pytest.raises(TaxonomyRefused, match=r"(?s)leiden/taxonomy\.yaml.*name_nl"):
        registry.model_for("leiden")
    # Once fixed, it is served its own.
    assert registry.set_tenant_taxonomy("leiden", good) == key
    assert registry.model_for("leiden") is model
    # And a tenant without a taxonomy of its own gets the default one, as ever.
    assert registry.set_tenant_taxonomy("gouda", None) == "default"
    assert registry.model_for("gouda").version.startswith("coldstart-")
    assert registry.model_for("gouda") is not model


async def test_an_upgrade_that_changed_the_default_taxonomy_builds_its_cold_start_again(
    tmp_path: Path, shared_coldstart: Path
) -> None:
    """``_coldstart/default`` left by an older release, built from another default taxonomy, is
    not served: it would go on answering with the old labels and words. One built from the
    current taxonomy is served as it is."""
    bundle = tmp_path / "models" / COLDSTART_DIR / DEFAULT_COLDSTART
    shutil.copytree(shared_coldstart, bundle)
    card_path = bundle / "card.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    current = card["version"]
    card["version"] = "coldstart-2025.1-0ld0ld00"
    card["taxonomy"]["fingerprint"] = "0" * 64
    card_path.write_text(json.dumps(card), encoding="utf-8")

    model = await ModelRegistry(tmp_path / "models").load()
    assert model.version == current
    rebuilt = json.loads(card_path.read_text(encoding="utf-8"))
    assert rebuilt["taxonomy"]["fingerprint"] == load_taxonomy().fingerprint()
    assert not list(bundle.parent.glob(".*building*"))

    written = card_path.stat().st_mtime_ns
    again = await ModelRegistry(tmp_path / "models").load()
    assert again.version == current
    assert card_path.stat().st_mtime_ns == written  # not built a second time
