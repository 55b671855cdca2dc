"""Validation of a tenant folder: a JSON Schema per file, then the references between files.

Every file a municipality versions in its tenant folder (DESIGN §3) has a JSON Schema in
``schemas/`` beside this module. A file that does not fit is refused with the file, the line and
a JSON pointer to the offending value, so whoever edited it can find the mistake without reading
a traceback. Line numbers come from the YAML parser's node marks: the document is composed once
into a node tree, and the pointer of each schema error is walked down that tree.

Checks across files (a rule naming a department that ``departments.yaml`` does not have, a key
bound to an unknown department, a template in a language the tenant does not speak) follow the
schema checks. A service loading a folder runs them only against files that exist; the admin
command's ``validate`` (``strict=True``) also wants the files the references point into.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

#: The files of a tenant folder and the schema each is checked against.
TENANT_FILES: dict[str, str] = {
    "tenant.yaml": "tenant",
    "departments.yaml": "departments",
    "partners.yaml": "partners",
    "areas.geojson": "areas",
    "taxonomy.yaml": "taxonomy",
    "rules.yaml": "rules",
    "keys.yaml": "keys",
}
REQUIRED_FILES = ("tenant.yaml",)
TEMPLATES_DIR = "templates"
#: ``<template>.<language>.<txt|html>``, as the notifier looks them up.
TEMPLATE_NAME = re.compile(r"^(?P<name>[a-z0-9_-]+)\.(?P<lang>[a-z]{2,3})\.(?P<ext>txt|html)$")


class TenantConfigError(ValueError):
    """A tenant file is missing or invalid; the message names the file (and the line when known)."""

    def __init__(self, message: str, issues: list[ConfigIssue] | None = None) -> None:
        super().__init__(message)
        self.issues = issues or []


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in one file: where it is (line, JSON pointer) and what is wrong."""

    file: Path
    message: str
    line: int | None = None
    pointer: str = ""

    def __str__(self) -> str:
        where = f"{self.file} line {self.line}" if self.line else str(self.file)
        at = f" (at {self.pointer})" if self.pointer else ""
        return f"{where}: {self.message}{at}"


@dataclass
class Document:
    """A parsed tenant file with the node tree that maps JSON pointers to lines."""

    path: Path
    data: Any
    root: yaml.Node | None = None

    def line(self, path: Iterable[Any]) -> int | None:
        """The 1-based line of the value at ``path`` (keys and indices), or of its nearest parent."""
        node = self.root
        if node is None:
            return None
        for part in path:
            child: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                        child = value
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                child = node.value[part]
            if child is None:
                break
            node = child
        return node.start_mark.line + 1

    def issue(self, message: str, path: Iterable[Any] = ()) -> ConfigIssue:
        parts = list(path)
        return ConfigIssue(self.path, message, self.line(parts), json_pointer(parts))


@dataclass
class FolderReport:
    """What ``check_folder`` found: the parsed documents by file name and every issue."""

    folder: Path
    documents: dict[str, Document] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues

    def data(self, name: str, default: Any = None) -> Any:
        document = self.documents.get(name)
        return default if document is None or document.data is None else document.data

    def raise_for_issues(self) -> None:
        if self.issues:
            shown = "; ".join(str(issue) for issue in self.issues[:5])
            more = f" (and {len(self.issues) - 5} more)" if len(self.issues) > 5 else ""
            raise TenantConfigError(shown + more, self.issues)


def json_pointer(path: Iterable[Any]) -> str:
    parts = [str(part).replace("~", "~0").replace("/", "~1") for part in path]
    return "/" + "/".join(parts) if parts else ""


@cache
def schema(kind: str) -> dict[str, Any]:
    """The JSON Schema of one kind of tenant file (``tenant``, ``rules`` …)."""
    text = (
        resources.files("civicsignals.common").joinpath("schemas", f"{kind}.schema.json").read_text("utf-8")
    )
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator(schema(kind))


def parse_document(path: Path) -> tuple[Document | None, list[ConfigIssue]]:
    """Read a YAML (or JSON) file with its node tree; a syntax error is an issue with its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, []
    except (OSError, UnicodeDecodeError) as exc:
        return None, [ConfigIssue(path, f"cannot be read: {exc}")]
    try:
        data = json.loads(text) if path.suffix in (".json", ".geojson") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        return None, [ConfigIssue(path, f"not valid JSON: {exc.msg}", exc.lineno)]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        return None, [ConfigIssue(path, f"not valid YAML: {getattr(exc, 'problem', None) or exc}", line)]
    try:
        # JSON is YAML's flow style, so one composer gives lines for both.
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None
    return Document(path, data, root), []


def _schema_message(error: ValidationError) -> str:
    if error.validator == "pattern":
        return f"{error.instance!r} does not have the expected form ({error.validator_value})"
    if error.validator == "oneOf" and isinstance(error.instance, dict | list):
        return "does not match any of the allowed forms"
    return error.message


def check_document(document: Document, kind: str) -> list[ConfigIssue]:
    """Schema issues of one parsed file, each with its line and JSON pointer, in file order."""
    errors = sorted(
        _validator(kind).iter_errors(document.data), key=lambda e: list(map(str, e.absolute_path))
    )
    issues = [document.issue(_schema_message(error), error.absolute_path) for error in errors]
    return sorted(issues, key=lambda issue: issue.line or 0)


def check_file(path: Path, kind: str | None = None) -> tuple[Document | None, list[ConfigIssue]]:
    """Parse and schema-check one file; the kind follows from the file name unless given."""
    kind = kind or TENANT_FILES.get(path.name)
    if kind is None:
        return None, [ConfigIssue(path, "is not a known tenant file")]
    document, issues = parse_document(path)
    if document is None:
        return None, issues
    if document.data is None and kind != "tenant":
        return document, []  # an empty file means "none yet"
    issues = check_document(document, kind)
    if kind == "taxonomy" and not issues:
        issues = taxonomy_issues(document)
    return document, issues


def taxonomy_issues(document: Document) -> list[ConfigIssue]:
    """What the taxonomy schema cannot say but the classifier needs: every ``topic/subtopic``
    label names one class, so topic codes are unique in the file and subtopic codes within their
    topic; and a key is not given twice in one mapping (YAML would keep the last one silently)."""
    issues = _duplicate_keys(document)
    topics = document.data.get("topics") or []
    seen_topics: dict[str, int] = {}
    for index, topic in enumerate(topics):
        code = topic["code"]
        if code in seen_topics:
            issues.append(
                document.issue(
                    f"topic code {code!r} is listed twice (also topic {seen_topics[code]})",
                    ["topics", index, "code"],
                )
            )
        seen_topics.setdefault(code, index)
        seen_subtopics: dict[str, int] = {}
        for position, subtopic in enumerate(topic.get("subtopics") or []):
            sub = subtopic["code"]
            if sub in seen_subtopics:
                issues.append(
                    document.issue(
                        f"subtopic code {sub!r} is listed twice in topic {code!r}",
                        ["topics", index, "subtopics", position, "code"],
                    )
                )
            seen_subtopics.setdefault(sub, position)
    return sorted(issues, key=lambda issue: issue.line or 0)


def _duplicate_keys(document: Document) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    pending: list[yaml.Node] = [document.root] if document.root is not None else []
    while pending:
        node = pending.pop()
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in keys:
                        issues.append(
                            ConfigIssue(
                                document.path, f"key {key.value!r} is given twice", key.start_mark.line + 1
                            )
                        )
                    keys.add(key.value)
                pending.append(value)
        elif isinstance(node, yaml.SequenceNode):
            pending.extend(node.value)
    return issues


def check_folder(folder: Path, *, strict: bool = False) -> FolderReport:
    """Every file of a tenant folder against its schema, then the references between files.

    ``strict`` (the admin command) also reports references into files that do not exist, and
    files that are no tenant file at all (a typo in a file name would otherwise go unnoticed).
    """
    report = FolderReport(folder)
    if not folder.is_dir():
        report.issues.append(ConfigIssue(folder, "is not a folder"))
        return report
    if not re.fullmatch(r"[a-z0-9-]{1,63}", folder.name):
        report.issues.append(
            ConfigIssue(folder, "a tenant folder's name must be lowercase letters, digits and dashes")
        )
    for name in REQUIRED_FILES:
        if not (folder / name).is_file():
            report.issues.append(ConfigIssue(folder / name, "is missing"))
    for name, kind in TENANT_FILES.items():
        path = folder / name
        if not path.is_file():
            continue
        document, issues = check_file(path, kind)
        report.issues.extend(issues)
        if document is not None and not issues:
            report.documents[name] = document
    if strict:
        known = {*TENANT_FILES, TEMPLATES_DIR}
        for path in sorted(folder.iterdir()):
            if path.name not in known and not path.name.startswith(".") and not path.name.endswith(".md"):
                report.issues.append(ConfigIssue(path, "is not a known tenant file"))
    report.issues.extend(_cross_references(report, strict=strict))
    report.issues.extend(_check_templates(folder, report))
    return report


def _codes(
    report: FolderReport, name: str, key: str, field_name: str = "code"
) -> tuple[set[str], list[ConfigIssue]]:
    """The codes listed in one file, and an issue for each code listed twice."""
    document = report.documents.get(name)
    codes: set[str] = set()
    issues: list[ConfigIssue] = []
    if document is None:
        return codes, issues
    for index, entry in enumerate((document.data or {}).get(key) or []):
        code = str(entry.get(field_name))
        if code in codes:
            issues.append(document.issue(f"{field_name} {code!r} is listed twice", [key, index, field_name]))
        codes.add(code)
    return codes, issues


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(item) for item in value if not isinstance(item, dict | list)] + [
            str(item.get("code") or item.get("id")) for item in value if isinstance(item, dict)
        ]
    return []


def rule_references(rules: Any) -> Iterator[tuple[list[Any], str, str]]:
    """Every (path, kind, code) a rules document refers to: kind is ``department`` or ``partner``."""
    if not isinstance(rules, dict):
        return
    actions: list[tuple[list[Any], Any]] = [(["triage"], rules.get("triage"))]
    actions += [
        (["rules", i, "then"], r.get("then"))
        for i, r in enumerate(rules.get("rules") or [])
        if isinstance(r, dict)
    ]
    for path, action in actions:
        if not isinstance(action, dict):
            continue
        if isinstance(action.get("responsible"), str):
            yield [*path, "responsible"], "department", action["responsible"]
        for index, code in enumerate(_as_list(action.get("informed"))):
            yield [*path, "informed", index], "department", code
        for index, code in enumerate(_as_list(action.get("partners"))):
            yield [*path, "partners", index], "partner", code


def _cross_references(report: FolderReport, *, strict: bool) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    departments, dup = _codes(report, "departments.yaml", "departments")
    issues += dup
    partners, dup = _codes(report, "partners.yaml", "partners")
    issues += dup
    _, dup = _codes(report, "keys.yaml", "keys", "id")
    issues += dup
    areas_doc = report.documents.get("areas.geojson")
    if areas_doc is not None:
        seen: set[str] = set()
        for index, feature in enumerate(areas_doc.data.get("features") or []):
            code = str(feature["properties"]["code"])
            if code in seen:
                issues.append(
                    areas_doc.issue(
                        f"area {code!r} is listed twice", ["features", index, "properties", "code"]
                    )
                )
            seen.add(code)
    has_departments = "departments.yaml" in report.documents
    has_partners = "partners.yaml" in report.documents

    def known(kind: str, code: str) -> bool | None:
        if kind == "department":
            return code in departments if has_departments or strict else None
        return code in partners if has_partners or strict else None

    rules_doc = report.documents.get("rules.yaml")
    if rules_doc is not None:
        ids: set[str] = set()
        for index, rule in enumerate(rules_doc.data.get("rules") or []):
            rule_id = str(rule.get("id"))
            if rule_id in ids:
                issues.append(rules_doc.issue(f"rule id {rule_id!r} is used twice", ["rules", index, "id"]))
            ids.add(rule_id)
        for path, kind, code in rule_references(rules_doc.data):
            if known(kind, code) is False:
                source = "departments.yaml" if kind == "department" else "partners.yaml"
                issues.append(rules_doc.issue(f"names {kind} {code!r}, which {source} does not list", path))
    keys_doc = report.documents.get("keys.yaml")
    if keys_doc is not None:
        for index, entry in enumerate(keys_doc.data.get("keys") or []):
            for position, code in enumerate(entry.get("departments") or []):
                if known("department", code) is False:
                    issues.append(
                        keys_doc.issue(
                            f"binds the key to department {code!r}, which departments.yaml does not list",
                            ["keys", index, "departments", position],
                        )
                    )
            for position, scope in enumerate(entry.get("scopes") or []):
                if scope.startswith("partner:") and known("partner", scope[8:]) is False:
                    issues.append(
                        keys_doc.issue(
                            f"scope {scope!r} names a partner partners.yaml does not list",
                            ["keys", index, "scopes", position],
                        )
                    )
    tenant_doc = report.documents.get("tenant.yaml")
    oidc = (
        tenant_doc.data.get("oidc") if tenant_doc is not None and isinstance(tenant_doc.data, dict) else None
    )
    if isinstance(oidc, dict):
        for group, codes in (oidc.get("group_departments") or {}).items():
            for position, code in enumerate(codes):
                if known("department", code) is False:
                    issues.append(
                        tenant_doc.issue(  # type: ignore[union-attr]
                            f"maps group {group!r} to department {code!r}, which departments.yaml does not list",
                            ["oidc", "group_departments", group, position],
                        )
                    )
    return issues


def _check_templates(folder: Path, report: FolderReport) -> list[ConfigIssue]:
    """Template files are named ``<name>.<language>.<txt|html>``; with Jinja at hand, they must parse."""
    directory = folder / TEMPLATES_DIR
    if not directory.is_dir():
        return []
    issues: list[ConfigIssue] = []
    tenant = report.data("tenant.yaml", {})
    languages = set(tenant.get("languages") or []) if isinstance(tenant, dict) else set()
    try:
        import jinja2
    except ImportError:  # pragma: no cover - every service that renders templates has Jinja
        jinja2 = None  # type: ignore[assignment]
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        match = TEMPLATE_NAME.fullmatch(path.name)
        if match is None:
            issues.append(
                ConfigIssue(path, "a template is named <name>.<language>.txt or <name>.<language>.html")
            )
            continue
        if languages and match["lang"] not in languages:
            issues.append(
                ConfigIssue(path, f"is in language {match['lang']!r}, which tenant.yaml does not list")
            )
        if jinja2 is not None:
            try:
                jinja2.Environment(autoescape=True).parse(path.read_text(encoding="utf-8"))
            except jinja2.TemplateSyntaxError as exc:
                issues.append(ConfigIssue(path, f"template syntax: {exc.message}", exc.lineno))
            except UnicodeDecodeError:
                issues.append(ConfigIssue(path, "is not UTF-8 text"))
    return issues
