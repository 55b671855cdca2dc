"""Load and validate a two-level topic taxonomy (topic -> subtopics) from YAML.

A taxonomy is tenant configuration kept as a file (DESIGN §3), so a broken one must be refused
with a message that names the file, the line and the problem, never with a bare pydantic or
PyYAML traceback. Codes are what models, routing rules and events refer to; they are validated
strictly (lowercase ``[a-z0-9-]``) and must be unique, so that a ``topic/subtopic`` label is
unambiguous.

The models accept exactly what the tenant schema (``civicsignals/common/schemas/taxonomy.schema.json``)
accepts, so that ``civicsignals-admin validate`` refuses every file the classifier cannot use and
no other: only codes are required. Everything else has a default the cold-start model can train
on: a missing (or blank) ``name_nl`` is the code in words, a missing ``name_en`` is ``name_nl``,
a missing description is none, a topic without subtopics is one class whose subtopic code is the
topic's own code, and a missing ``version`` is ``"tenant"``. Fields the classifier does not know
are ignored, because the same file carries other services' settings (intake's ``open311``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError, model_validator

__all__ = [
    "CODE_PATTERN",
    "DEFAULT_TAXONOMY_PATH",
    "DEFAULT_VERSION",
    "LABEL_SEPARATOR",
    "Subtopic",
    "Taxonomy",
    "TaxonomyError",
    "Topic",
    "label_key",
    "load_taxonomy",
    "parse_taxonomy",
    "split_label",
    "taxonomy_from_data",
]

#: The taxonomy shipped with the classifier (public space after Amsterdam + the rest of a municipality).
DEFAULT_TAXONOMY_PATH = Path(__file__).with_name("default.yaml")

#: Lowercase words of ``[a-z0-9]`` joined by single hyphens: the tenant/department code rule of DESIGN §2,
#: minus leading, trailing or doubled hyphens, which only ever arise from typos.
CODE_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"

#: Separates topic and subtopic in a flat label string (``"afval/container"``). Codes cannot contain it.
LABEL_SEPARATOR = "/"

#: A subtopic's example reports in one language: ``examples_nl``, ``examples_en``, ``examples_tr`` ...
EXAMPLES_KEY = re.compile(r"examples_([a-z]{2,3})")
Code = Annotated[str, StringConstraints(pattern=CODE_PATTERN, min_length=1, max_length=64)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
#: Text that may be empty (a description that was left out).
OptionalText = Annotated[str, StringConstraints(strip_whitespace=True)]

#: The version of a taxonomy file that has none (the tenant schema does not require one).
DEFAULT_VERSION = "tenant"


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _with_defaults(data: Any) -> Any:
    """Fill in the names and description a topic or subtopic left out (see the module's docstring).

    Only absent, null or blank values are filled; a value of the wrong type is left for the
    field's own validation to refuse. Nothing is filled without a usable code, so a missing code
    is reported once, not together with the names that would have been derived from it.
    """
    if not isinstance(data, dict):
        return data
    data = dict(data)
    code = data.get("code")
    if _blank(data.get("name_nl")) and isinstance(code, str) and code.strip():
        data["name_nl"] = code.strip().replace("-", " ")
    if _blank(data.get("name_en")) and isinstance(data.get("name_nl"), str):
        data["name_en"] = data["name_nl"]
    if data.get("description_nl") is None:
        data["description_nl"] = ""
    return data


def label_key(topic: str, subtopic: str) -> str:
    """Return the flat label string ``topic/subtopic`` used as a class name by the models."""
    return f"{topic}{LABEL_SEPARATOR}{subtopic}"


def split_label(label: str) -> tuple[str, str]:
    """Split a ``topic/subtopic`` label string; raise ``ValueError`` when it is not one."""
    topic, sep, subtopic = label.partition(LABEL_SEPARATOR)
    if not sep or not topic or not subtopic or LABEL_SEPARATOR in subtopic:
        raise ValueError(f"label {label!r} is not of the form 'topic{LABEL_SEPARATOR}subtopic'")
    return topic, subtopic


class Subtopic(BaseModel):
    """A leaf of the taxonomy: the unit a model predicts and a routing rule matches."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    code: Code
    #: Defaults to the code in words (``"put-riool"`` -> ``"put riool"``); never empty once valid.
    name_nl: Text = ""
    #: Defaults to ``name_nl``.
    name_en: Text = ""
    #: Optional: empty when the file gives none.
    description_nl: OptionalText = ""
    #: Example reports per language, from the file's ``examples_<language>`` keys (``examples_nl``,
    #: ``examples_en``, ``examples_tr``, ...): training data for the cold-start model besides names
    #: and description, so that a report in any of those languages finds its subtopic from day one.
    examples: dict[str, tuple[Text, ...]] = {}
    #: The name of this category in the scheme it was taken from (e.g. Amsterdam's), for traceability.
    source_name: str | None = None

    @property
    def examples_nl(self) -> tuple[str, ...]:
        return self.examples.get("nl", ())

    @property
    def examples_en(self) -> tuple[str, ...]:
        return self.examples.get("en", ())

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        data = _with_defaults(data)
        if not isinstance(data, dict) or "examples" in data:
            return data
        by_language: dict[str, Any] = {}
        for key, examples in data.items():
            language = EXAMPLES_KEY.fullmatch(str(key))
            if language is None:
                continue
            if examples is None:
                by_language[language.group(1)] = ()
            elif isinstance(examples, list | tuple):  # blank examples teach nothing: left out
                by_language[language.group(1)] = tuple(
                    e for e in examples if not (isinstance(e, str) and not e.strip())
                )
            else:
                by_language[language.group(1)] = examples  # not a list: refused, naming the key
        return {**data, "examples": by_language}


class Topic(BaseModel):
    """A main topic grouping subtopics; dashboards and coarse routing work at this level."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    code: Code
    name_nl: Text = ""
    name_en: Text = ""
    description_nl: OptionalText = ""
    #: Never empty once valid: a topic the file gives no subtopics is one class, see :meth:`_defaults`.
    subtopics: tuple[Subtopic, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        data = _with_defaults(data)
        if isinstance(data, dict) and data.get("subtopics") in (None, []):
            # A topic without subtopics (routing rules need only topic codes) is still something a
            # model can predict: one class, ``<topic>/<topic>``, named and described like the topic.
            code = data.get("code")
            if isinstance(code, str):
                data["subtopics"] = [
                    {
                        "code": code,
                        "name_nl": data.get("name_nl"),
                        "name_en": data.get("name_en"),
                        "description_nl": data.get("description_nl"),
                    }
                ]
        return data

    @model_validator(mode="after")
    def _unique_subtopics(self) -> Topic:
        _check_unique([s.code for s in self.subtopics], "subtopic code", f" in topic {self.code!r}")
        return self

    def subtopic(self, code: str) -> Subtopic:
        """Return the subtopic with this code; ``KeyError`` if there is none."""
        for sub in self.subtopics:
            if sub.code == code:
                return sub
        raise KeyError(f"topic {self.code!r} has no subtopic {code!r}")


class Taxonomy(BaseModel):
    """A validated two-level taxonomy. Build it with :func:`load_taxonomy` or :func:`parse_taxonomy`."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    #: Free-form version of the taxonomy file (a number is read as text); it is copied into model
    #: cards. :data:`DEFAULT_VERSION` when the file has none.
    version: Text = DEFAULT_VERSION
    topics: tuple[Topic, ...]

    @model_validator(mode="before")
    @classmethod
    def _version(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        version = data.get("version")
        if _blank(version):
            data["version"] = DEFAULT_VERSION
        elif isinstance(version, float) and version.is_integer():  # JSON Schema's "integer" takes 2.0
            data["version"] = str(int(version))
        elif isinstance(version, int) and not isinstance(version, bool):
            data["version"] = str(version)
        return data

    @model_validator(mode="after")
    def _unique_topics(self) -> Taxonomy:
        if not self.topics:
            raise ValueError("the taxonomy has no topics; it needs at least one")
        _check_unique([t.code for t in self.topics], "topic code")
        return self

    def labels(self) -> list[tuple[str, str]]:
        """All ``(topic, subtopic)`` code pairs, in file order (the class order of a cold-start model)."""
        return [(t.code, s.code) for t in self.topics for s in t.subtopics]

    def topic(self, code: str) -> Topic:
        """Return the topic with this code; ``KeyError`` if there is none."""
        for topic in self.topics:
            if topic.code == code:
                return topic
        raise KeyError(f"taxonomy has no topic {code!r}")

    def subtopic(self, topic: str, subtopic: str) -> Subtopic:
        """Return a subtopic by its topic and subtopic codes; ``KeyError`` if there is none."""
        return self.topic(topic).subtopic(subtopic)

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON of the taxonomy: identifies it in model cards whatever the YAML layout."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _check_unique(codes: Sequence[str], what: str, where: str = "") -> None:
    seen: dict[str, int] = {}
    for index, code in enumerate(codes):
        if code in seen:
            raise ValueError(f"duplicate {what} {code!r}{where} (entries {seen[code]} and {index})")
        seen[code] = index


class TaxonomyError(ValueError):
    """A taxonomy file cannot be read, parsed or validated.

    ``str(error)`` names the file and lists every problem (with its line when known);
    ``problems`` holds the same lines for callers that render them differently.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        listing = "\n".join(f"  - {p}" for p in self.problems)
        count = f"{len(self.problems)} problem" + ("s" if len(self.problems) != 1 else "")
        super().__init__(f"invalid taxonomy {source}: {count}\n{listing}")


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate mapping keys instead of silently keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Hashable] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node, deep=deep))


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_taxonomy(path: Path | None = None) -> Taxonomy:
    """Load and validate a taxonomy file; the default taxonomy when ``path`` is None.

    Raises :class:`TaxonomyError` naming the file and each problem (with its line) when the file
    cannot be read, is not valid YAML, or does not describe a valid taxonomy.
    """
    path = DEFAULT_TAXONOMY_PATH if path is None else Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaxonomyError(str(path), [f"cannot read the file: {exc}"]) from exc
    return parse_taxonomy(text, source=str(path))


def parse_taxonomy(text: str, *, source: str = "<string>") -> Taxonomy:
    """Validate taxonomy YAML given as text; ``source`` names it in error messages.

    For callers (such as a tenant-configuration loader) that have read the file themselves.
    """
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.YAMLError as exc:
        raise TaxonomyError(source, [_describe_yaml_error(exc)]) from exc
    return taxonomy_from_data(data, source=source, text=text)


def taxonomy_from_data(data: Any, *, source: str = "<data>", text: str | None = None) -> Taxonomy:
    """Validate a taxonomy already parsed from YAML (a tenant folder's ``taxonomy.yaml`` as the
    tenant registry holds it); ``text``, when given, adds the line of each problem.

    Raises :class:`TaxonomyError` naming ``source`` and each field that is wrong.
    """
    if not isinstance(data, dict):
        raise TaxonomyError(source, ["the top level must be a mapping with 'version' and 'topics'"])
    try:
        return Taxonomy.model_validate(data)
    except ValidationError as exc:
        root = yaml.compose(text, Loader=yaml.SafeLoader) if text is not None else None
        problems = []
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            where = _format_loc(loc)
            line = _line_of(root, loc)
            message = _describe_error(error["type"], str(error["msg"]), error.get("input"))
            prefix = f"line {line}: " if line is not None else ""
            problems.append(f"{prefix}{where}: {message}" if where else f"{prefix}{message}")
        raise TaxonomyError(source, problems) from exc


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"line {mark.line + 1}: not valid YAML: {problem}"
    return f"not valid YAML: {problem}"


def _describe_error(kind: str, message: str, value: object) -> str:
    if kind == "string_pattern_mismatch":
        return f"{value!r} is not a valid code: use lowercase letters, digits and single hyphens ([a-z0-9-])"
    if kind == "extra_forbidden":
        return "unknown field (a typo?)"
    return message.removeprefix("Value error, ")


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc``, or of its nearest existing ancestor."""
    if node is None:
        return None
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                    child = value_node
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node = child
    return int(node.start_mark.line) + 1
