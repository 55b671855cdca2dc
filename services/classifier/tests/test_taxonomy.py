"""The default taxonomy and the taxonomy loader."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from civicsignals.classifier.model import coldstart_examples
from civicsignals.classifier.taxonomy import (
    CODE_PATTERN,
    DEFAULT_TAXONOMY_PATH,
    Taxonomy,
    TaxonomyError,
    label_key,
    load_taxonomy,
    parse_taxonomy,
    split_label,
)

PUBLIC_SPACE_TOPICS = [
    "afval",
    "civiele-constructies",
    "ondermijning",
    "groen-en-water",
    "overig",
    "overlast-bedrijven-en-horeca",
    "overlast-in-de-openbare-ruimte",
    "overlast-op-het-water",
    "overlast-van-dieren",
    "overlast-van-en-door-personen-of-groepen",
    "schoon",
    "wegen-verkeer-straatmeubilair",
    "wonen",
]

#: Topics and subtopics the rest of a municipality must have (more subtopics are allowed).
REQUIRED_OTHER = {
    "burgerzaken": {"paspoort", "identiteitskaart", "bsn-en-inschrijving", "rijbewijs", "verhuizing"},
    "belastingen": {"woz", "afvalstoffenheffing", "overige-belastingen"},
    "parkeren-en-vergunningen": {"parkeervergunning", "parkeerboete"},
    "zorg-en-welzijn": {"wmo", "jeugd"},
    "werk-en-inkomen": {"bijstand", "schulden"},
    "wonen": {"woningcorporatie-onderhoud", "woningkwaliteit"},
    "overlast-en-veiligheid": {"burenoverlast"},
    "dienstverlening": {"bereikbaarheid", "wachttijd", "bejegening", "taal-en-communicatie"},
}

MINIMAL = """\
version: "1"
topics:
  - code: afval
    name_nl: Afval
    name_en: Waste
    description_nl: Afval op straat.
    subtopics:
      - code: container
        name_nl: Container
        name_en: Container
        description_nl: Volle container.
      - code: grofvuil
        name_nl: Grofvuil
        name_en: Bulky waste
        description_nl: Een bank op de stoep.
  - code: burgerzaken
    name_nl: Burgerzaken
    name_en: Civil affairs
    description_nl: Paspoort en rijbewijs.
    subtopics:
      - code: paspoort
        name_nl: Paspoort
        name_en: Passport
        description_nl: Paspoort aanvragen.
"""


@pytest.fixture(scope="module")
def default() -> Taxonomy:
    return load_taxonomy()


def _squash(text: str) -> str:
    return " ".join(text.replace("_x000D_", " ").split())


def test_default_taxonomy_loads(default: Taxonomy) -> None:
    assert load_taxonomy(DEFAULT_TAXONOMY_PATH) == default
    assert len(default.topics) == 20
    labels = default.labels()
    assert len(labels) == 148
    assert labels[0] == ("afval", "dumping")
    assert len(set(labels)) == len(labels)
    for topic, subtopic in labels:
        assert re.fullmatch(CODE_PATTERN, topic) and re.fullmatch(CODE_PATTERN, subtopic)
    # Subtopic codes are unique across topics too, so a subtopic code alone is readable.
    subcodes = [s for _, s in labels]
    assert len(set(subcodes)) == len(subcodes)


def test_every_entry_has_names_and_description(default: Taxonomy) -> None:
    for topic in default.topics:
        assert topic.name_nl and topic.name_en and topic.description_nl
        for sub in topic.subtopics:
            assert sub.name_nl and sub.name_en and len(sub.description_nl) >= 20, sub.code


def test_public_space_topics_follow_signalen_main_categories(default: Taxonomy) -> None:
    codes = [t.code for t in default.topics]
    assert codes[: len(PUBLIC_SPACE_TOPICS)] == PUBLIC_SPACE_TOPICS


def test_covers_all_110_amsterdam_categories(
    default: Taxonomy, shared_data_file: Callable[[str], Path]
) -> None:
    source = json.loads(shared_data_file("amsterdam_classifications.json").read_text(encoding="utf-8"))
    assert len(source) == 110
    by_source = {
        sub.source_name: (topic.code, sub)
        for topic in default.topics
        for sub in topic.subtopics
        if sub.source_name
    }
    assert set(by_source) == {item["name"] for item in source}
    # The JSON's order follows the main categories, and so does the taxonomy.
    topic_order = [by_source[item["name"]][0] for item in source]
    assert [t for i, t in enumerate(topic_order) if i == 0 or topic_order[i - 1] != t] == PUBLIC_SPACE_TOPICS
    for item in source:
        topic, sub = by_source[item["name"]]
        assert topic in PUBLIC_SPACE_TOPICS
        assert sub.name_nl == item["name"]
        if item["instructions"].strip():  # Amsterdam's instructions are the description, verbatim
            assert _squash(sub.description_nl) == _squash(item["instructions"]), item["name"]
    assert by_source["Container"][0] == "afval"
    assert by_source["Straatverlichting"] == (
        "wegen-verkeer-straatmeubilair",
        by_source["Straatverlichting"][1],
    )
    assert by_source["Straatverlichting"][1].code == "straatverlichting"


def test_covers_the_rest_of_a_municipality(default: Taxonomy) -> None:
    for topic_code, required in REQUIRED_OTHER.items():
        topic = default.topic(topic_code)
        assert required <= {s.code for s in topic.subtopics}, topic_code
        for sub in topic.subtopics:
            if sub.source_name is None:  # our own descriptions: two to four sentences
                sentences = [s for s in re.split(r"(?<=[.!?])\s+", sub.description_nl) if s]
                assert 2 <= len(sentences) <= 4, (sub.code, len(sentences))
    assert default.subtopic("burgerzaken", "paspoort").name_en == "Passport"
    with pytest.raises(KeyError):
        default.subtopic("burgerzaken", "nope")


def test_attribution_is_kept() -> None:
    header = DEFAULT_TAXONOMY_PATH.read_text(encoding="utf-8").split("\nversion:")[0]
    assert "EUPL-1.2" in header and "Gemeente Amsterdam" in header
    notice = (DEFAULT_TAXONOMY_PATH.parent / "NOTICE").read_text(encoding="utf-8")
    assert "EUPL-1.2" in notice and "Gemeente Amsterdam" in notice
    assert "d83c36f1bdaa7faee44c973cdab2ec541f1e1a61" in notice


def test_labels_and_label_strings() -> None:
    taxonomy = parse_taxonomy(MINIMAL)
    assert taxonomy.labels() == [("afval", "container"), ("afval", "grofvuil"), ("burgerzaken", "paspoort")]
    assert label_key("afval", "container") == "afval/container"
    assert split_label("afval/container") == ("afval", "container")
    for bad in ("afval", "/x", "a/b/c", "a/"):
        with pytest.raises(ValueError):
            split_label(bad)


def test_fingerprint_ignores_layout() -> None:
    taxonomy = parse_taxonomy(MINIMAL)
    relaid = yaml.safe_dump(yaml.safe_load(MINIMAL), default_flow_style=True, width=1000)
    assert parse_taxonomy(relaid).fingerprint() == taxonomy.fingerprint()
    changed = parse_taxonomy(MINIMAL.replace("Volle container.", "Een volle container."))
    assert changed.fingerprint() != taxonomy.fingerprint()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda t: t.replace("code: grofvuil", "code: Grof_Vuil"),
            r"line 12: .*subtopics\[1\]\.code: 'Grof_Vuil'",
        ),
        (lambda t: t.replace("code: grofvuil", "code: container"), r"duplicate subtopic code 'container'"),
        (lambda t: t.replace("code: burgerzaken", "code: afval"), r"duplicate topic code 'afval'"),
        (
            lambda t: t.replace("        name_en: Bulky waste\n", "        name_en: [Bulky, waste]\n"),
            r"line 14: topics\[0\]\.subtopics\[1\]\.name_en: Input should be a valid string",
        ),
        (
            lambda t: t.replace("      - code: grofvuil\n", "      - name: grofvuil\n"),
            r"topics\[0\]\.subtopics\[1\]\.code: Field required",
        ),
        (
            lambda t: t.replace("description_nl: Paspoort aanvragen.", "description_nl: {nl: Paspoort}"),
            r"topics\[1\]\.subtopics\[0\]\.description_nl: Input should be a valid string",
        ),
        (lambda t: t.split("topics:")[0] + "topics: []\n", r"the taxonomy has no topics"),
        (lambda t: t.replace('version: "1"', "version: 1.5"), r"version: Input should be a valid string"),
        (
            lambda t: t.replace("    name_en: Waste\n", "    name_en: Waste\n    name_en: Rubbish\n"),
            r"line \d+: not valid YAML: duplicate key 'name_en'",
        ),
        (
            lambda t: t.replace("description_nl: Volle container.", "description_nl: [Volle"),
            r"line \d+: not valid YAML",
        ),
        (lambda t: "- just\n- a list\n", r"top level must be a mapping"),
    ],
    ids=[
        "bad-code",
        "duplicate-subtopic",
        "duplicate-topic",
        "name-not-text",
        "no-code",
        "description-not-text",
        "no-topics",
        "version-not-text",
        "duplicate-key",
        "bad-yaml",
        "not-a-mapping",
    ],
)
def test_invalid_taxonomy_names_file_and_problem(
    tmp_path: Path, mutate: Callable[[str], str], expected: str
) -> None:
    path = tmp_path / "taxonomy.yaml"
    path.write_text(mutate(MINIMAL), encoding="utf-8")
    with pytest.raises(TaxonomyError) as info:
        load_taxonomy(path)
    message = str(info.value)
    assert str(path) in message
    assert re.search(expected, message), message
    assert info.value.problems and info.value.source == str(path)


def test_missing_file_is_a_taxonomy_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(TaxonomyError, match=r"(?s)nope\.yaml.*cannot read"):
        load_taxonomy(missing)


def test_all_problems_are_reported_at_once() -> None:
    text = MINIMAL.replace("code: container", "code: Container").replace(
        "        name_en: Bulky waste\n", "        name_en: [Bulky]\n"
    )
    with pytest.raises(TaxonomyError) as info:
        parse_taxonomy(text, source="tenant/gouda/taxonomy.yaml")
    assert len(info.value.problems) == 2
    assert str(info.value).startswith("invalid taxonomy tenant/gouda/taxonomy.yaml: 2 problems")


def test_only_codes_are_required_the_rest_has_defaults() -> None:
    """What the tenant schema lets a municipality leave out, the classifier fills in (so that
    ``civicsignals-admin validate`` and the classifier agree, and a tenant's own taxonomy is used)."""
    taxonomy = parse_taxonomy(
        """\
topics:
  - code: afval
    name_nl: Afval
    open311: true
    subtopics:
      - code: container
        name_nl: "  Container  "
        name_en: ""
        description_nl:
        examples_nl: ["De container is vol", "  "]
        examples_en: ["  ", "The bin is full"]
        examples_tr: ["Konteyner dolmuş", ""]
        examples_pl: null
        open311_attributes: []
      - code: grof-vuil
  - code: zorg
  - code: wonen
    name_nl: Wonen
    description_nl: Onderhoud van huurwoningen.
    subtopics: []
"""
    )
    assert taxonomy.version == "tenant"
    afval = taxonomy.topic("afval")
    assert (afval.name_nl, afval.name_en, afval.description_nl) == ("Afval", "Afval", "")
    container = afval.subtopic("container")
    assert (container.name_nl, container.name_en, container.description_nl) == ("Container", "Container", "")
    assert container.examples_nl == ("De container is vol",)
    assert container.examples_en == ("The bin is full",)
    # Any examples_<language> is read, in the file's order; the cold start learns from them all.
    assert container.examples == {
        "nl": ("De container is vol",),
        "en": ("The bin is full",),
        "tr": ("Konteyner dolmuş",),
        "pl": (),
    }
    texts, _ = coldstart_examples(taxonomy)
    assert {"De container is vol", "The bin is full", "Konteyner dolmuş"} <= set(texts)
    grof = afval.subtopic("grof-vuil")
    assert (grof.name_nl, grof.name_en) == ("grof vuil", "grof vuil")  # the code in words
    # A topic without subtopics is one class, its subtopic code being the topic's own.
    assert taxonomy.labels() == [
        ("afval", "container"),
        ("afval", "grof-vuil"),
        ("zorg", "zorg"),
        ("wonen", "wonen"),
    ]
    wonen = taxonomy.subtopic("wonen", "wonen")
    assert (wonen.name_nl, wonen.description_nl) == ("Wonen", "Onderhoud van huurwoningen.")
    assert parse_taxonomy(MINIMAL.replace('version: "1"', "version: 7")).version == "7"
    # A name given in English only is not replaced by the Dutch one.
    assert parse_taxonomy(MINIMAL).subtopic("afval", "grofvuil").name_en == "Bulky waste"
