"""The Open311 service list and definitions, derived from a tenant's topic taxonomy.

One Open311 service per **subtopic**: ``service_code`` is the subtopic code, ``group`` the
topic's Dutch name, ``keywords`` the topic code and the English names. Intake must not import the
classifier, so it never reads the classifier's taxonomy at run time. It uses, in this order:

1. ``<tenant folder>/taxonomy.yaml`` when the municipality keeps its own taxonomy there;
2. ``services.yaml`` beside this module: the Open311 catalogue of the default taxonomy, generated
   once by ``services/intake/scripts/generate_open311_services.py`` (rerun it when the default
   taxonomy changes; a test checks that the two agree).

Topics about a person's own affairs (taxes, benefits, care, domestic violence, housing …) are not
Open311 services: Open311 lists requests publicly, and these are not public-space reports. A
taxonomy can override that per topic or subtopic with ``open311: true|false``.

Attributes (the service definition's extra fields) come from ``open311_attributes`` on a
subtopic in a tenant's taxonomy, else from :data:`DEFAULT_ATTRIBUTES`.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from civicsignals.common.tenants import Tenant

log = logging.getLogger(__name__)

SERVICES_FILE = Path(__file__).with_name("services.yaml")

PRIVATE_TOPICS = frozenset(
    {
        "ondermijning",
        "overlast-van-en-door-personen-of-groepen",
        "wonen",
        "burgerzaken",
        "belastingen",
        "parkeren-en-vergunningen",
        "zorg-en-welzijn",
        "werk-en-inkomen",
        "overlast-en-veiligheid",
        "dienstverlening",
    }
)
"""Topics that are not offered as Open311 services unless a taxonomy says ``open311: true``."""

Datatype = Literal["string", "number", "datetime", "text", "singlevaluelist", "multivaluelist"]


class AttributeValue(BaseModel):
    key: str
    name: str


class Attribute(BaseModel):
    variable: bool = True
    code: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    datatype: Datatype
    required: bool = False
    datatype_description: str | None = None
    order: int = Field(ge=1)
    description: str
    values: list[AttributeValue] = Field(default_factory=list)

    @model_validator(mode="after")
    def _lists_have_values(self) -> Attribute:
        if self.datatype in ("singlevaluelist", "multivaluelist") and not self.values:
            raise ValueError(f"attribute {self.code}: a {self.datatype} needs values")
        return self


class Service(BaseModel):
    service_code: str
    service_name: str
    description: str
    type: Literal["realtime", "batch", "blackbox"] = "realtime"
    keywords: str = ""
    group: str = ""
    attributes: list[Attribute] = Field(default_factory=list)

    @property
    def metadata(self) -> bool:
        return bool(self.attributes)


class Catalogue:
    def __init__(self, services: list[Service]) -> None:
        self.services = services
        self.by_code = {service.service_code: service for service in services}

    def get(self, code: str) -> Service | None:
        return self.by_code.get(code)


def _values(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"key": key, "name": name} for key, name in pairs]


DEFAULT_ATTRIBUTES: dict[str, list[dict[str, Any]]] = {
    "container": [
        {
            "code": "container_type",
            "datatype": "singlevaluelist",
            "required": True,
            "order": 1,
            "description": "Om welke container gaat het?",
            "values": _values(
                [
                    ("rest", "Restafval"),
                    ("glas", "Glas"),
                    ("papier", "Papier"),
                    ("gft", "GFT"),
                    ("textiel", "Textiel"),
                    ("plastic", "Plastic, metaal en drankenkartons"),
                ]
            ),
        }
    ],
    "dumping": [
        {
            "code": "what",
            "datatype": "multivaluelist",
            "required": False,
            "order": 1,
            "description": "Wat ligt er?",
            "values": _values(
                [
                    ("grofvuil", "Grofvuil of meubels"),
                    ("huisvuil", "Huisvuil"),
                    ("bouw", "Bouw- of sloopafval"),
                    ("snoei", "Snoeiafval"),
                    ("elektrisch", "Elektrische apparaten"),
                ]
            ),
        }
    ],
    "gevaarlijk-afval": [
        {
            "variable": False,
            "code": "warning",
            "datatype": "string",
            "required": False,
            "order": 1,
            "description": "Raak gevaarlijk afval niet aan. Bel bij direct gevaar 112.",
        }
    ],
    "straatverlichting": [
        {
            "code": "pole_number",
            "datatype": "string",
            "required": False,
            "order": 1,
            "datatype_description": "Het nummer op het plaatje aan de paal, bijv. 123-45",
            "description": "Nummer van de lantaarnpaal",
        },
        {
            "code": "since",
            "datatype": "datetime",
            "required": False,
            "order": 2,
            "description": "Sinds wanneer is het defect?",
        },
    ],
    "onderhoud-stoep-rijweg-parkeerplaats": [
        {
            "code": "depth_cm",
            "datatype": "number",
            "required": False,
            "order": 1,
            "datatype_description": "Een getal in centimeters",
            "description": "Hoe diep is het gat ongeveer?",
        }
    ],
    "put-riool-kapot": [
        {
            "code": "situation",
            "datatype": "text",
            "required": False,
            "order": 1,
            "description": "Beschrijf de situatie: is de put open, verzakt of verstopt?",
        }
    ],
}


def _included(entry: dict[str, Any], inherited: bool) -> bool:
    flag = entry.get("open311")
    return inherited if flag is None else bool(flag)


def services_from_taxonomy(taxonomy: dict[str, Any]) -> list[Service]:
    """One Open311 service per subtopic of the public-space topics of ``taxonomy``."""
    services: list[Service] = []
    for topic in taxonomy.get("topics") or []:
        topic_included = _included(topic, topic.get("code") not in PRIVATE_TOPICS)
        for subtopic in topic.get("subtopics") or []:
            if not _included(subtopic, topic_included):
                continue
            code = str(subtopic["code"])
            description = " ".join(
                str(subtopic.get("description_nl") or subtopic.get("name_nl") or "").split()
            )
            keywords = [
                str(topic["code"]),
                str(subtopic.get("name_en") or ""),
                str(topic.get("name_en") or ""),
            ]
            raw_attributes = subtopic.get("open311_attributes", DEFAULT_ATTRIBUTES.get(code, []))
            services.append(
                Service(
                    service_code=code,
                    service_name=str(subtopic.get("name_nl") or code),
                    description=description,
                    keywords=", ".join(k for k in keywords if k),
                    group=str(topic.get("name_nl") or topic["code"]),
                    attributes=[Attribute.model_validate(a) for a in raw_attributes],
                )
            )
    return services


def load_services_file(path: Path = SERVICES_FILE) -> Catalogue:
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return Catalogue([Service.model_validate(entry) for entry in document.get("services") or []])


class CatalogueCache:
    """Each tenant's catalogue, rebuilt when its ``taxonomy.yaml`` changes; the default otherwise.

    A taxonomy that fails to load is refused with a message naming the file, and the last good
    catalogue (or the default) stays in force.
    """

    def __init__(self) -> None:
        self.default = load_services_file()
        self._loaded: dict[str, tuple[float, Catalogue]] = {}

    def get(self, tenant: Tenant) -> Catalogue:
        path = tenant.folder / "taxonomy.yaml"
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return self.default
        cached = self._loaded.get(tenant.code)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            catalogue = Catalogue(services_from_taxonomy(document))
        except (OSError, yaml.YAMLError, ValidationError, KeyError, TypeError, AttributeError) as exc:
            log.error(
                "tenant %s: %s refused for Open311, keeping the last good one: %s", tenant.code, path, exc
            )
            fallback = cached[1] if cached is not None else self.default
            self._loaded[tenant.code] = (mtime, fallback)
            return fallback
        self._loaded[tenant.code] = (mtime, catalogue)
        return catalogue


class AttributeError311(ValueError):
    """An ``attribute[code]`` value that the service definition does not accept."""


def validate_attributes(service: Service, given: dict[str, list[str]]) -> dict[str, Any]:
    """Check posted attribute values against the service definition; returns the clean values.

    ``given`` maps a code to its values (one for ``attribute[code]``, any number for
    ``attribute[code][]``). Unknown codes are refused, so a typo does not silently drop data.
    """
    by_code = {attribute.code: attribute for attribute in service.attributes}
    clean: dict[str, Any] = {}
    for code in given:
        if code not in by_code:
            raise AttributeError311(
                f"attribute[{code}] is not an attribute of service {service.service_code}"
            )
    for attribute in sorted(service.attributes, key=lambda a: a.order):
        values = [v for v in given.get(attribute.code, []) if v != ""]
        if not attribute.variable:
            continue
        if not values:
            if attribute.required:
                raise AttributeError311(
                    f"attribute[{attribute.code}] is required for service {service.service_code}"
                )
            continue
        if attribute.datatype != "multivaluelist" and len(values) > 1:
            raise AttributeError311(f"attribute[{attribute.code}] takes one value")
        keys = {value.key for value in attribute.values}
        if attribute.datatype == "multivaluelist":
            unknown = [v for v in values if v not in keys]
            if unknown:
                raise AttributeError311(
                    f"attribute[{attribute.code}][] has unknown values: {', '.join(unknown)}"
                )
            clean[attribute.code] = values
            continue
        value = values[0]
        if attribute.datatype == "singlevaluelist" and value not in keys:
            raise AttributeError311(f"attribute[{attribute.code}] must be one of: {', '.join(sorted(keys))}")
        if attribute.datatype == "number":
            try:
                number = float(value)
            except ValueError:
                raise AttributeError311(f"attribute[{attribute.code}] must be a number") from None
            if not math.isfinite(number):  # float() reads nan, inf and 1e999, which no JSON column holds
                raise AttributeError311(f"attribute[{attribute.code}] must be a finite number")
            clean[attribute.code] = number
            continue
        if attribute.datatype == "datetime":
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise AttributeError311(
                    f"attribute[{attribute.code}] must be an ISO 8601 date and time"
                ) from None
        if attribute.datatype == "string" and ("\n" in value or "\r" in value):
            raise AttributeError311(f"attribute[{attribute.code}] must be one line")
        if len(value) > 4000:
            raise AttributeError311(f"attribute[{attribute.code}] is longer than 4,000 characters")
        clean[attribute.code] = value
    return clean
