"""Routing rules: who acts on a signal, who is told, how soon (framework-free, tested without a server).

A tenant's ``rules.yaml`` lists rules in order; the first whose conditions all hold decides. A
signal the classifier was unsure of goes to the tenant's triage department first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml


class RulesError(ValueError):
    """The rules file is invalid; the message names the file, the rule and the problem."""


@dataclass(frozen=True)
class Action:
    responsible: str
    informed: tuple[str, ...] = ()
    partners: tuple[str, ...] = ()
    priority: str = "normal"
    sla_days: int = 5
    service_promise: str | None = None


@dataclass(frozen=True)
class Rule:
    id: str
    action: Action
    topics: frozenset[str] = frozenset()
    kinds: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()

    def matches(self, facts: SignalFacts) -> bool:
        return (
            (not self.topics or facts.topic in self.topics)
            and (not self.kinds or facts.kind in self.kinds)
            and (not self.channels or facts.channel in self.channels)
        )


@dataclass(frozen=True)
class SignalFacts:
    """What a rule may look at: the classified signal as it travels on the bus, redacted."""

    topic: str
    subtopic: str | None
    kind: str
    channel: str | None
    needs_review: bool
    confidence: float


@dataclass(frozen=True)
class Decision:
    rule_id: str
    action: Action


@dataclass
class RuleSet:
    version: int
    triage: Action
    rules: list[Rule] = field(default_factory=list)

    def decide(self, facts: SignalFacts) -> Decision:
        if facts.needs_review:
            return Decision("triage", self.triage)
        for rule in self.rules:
            if rule.matches(facts):
                return Decision(rule.id, rule.action)
        return Decision("triage", self.triage)

    def departments(self) -> set[str]:
        actions = [self.triage, *(rule.action for rule in self.rules)]
        return {dept for action in actions for dept in (action.responsible, *action.informed)}


def _as_set(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset([value])
    return frozenset(str(item) for item in value)


def _action(raw: Any, where: str) -> Action:
    if not isinstance(raw, dict) or "responsible" not in raw:
        raise RulesError(f"{where}: an action needs a 'responsible' department")
    try:
        return Action(
            responsible=str(raw["responsible"]),
            informed=tuple(str(d) for d in raw.get("informed", [])),
            partners=tuple(str(p) for p in raw.get("partners", [])),
            priority=str(raw.get("priority", "normal")),
            sla_days=int(raw.get("sla_days", 5)),
            service_promise=raw.get("service_promise"),
        )
    except (TypeError, ValueError) as exc:
        raise RulesError(f"{where}: {exc}") from exc


def parse_rules(raw: Any, source: str, departments: set[str] | None = None) -> RuleSet:
    if not isinstance(raw, dict) or "triage" not in raw:
        raise RulesError(f"{source}: needs a 'triage' action and a list of 'rules'")
    triage = _action(raw["triage"], f"{source}: triage")
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw.get("rules") or []):
        where = f"{source}: rule {index + 1}"
        if not isinstance(entry, dict) or "id" not in entry:
            raise RulesError(f"{where}: needs an 'id'")
        rule_id = str(entry["id"])
        if rule_id in seen:
            raise RulesError(f"{where}: id {rule_id!r} is used twice")
        seen.add(rule_id)
        condition = entry.get("when") or {}
        rules.append(
            Rule(
                id=rule_id,
                action=_action(entry.get("then"), f"{where} ({rule_id})"),
                topics=_as_set(condition.get("topic")),
                kinds=_as_set(condition.get("kind")),
                channels=_as_set(condition.get("channel")),
            )
        )
    ruleset = RuleSet(version=int(raw.get("version", 1)), triage=triage, rules=rules)
    if departments is not None:
        unknown = ruleset.departments() - departments
        if unknown:
            raise RulesError(f"{source}: unknown department(s) {', '.join(sorted(unknown))}")
    return ruleset


def load_rules(path: Path, departments: set[str] | None = None) -> RuleSet:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RulesError(f"{path}: missing") from exc
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from exc
    return parse_rules(raw, str(path), departments)


def add_working_days(start: datetime, days: int) -> datetime:
    """The due date of a service promise in working days (Monday to Friday)."""
    current = start
    remaining = days
    while remaining > 0:
        current += timedelta(days=1)
        if current.weekday() < 5:
            remaining -= 1
    return current


class RulesCache:
    """Each tenant's rules, reloaded when the file changes; a broken change keeps the last good set."""

    def __init__(self, tenants_dir: Path) -> None:
        self.tenants_dir = tenants_dir
        self._cache: dict[str, tuple[float, RuleSet]] = {}
        self.errors: dict[str, str] = {}

    def get(self, tenant: str, departments: set[str] | None = None) -> RuleSet:
        path = self.tenants_dir / tenant / "rules.yaml"
        try:
            stamp = path.stat().st_mtime
        except FileNotFoundError:
            cached = self._cache.get(tenant)
            if cached is not None:
                return cached[1]
            raise RulesError(f"{path}: missing") from None
        cached = self._cache.get(tenant)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            ruleset = load_rules(path, departments)
        except RulesError as exc:
            self.errors[tenant] = str(exc)
            if cached is not None:
                return cached[1]
            raise
        self.errors.pop(tenant, None)
        self._cache[tenant] = (stamp, ruleset)
        return ruleset
