"""``civicsignals-admin diff``: what applying a changed tenant folder would do.

It compares a proposed folder with the one in force: departments, partners, areas, rules, keys,
settings and templates added, removed or changed, and then routes a sample of signals through
both rule sets and lists those that would now go elsewhere (another rule, responsible department,
informed departments or partners).

The sample is routed with routing's own framework-free rules module (imported here, as this is a
tool and not a service), so the answer is exactly what routing would decide; a sample file may be
given, otherwise one is made from every topic, kind and channel the rules mention.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from civicsignals.admin.validate import load_ruleset, routing_module
from civicsignals.common.events import CHANNELS, KINDS
from civicsignals.common.tenant_schemas import FolderReport, check_folder

FIXED_TIME = datetime(2026, 1, 7, 10, 0, tzinfo=UTC)  # a Wednesday morning: office hours, no holiday


@dataclass(frozen=True)
class Change:
    what: str  # department, partner, area, rule, key, setting, template
    change: str  # added, removed, changed, moved, revoked
    name: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.what} {self.change}: {self.name}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Rerouted:
    signal: dict[str, Any]
    before: dict[str, Any]
    after: dict[str, Any]

    def __str__(self) -> str:
        facts = ", ".join(f"{k}={v}" for k, v in self.signal.items() if v not in (None, False))
        return f"{facts}: {outcome(self.before)} -> {outcome(self.after)}"


def outcome(route: dict[str, Any]) -> str:
    text = f"{route['responsible']} (rule {route['rule_id']})"
    if route.get("informed"):
        text += f", informed {','.join(route['informed'])}"
    if route.get("partners"):
        text += f", partners {','.join(route['partners'])}"
    return text


@dataclass
class DiffReport:
    current: Path | None
    proposed: Path
    changes: list[Change] = field(default_factory=list)
    rerouted: list[Rerouted] = field(default_factory=list)
    sample_size: int = 0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "current": str(self.current) if self.current else None,
            "proposed": str(self.proposed),
            "changes": [dataclasses.asdict(c) for c in self.changes],
            "sample_size": self.sample_size,
            "rerouted": [dataclasses.asdict(r) for r in self.rerouted],
            "notes": self.notes,
        }


def _by_code(report: FolderReport | None, name: str, key: str, ident: str = "code") -> dict[str, Any]:
    if report is None:
        return {}
    return {str(e.get(ident)): e for e in report.data(name, {}).get(key) or [] if isinstance(e, dict)}


def _compare(what: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    changes = [Change(what, "added", code) for code in sorted(set(new) - set(old))]
    changes += [Change(what, "removed", code) for code in sorted(set(old) - set(new))]
    changes += [
        Change(what, "changed", code) for code in sorted(set(old) & set(new)) if old[code] != new[code]
    ]
    return changes


def _areas(report: FolderReport | None) -> dict[str, Any]:
    data = report.data("areas.geojson", {}) if report is not None else {}
    return {str(f["properties"]["code"]): f for f in data.get("features") or []}


def _templates(folder: Path | None) -> dict[str, bytes]:
    if folder is None or not (folder / "templates").is_dir():
        return {}
    base = folder / "templates"
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def _key_changes(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    changes = [
        Change("key", "added", k, ",".join(new[k].get("scopes") or [])) for k in sorted(set(new) - set(old))
    ]
    changes += [Change("key", "removed", k) for k in sorted(set(old) - set(new))]
    for key_id in sorted(set(old) & set(new)):
        if new[key_id].get("revoked") and not old[key_id].get("revoked"):
            changes.append(Change("key", "revoked", key_id))
        elif old[key_id] != new[key_id]:
            changes.append(Change("key", "changed", key_id))
    return changes


def _rule_changes(old_raw: Any, new_raw: Any) -> list[Change]:
    def rules_of(raw: Any) -> list[dict[str, Any]]:
        return (
            [r for r in (raw or {}).get("rules") or [] if isinstance(r, dict)]
            if isinstance(raw, dict)
            else []
        )

    old_rules, new_rules = rules_of(old_raw), rules_of(new_raw)
    old = {str(r.get("id")): r for r in old_rules}
    new = {str(r.get("id")): r for r in new_rules}
    changes = _compare("rule", old, new)
    old_order = [i for i in old if i in new]
    new_order = [i for i in new if i in old]
    if old_order != new_order:
        moved = [rule_id for a, rule_id in zip(old_order, new_order, strict=True) if a != rule_id]
        changes += [
            Change("rule", "moved", rule_id, "its position among the rules changed") for rule_id in moved
        ]
    for part in ("triage", "office_hours", "holidays", "escalation", "timezone", "version"):
        before = old_raw.get(part) if isinstance(old_raw, dict) else None
        after = new_raw.get(part) if isinstance(new_raw, dict) else None
        if before != after:
            changes.append(Change("rules", "changed", part))
    return changes


def _codes(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(item) for item in value if isinstance(item, str | int)]
    return []


def default_sample(*rule_documents: Any, topics: set[str] | None = None) -> list[dict[str, Any]]:
    """Every topic the rules (or the taxonomy) name, plus one they do not, in every kind, on every
    channel the rules name (or web), sure and unsure."""
    named_topics: set[str] = set(topics or ())
    channels: set[str] = set()
    for raw in rule_documents:
        for rule in (raw or {}).get("rules") or [] if isinstance(raw, dict) else []:
            when = rule.get("when") if isinstance(rule, dict) else None
            if isinstance(when, dict):
                named_topics.update(_codes(when.get("topic")))
                channels.update(c for c in _codes(when.get("channel")) if c in CHANNELS)
    sample = []
    for topic in [*sorted(named_topics), "zzz-no-rule-names-this-topic"]:
        for kind in KINDS:
            for channel in sorted(channels) or ["web"]:
                sample.append(
                    {
                        "topic": topic,
                        "kind": kind,
                        "channel": channel,
                        "needs_review": False,
                        "confidence": 0.9,
                    }
                )
        sample.append(
            {"topic": topic, "kind": "report", "channel": "web", "needs_review": True, "confidence": 0.2}
        )
    return sample


def route(ruleset: Any, signal: dict[str, Any]) -> dict[str, Any]:
    """Routing's decision for one sample signal, reduced to who acts and who is told."""
    rules = routing_module()
    assert rules is not None
    names = {f.name for f in dataclasses.fields(rules.SignalFacts)}
    values: dict[str, Any] = {
        "subtopic": None,
        "kind": "report",
        "channel": "web",
        "needs_review": False,
        "confidence": 0.9,
    }
    values.update({k: v for k, v in signal.items() if k in names})
    if "received_at" in names and values.get("received_at") is None:
        values["received_at"] = FIXED_TIME
    facts = rules.SignalFacts(**{k: v for k, v in values.items() if k in names})
    try:
        decision = ruleset.decide(facts, FIXED_TIME)
    except TypeError:
        decision = ruleset.decide(facts)
    action = getattr(decision, "action", None)

    def pick(name: str) -> Any:
        return getattr(decision, name, None) if hasattr(decision, name) else getattr(action, name, None)

    return {
        "rule_id": str(decision.rule_id),
        "responsible": pick("responsible"),
        "informed": sorted(pick("informed") or ()),
        "partners": sorted(pick("partners") or ()),
    }


def diff(current: Path | None, proposed: Path, sample: list[dict[str, Any]] | None = None) -> DiffReport:
    """What replacing ``current`` (None: a new tenant) with ``proposed`` would change."""
    new = check_folder(proposed)
    old = check_folder(current) if current is not None and current.is_dir() else None
    report = DiffReport(current=current if old is not None else None, proposed=proposed)
    if not new.ok:
        report.notes.append("the proposed folder does not validate; run 'civicsignals-admin validate' first")
    report.changes += _compare(
        "department",
        _by_code(old, "departments.yaml", "departments"),
        _by_code(new, "departments.yaml", "departments"),
    )
    report.changes += _compare(
        "partner", _by_code(old, "partners.yaml", "partners"), _by_code(new, "partners.yaml", "partners")
    )
    report.changes += _compare("area", _areas(old), _areas(new))
    report.changes += _rule_changes(old.data("rules.yaml") if old else None, new.data("rules.yaml"))
    report.changes += _key_changes(
        _by_code(old, "keys.yaml", "keys", "id"), _by_code(new, "keys.yaml", "keys", "id")
    )
    old_settings = old.data("tenant.yaml", {}) if old else {}
    new_settings = new.data("tenant.yaml", {})
    report.changes += [c for c in _compare("setting", old_settings, new_settings)]
    report.changes += _compare("template", _templates(current if old else None), _templates(proposed))
    old_taxonomy = old.data("taxonomy.yaml") if old else None
    if old_taxonomy != new.data("taxonomy.yaml"):
        report.changes.append(Change("taxonomy", "changed", "taxonomy.yaml"))

    if routing_module() is None:
        report.notes.append("civicsignals-routing is not installed: no sample was routed")
        return report
    if old is None or not new.ok:
        return report
    rules_module = routing_module()
    try:
        before = load_ruleset(current)  # type: ignore[arg-type]
        after = load_ruleset(proposed)
    except rules_module.RulesError as exc:  # type: ignore[union-attr]
        report.notes.append(f"routing refuses a rule set, so no sample was routed: {exc}")
        return report
    if sample is None:
        topics = {
            str(t.get("code"))
            for doc in (old.data("taxonomy.yaml"), new.data("taxonomy.yaml"))
            for t in (doc or {}).get("topics") or []
            if isinstance(t, dict)
        }
        sample = default_sample(old.data("rules.yaml"), new.data("rules.yaml"), topics=topics)
    report.sample_size = len(sample)
    for signal in sample:
        was, will = route(before, signal), route(after, signal)
        if was != will:
            report.rerouted.append(Rerouted(signal=signal, before=was, after=will))
    return report


def read_sample(path: Path) -> list[dict[str, Any]]:
    """A sample file: JSON Lines, or a JSON array, of signals as routing sees them (topic, kind …)."""
    text = path.read_text(encoding="utf-8").strip()
    if text.startswith("["):
        loaded = json.loads(text)
    else:
        loaded = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not all(isinstance(item, dict) and "topic" in item for item in loaded):
        raise ValueError(f"{path}: every sample signal is an object with at least a 'topic'")
    return loaded
