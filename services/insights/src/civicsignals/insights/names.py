"""The names that the pages show for codes: topics and subtopics, in Dutch and English, and the
tenant's departments and areas (:class:`PlaceNames`).

The read model, the exports, the API and the URLs keep the codes (``parkeren-en-vergunningen``);
people read names ("Parkeren en vergunningen", "Parking and permits"). The names live in the
taxonomy, which belongs to the classifier, and insights must not import the classifier (services
share only ``libs/common``). So insights uses, in this order:

1. ``<tenant folder>/taxonomy.yaml`` when the municipality keeps its own taxonomy there (only its
   codes, ``name_nl`` and ``name_en`` are read). It replaces the default, as it does for the
   classifier: its names are the ones the municipality chose;
2. ``topic_names.yaml`` beside this module: the names of the default taxonomy, generated once by
   ``services/insights/scripts/generate_topic_names.py`` (rerun it when the default taxonomy
   changes; a test checks that the two agree).

A code without a name (an old code, one a tenant's taxonomy gives no name) is left to the caller,
which shows it as the pages always did (:func:`civicsignals.insights.pages.humanise`). An English
page falls back to the Dutch name when a taxonomy has no ``name_en``.

Departments and areas are named by the tenant's own files, which the tenant registry has read
already: ``departments.yaml`` (each department's ``name``) and ``areas.geojson`` (each feature's
``name``, and ``district_name`` for its ``district``, since a signal without an area counts under
its district). These are the municipality's proper names, one per code, shown on Dutch and
English pages alike.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from babel import Locale

from civicsignals.common.tenants import Tenant

log = logging.getLogger(__name__)

NAMES_FILE = Path(__file__).with_name("topic_names.yaml")
LANGUAGES = ("nl", "en")

Names = dict[str, dict[str, str]]
"""Code (``topic`` or ``topic/subtopic``) to language to name; a language without a name is absent."""


def _names_of(entry: Mapping[str, Any]) -> dict[str, str]:
    """An entry's names by language: ``name_en`` falls back to ``name_nl``; blank names count as none."""
    dutch = str(entry.get("name_nl") or "").strip()
    english = str(entry.get("name_en") or "").strip() or dutch
    return {language: name for language, name in (("nl", dutch), ("en", english)) if name}


def names_from_taxonomy(taxonomy: Mapping[str, Any]) -> tuple[Names, Names]:
    """The (topic, subtopic) names of a taxonomy document; subtopics keyed ``topic/subtopic``.

    Only codes and names are read, so a taxonomy written for a newer classifier (other fields) still
    names its topics. Raises ``TypeError``/``KeyError``/``AttributeError`` on a document of the
    wrong shape, so that a broken file is noticed rather than read as a taxonomy without names.
    """
    if not isinstance(taxonomy.get("topics"), list):
        raise TypeError("a taxonomy has a list of 'topics'")
    topics: Names = {}
    subtopics: Names = {}
    for topic in taxonomy["topics"]:
        code = str(topic["code"])
        if names := _names_of(topic):
            topics[code] = names
        for subtopic in topic.get("subtopics") or []:
            if names := _names_of(subtopic):
                subtopics[f"{code}/{subtopic['code']}"] = names
    return topics, subtopics


class TopicNames:
    """One taxonomy's names of topics and subtopics; ``None`` for a code it does not name."""

    def __init__(self, topics: Names, subtopics: Names) -> None:
        self.topics = topics
        self.subtopics = subtopics
        # A subtopic shown without its topic (a filter chip, the "over time by subtopic" chart over
        # every topic) is found by its own code, when that code names one thing only.
        by_code: dict[str, list[dict[str, str]]] = {}
        for key, names in subtopics.items():
            by_code.setdefault(key.partition("/")[2], []).append(names)
        self._alone = {code: found[0] for code, found in by_code.items() if all(n == found[0] for n in found)}

    @classmethod
    def from_taxonomy(cls, taxonomy: Mapping[str, Any]) -> TopicNames:
        return cls(*names_from_taxonomy(taxonomy))

    def topic(self, code: str, language: str) -> str | None:
        return _pick(self.topics.get(code), language)

    def subtopic(self, code: str, language: str, topic: str | None = None) -> str | None:
        """The subtopic's name under ``topic``; without one, the name its code has in every topic."""
        if topic:
            return _pick(self.subtopics.get(f"{topic}/{code}"), language)
        return _pick(self._alone.get(code), language)


def _pick(names: Mapping[str, str] | None, language: str) -> str | None:
    if not names:
        return None
    return names.get(language) or names.get("nl")


def load_names_file(path: Path = NAMES_FILE) -> TopicNames:
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return TopicNames(
        {str(k): dict(v) for k, v in (document.get("topics") or {}).items()},
        {str(k): dict(v) for k, v in (document.get("subtopics") or {}).items()},
    )


@cache
def default_names() -> TopicNames:
    """The default taxonomy's names, read once per process (the file ships with the code)."""
    return load_names_file()


class NamesCache:
    """Each tenant's names: from its ``taxonomy.yaml`` when it has one, else the default.

    A tenant's file is read once and again only when it changes (its modification time), so a
    municipality that renames a topic sees the new name without a restart, as the classifier and
    the tenant registry do. A file that cannot be read as a taxonomy must not break the pages: a
    warning names the file once, and the default names stand in until the file changes.
    """

    def __init__(self, default: TopicNames | None = None) -> None:
        self.default = default or default_names()
        self._loaded: dict[str, tuple[int, TopicNames]] = {}

    def get(self, tenant: Tenant | None) -> TopicNames:
        if tenant is None:
            return self.default
        path = tenant.folder / "taxonomy.yaml"
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            self._loaded.pop(tenant.code, None)
            return self.default
        cached = self._loaded.get(tenant.code)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
            if not isinstance(document, Mapping):
                raise TypeError("a taxonomy is a mapping with a list of 'topics'")
            names = TopicNames.from_taxonomy(document)
        except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "tenant %s: %s has no usable topic names, the pages show the default ones: %s",
                tenant.code,
                path,
                exc,
            )
            names = self.default
        self._loaded[tenant.code] = (mtime, names)
        return names


@dataclass(frozen=True)
class PlaceNames:
    """A tenant's names of its departments and areas (districts included), by code; ``None`` for
    a code it does not name, which the pages then show as it is."""

    departments: Mapping[str, str] = field(default_factory=dict)
    areas: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_tenant(cls, tenant: Tenant | None) -> PlaceNames:
        """The names in a tenant's ``departments.yaml`` and ``areas.geojson`` (as the registry read
        them); entries without a name are left out. An area's own code wins over a district's."""
        if tenant is None:
            return cls()
        departments = {
            str(code): name
            for code, entry in tenant.departments.items()
            if isinstance(entry, Mapping) and (name := str(entry.get("name") or "").strip())
        }
        areas: dict[str, str] = {}
        districts: dict[str, str] = {}
        features = tenant.areas.get("features") if isinstance(tenant.areas, Mapping) else None
        for feature in features if isinstance(features, list) else []:
            properties = feature.get("properties") if isinstance(feature, Mapping) else None
            if not isinstance(properties, Mapping):
                continue
            if properties.get("code") and (name := str(properties.get("name") or "").strip()):
                areas[str(properties["code"])] = name
            if properties.get("district") and (name := str(properties.get("district_name") or "").strip()):
                districts.setdefault(str(properties["district"]), name)
        return cls(departments, {**districts, **areas})

    def department(self, code: str) -> str | None:
        return self.departments.get(code)

    def area(self, code: str) -> str | None:
        return self.areas.get(code)


_PLACES: dict[str, tuple[Tenant, PlaceNames]] = {}


def place_names(tenant: Tenant | None) -> PlaceNames:
    """The tenant's :class:`PlaceNames`, built once per loaded tenant: the registry replaces the
    :class:`Tenant` when a file of its folder changes, and so renamed places show at once."""
    if tenant is None:
        return PlaceNames()
    cached = _PLACES.get(tenant.code)
    if cached is not None and cached[0] is tenant:
        return cached[1]
    names = PlaceNames.from_tenant(tenant)
    _PLACES[tenant.code] = (tenant, names)
    return names


@cache
def _languages_in(page_language: str) -> Mapping[str, str]:
    return Locale.parse(page_language).languages


def language_name(code: str, page_language: str) -> str | None:
    """A language's name in the page's language from the Unicode CLDR (``tr``: "Turks" on a Dutch
    page, "Turkish" on an English one), for the languages portals declare beyond the classifier's
    ``nl``, ``en`` and ``other``; ``None`` for a code CLDR does not know."""
    name = _languages_in(page_language).get(code.lower())
    return name if isinstance(name, str) and name else None
