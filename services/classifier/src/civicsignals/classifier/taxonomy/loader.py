"""Load and validate a two-level topic taxonomy (topic -> subtopics) from YAML.

A taxonomy is tenant configuration kept as a file (DESIGN §3), so a broken one must be refused
with a message that names the file, the line and the problem, never with a bare pydantic or
PyYAML traceback. Codes are what models, routing rules and events refer to; they are validated
strictly (lowercase ``[a-z0-9-]``) and must be unique, so that a ``topic/subtopic`` label is
unambiguous.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError, model_validator

__all__ = [
    "CODE_PATTERN",
    "DEFAULT_TAXONOMY_PATH",
    "LABEL_SEPARATOR",
    "Subtopic",
    "Taxonomy",
    "TaxonomyError",
    "Topic",
    "label_key",
    "load_taxonomy",
    "parse_taxonomy",
    "split_label",
]

#: The taxonomy shipped with the classifier (public space after Amsterdam + the rest of a municipality).
DEFAULT_TAXONOMY_PATH = Path(__file__).with_name("default.yaml")

#: Lowercase words of ``[a-z0-9]`` joined by single hyphens: the tenant/department code rule of DESIGN §2,
#: minus leading, trailing or doubled hyphens, which only ever arise from typos.
CODE_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"

#: Separates topic and subtopic in a flat label string (``"afval/container"``). Codes cannot contain it.
LABEL_SEPARATOR = "/"

Code = Annotated[str, StringConstraints(pattern=CODE_PATTERN, min_length=1, max_length=64)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


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

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: Code
    name_nl: Text
    name_en: Text
    description_nl: Text
    #: Example reports; training data for the cold-start model besides names and description.
    examples_nl: tuple[Text, ...] = ()
    #: The name of this category in the scheme it was taken from (e.g. Amsterdam's), for traceability.
    source_name: str | None = None


class Topic(BaseModel):
    """A main topic grouping subtopics; dashboards and coarse routing work at this level."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: Code
    name_nl: Text
    name_en: Text
    description_nl: Text
    subtopics: tuple[Subtopic, ...]

    @model_validator(mode="after")
    def _unique_subtopics(self) -> Topic:
        # Checked here rather than with Field(min_length=1): pydantic would also report "too short"
        # for a list whose items merely failed validation, a confusing extra problem.
        if not self.subtopics:
            raise ValueError(f"topic {self.code!r} has no subtopics; it needs at least one")
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

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Free-form version of the taxonomy file; it is copied into model cards.
    version: Text
    topics: tuple[Topic, ...]

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
    if not isinstance(data, dict):
        raise TaxonomyError(source, ["the top level must be a mapping with 'version' and 'topics'"])
    try:
        return Taxonomy.model_validate(data)
    except ValidationError as exc:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
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
