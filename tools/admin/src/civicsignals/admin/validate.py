"""``civicsignals-admin validate``: every file of a tenant folder, and what routing makes of its rules.

The schemas and the references between files are checked by ``civicsignals.common.tenant_schemas``
(the same code every service runs when it loads a folder), in strict mode: a reference into a file
that does not exist counts, and so does a file that is no tenant file. The meaning of the rules
(conditions, priorities, SLAs) is routing's to judge: when routing is installed beside this tool,
its rule loader runs too and its complaints are reported with their lines.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from civicsignals.common.tenant_schemas import ConfigIssue, check_folder

_PROBLEM = re.compile(r"^(?P<file>.+?) line (?P<line>\d+): (?P<message>.*)$", re.DOTALL)


def tenant_folders(directory: Path) -> list[Path]:
    """``directory`` itself when it is a tenant folder, else every tenant folder inside it."""
    if (directory / "tenant.yaml").exists() or not directory.is_dir():
        return [directory]
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def routing_module() -> Any | None:
    """Routing's framework-free rules module, when installed (imported late: it evolves on its own)."""
    try:
        from civicsignals.routing import rules
    except ImportError:
        return None
    return rules


def load_ruleset(folder: Path) -> Any:
    """Routing's ``RuleSet`` of a folder; raises routing's ``RulesError`` when routing refuses it."""
    rules = routing_module()
    if rules is None:
        raise RuntimeError("civicsignals-routing is not installed, so rules cannot be evaluated")
    try:
        return rules.load_rules(folder)
    except (TypeError, AttributeError, IsADirectoryError):
        # An older routing took the file and the departments.
        return rules.load_rules(folder / "rules.yaml")


def routing_issues(folder: Path) -> list[ConfigIssue]:
    """Routing's own verdict on ``rules.yaml``, each problem with its line."""
    rules = routing_module()
    if rules is None or not (folder / "rules.yaml").exists():
        return []
    try:
        load_ruleset(folder)
    except rules.RulesError as exc:
        issues = []
        for problem in getattr(exc, "problems", None) or [str(exc)]:
            match = _PROBLEM.match(problem)
            if match:
                issues.append(ConfigIssue(Path(match["file"]), match["message"], int(match["line"])))
            else:
                issues.append(ConfigIssue(folder / "rules.yaml", problem.split(": ", 1)[-1]))
        return issues
    return []


def validate_tenant(folder: Path) -> list[ConfigIssue]:
    report = check_folder(folder, strict=True)
    issues = list(report.issues)
    if not any(issue.file.name == "rules.yaml" for issue in issues):
        seen = {(str(i.file), i.line, i.message) for i in issues}
        for issue in routing_issues(folder):
            # routing repeats what the cross-reference check already said; say it once
            if (str(issue.file), issue.line, issue.message) not in seen and not _same_reference(
                issue, issues
            ):
                issues.append(issue)
    return issues


def _same_reference(issue: ConfigIssue, issues: list[ConfigIssue]) -> bool:
    """Routing's "unknown department" on a line where the cross-reference check already complained."""
    return "unknown" in issue.message and any(
        other.file == issue.file and other.line == issue.line for other in issues
    )


def validate(directory: Path) -> dict[Path, list[ConfigIssue]]:
    """Issues per tenant folder; a root of several tenants also has its key ids checked for clashes."""
    folders = tenant_folders(directory)
    results = {folder: validate_tenant(folder) for folder in folders}
    if len(folders) > 1:
        owners: dict[str, list[Path]] = defaultdict(list)
        for folder in folders:
            report = check_folder(folder)
            for entry in report.data("keys.yaml", {}).get("keys") or []:
                owners[str(entry.get("id"))].append(folder)
        for key_id, places in owners.items():
            if len(places) > 1:
                for folder in places:
                    results[folder].append(
                        ConfigIssue(folder / "keys.yaml", f"key id {key_id} is also used by another tenant")
                    )
    return results
