"""Routing rules: who acts on a signal, who is told, which partner helps, how soon.

Framework-free, so that it is tested (and benchmarked) without a server. A tenant's ``rules.yaml``
lists rules in order. Each rule has conditions (``when``) and an action (``then``); the first rule
whose conditions all hold decides, unless it says ``continue: true``, in which case its informed
departments, partners and priority are kept and evaluation goes on. A signal the classifier was
unsure of (``needs_review``, or a confidence below ``triage.below_confidence``) goes to the triage
department, unless a rule explicitly addresses unsure signals (it has a ``needs_review`` or a
``confidence`` condition). Every decision can be explained rule by rule (:meth:`RuleSet.explain`),
which is what ``POST /v1/routing/rules:test`` shows.

Rules are validated when they are loaded: an unknown department, partner, topic, kind, channel or
condition is an error that names the file and the line.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from civicsignals.common.events import CHANNELS, KINDS

PRIORITIES: tuple[str, ...] = ("low", "normal", "high", "urgent")
SlaType = Literal["working", "calendar"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TRIAGE_RULE_ID = "triage"

CONDITION_KEYS = frozenset(
    {
        "topic",
        "subtopic",
        "kind",
        "channel",
        "language",
        "area",
        "district",
        "words",
        "confidence",
        "office_hours",
        "needs_review",
    }
)
ACTION_KEYS = frozenset(
    {"responsible", "informed", "partners", "priority", "sla", "sla_days", "service_promise", "escalation"}
)
RULE_KEYS = frozenset({"id", "when", "then", "continue", "description"})
TRIAGE_KEYS = ACTION_KEYS | {"below_confidence"}
TOP_KEYS = frozenset({"version", "triage", "rules", "office_hours", "holidays", "escalation", "timezone"})


class RulesError(ValueError):
    """The rules file is invalid; the message names the file, the line and the problem."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


# -- the signal as rules see it ------------------------------------------------------------------


@dataclass(frozen=True)
class SignalFacts:
    """What a rule may look at: the classified signal as it travels on the bus, redacted."""

    topic: str
    subtopic: str | None
    kind: str
    channel: str | None
    needs_review: bool
    confidence: float
    language: str | None = None
    area: str | None = None
    district: str | None = None
    text: str | None = None
    received_at: datetime | None = None


# -- rules ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sla:
    days: int
    type: SlaType = "working"


@dataclass(frozen=True)
class EscalationStep:
    """``after_days`` working days past the due date, inform these departments (level = position + 1)."""

    after_days: int
    inform: tuple[str, ...] = ()


@dataclass(frozen=True)
class Action:
    responsible: str | None = None
    informed: tuple[str, ...] = ()
    partners: tuple[str, ...] = ()
    priority: str | None = None
    sla: Sla | None = None
    service_promise: str | Mapping[str, str] | None = None
    escalation: tuple[EscalationStep, ...] | None = None


@dataclass(frozen=True)
class OfficeHours:
    timezone: str = "Europe/Amsterdam"
    days: frozenset[int] = frozenset(range(5))
    start: time = time(8, 30)
    end: time = time(17, 0)

    def contains(self, moment: datetime, holidays: frozenset[date] = frozenset()) -> bool:
        local = moment.astimezone(ZoneInfo(self.timezone))
        return (
            local.weekday() in self.days
            and local.date() not in holidays
            and self.start <= local.time().replace(tzinfo=None) < self.end
        )


_CODE_CONDITIONS = frozenset({"topic", "subtopic", "kind", "channel", "language", "area", "district"})
# Cheap and selective conditions first, so that most rules are ruled out by a set lookup.
_CHECK_ORDER = {"topic": 0, "kind": 1, "channel": 2, "subtopic": 3, "language": 4, "area": 5, "district": 6}


@dataclass(frozen=True)
class Check:
    """One condition of a rule; ``test`` returns (holds, why) so that every decision explains itself."""

    name: str
    expected: Any

    def holds(self, facts: SignalFacts, ruleset: RuleSet, now: datetime) -> bool:
        """The same answer as :meth:`test` without building its explanation (the hot path)."""
        name, expected = self.name, self.expected
        if name in _CODE_CONDITIONS:
            return getattr(facts, name) in expected
        if name == "words":
            return expected.search(facts.text or "") is not None
        if name == "confidence":
            low, high = expected
            return (low is None or facts.confidence >= low) and (high is None or facts.confidence <= high)
        if name == "office_hours":
            return ruleset.office_hours.contains(facts.received_at or now, ruleset.holidays) == expected
        return bool(facts.needs_review == expected)

    def test(self, facts: SignalFacts, ruleset: RuleSet, now: datetime) -> tuple[bool, str]:
        name, expected = self.name, self.expected
        if name in ("topic", "subtopic", "kind", "channel", "language", "area", "district"):
            value = getattr(facts, name)
            ok = value in expected
            return ok, f"{name} {value!r} {'is' if ok else 'is not'} one of {sorted(expected)}"
        if name == "words":
            pattern: re.Pattern[str] = expected
            found = pattern.search(facts.text or "")
            if found:
                return True, f"the text contains {found.group(0).lower()!r}"
            return False, "the text contains none of the words"
        if name == "confidence":
            low, high = expected
            ok = (low is None or facts.confidence >= low) and (high is None or facts.confidence <= high)
            shown = f"[{'' if low is None else low}, {'' if high is None else high}]"
            return ok, f"confidence {facts.confidence:.3f} {'is' if ok else 'is not'} within {shown}"
        if name == "office_hours":
            moment = facts.received_at or now
            inside = ruleset.office_hours.contains(moment, ruleset.holidays)
            ok = inside == expected
            where = "inside" if inside else "outside"
            return ok, f"received {where} office hours (rule wants {'inside' if expected else 'outside'})"
        if name == "needs_review":
            ok = facts.needs_review == expected
            return ok, f"needs_review is {str(facts.needs_review).lower()}"
        raise AssertionError(f"unknown condition {name}")  # validated on load


@dataclass(frozen=True)
class Rule:
    id: str
    action: Action
    checks: tuple[Check, ...] = ()
    continues: bool = False
    line: int = 0

    addresses_unsure: bool = False
    """A rule that speaks about unsure signals is evaluated for them instead of sending them to triage."""

    def __post_init__(self) -> None:
        unsure = any(check.name in ("needs_review", "confidence") for check in self.checks)
        object.__setattr__(self, "addresses_unsure", unsure)

    def matches(self, facts: SignalFacts, ruleset: RuleSet, now: datetime) -> bool:
        return all(check.holds(facts, ruleset, now) for check in self.checks)

    def evaluate(self, facts: SignalFacts, ruleset: RuleSet, now: datetime) -> tuple[bool, list[str]]:
        """Whether every condition holds, with the reasons (the failing ones when it does not match)."""
        held: list[str] = []
        failed: list[str] = []
        for check in self.checks:
            ok, why = check.test(facts, ruleset, now)
            (held if ok else failed).append(why)
        if failed:
            return False, failed
        return True, held or ["the rule has no conditions"]


@dataclass(frozen=True)
class RuleTrace:
    """What happened to one rule for one signal."""

    rule_id: str
    line: int
    outcome: Literal["matched", "matched_continue", "not_matched", "skipped_unsure", "not_evaluated"]
    reasons: list[str]


@dataclass(frozen=True)
class Decision:
    rule_id: str
    """The rule that chose the responsible department (``triage`` when none did)."""
    matched: tuple[str, ...]
    responsible: str
    informed: tuple[str, ...]
    partners: tuple[str, ...]
    priority: str
    sla: Sla
    service_promise: str | None
    escalation: tuple[EscalationStep, ...]
    triage_reason: str | None
    version: int
    trace: tuple[RuleTrace, ...] = ()

    @property
    def is_triage(self) -> bool:
        return self.rule_id == TRIAGE_RULE_ID


@dataclass
class RuleSet:
    version: int
    triage: Action
    below_confidence: float = 0.0
    rules: list[Rule] = field(default_factory=list)
    office_hours: OfficeHours = field(default_factory=OfficeHours)
    holidays: frozenset[date] = frozenset()
    escalation: tuple[EscalationStep, ...] = ()
    digest: str = ""
    source: str = ""

    _index: dict[str, list[Rule]] | None = field(default=None, repr=False, compare=False)
    _topicless: list[Rule] = field(default_factory=list, repr=False, compare=False)

    def candidates(self, topic: str) -> list[Rule]:
        """The rules that can match a signal of this topic, in order (an index built once).

        A rule with a topic condition can only match its topics; so with hundreds of rules a
        signal is checked against a handful instead of every one. The result is the same as
        evaluating every rule in order.
        """
        if self._index is None:
            index: dict[str, list[Rule]] = {}
            for rule in self.rules:
                topics = next((c.expected for c in rule.checks if c.name == "topic"), None)
                if topics is None:
                    self._topicless.append(rule)
                    for listed in index.values():
                        listed.append(rule)
                    continue
                for code in topics:
                    index.setdefault(code, list(self._topicless)).append(rule)
            self._index = index
        return self._index.get(topic, self._topicless)

    @property
    def triage_department(self) -> str:
        assert self.triage.responsible is not None
        return self.triage.responsible

    def unsure(self, facts: SignalFacts) -> str | None:
        """Why a signal must go to triage first, or None when the classifier was sure enough."""
        if facts.needs_review:
            return "the classifier marked the signal needs_review"
        if facts.confidence < self.below_confidence:
            return f"confidence {facts.confidence:.3f} is below the triage threshold {self.below_confidence}"
        return None

    def decide(self, facts: SignalFacts, now: datetime | None = None, *, explain: bool = False) -> Decision:
        """Evaluate the rules in order; the explanation (``trace``) is built only when asked for."""
        now = now or datetime.now(UTC)
        unsure = self.unsure(facts)
        informed: list[str] = []
        partners: list[str] = []
        matched: list[str] = []
        priority: str | None = None
        chosen: Rule | None = None
        trace: list[RuleTrace] = []
        stop_at: str | None = None
        for rule in self.rules if explain else self.candidates(facts.topic):
            if stop_at is not None:
                if not explain:
                    break
                if explain:
                    trace.append(
                        RuleTrace(
                            rule.id,
                            rule.line,
                            "not_evaluated",
                            [f"rule {stop_at!r} matched before it and did not continue"],
                        )
                    )
                continue
            if unsure and not rule.addresses_unsure:
                if explain:
                    trace.append(
                        RuleTrace(
                            rule.id,
                            rule.line,
                            "skipped_unsure",
                            [f"{unsure}; this rule has no needs_review or confidence condition"],
                        )
                    )
                continue
            if explain:
                ok, reasons = rule.evaluate(facts, self, now)
                if not ok:
                    trace.append(RuleTrace(rule.id, rule.line, "not_matched", reasons))
                    continue
            elif not rule.matches(facts, self, now):
                continue
            matched.append(rule.id)
            action = rule.action
            _extend(informed, action.informed)
            _extend(partners, action.partners)
            if action.priority is not None:
                priority = _higher(priority, action.priority)
            if chosen is None and action.responsible is not None:
                chosen = rule
            if explain:
                trace.append(
                    RuleTrace(
                        rule.id, rule.line, "matched_continue" if rule.continues else "matched", reasons
                    )
                )
            if not rule.continues:
                stop_at = rule.id
        base = chosen.action if chosen is not None else self.triage
        responsible = base.responsible or self.triage_department
        informed = [dept for dept in informed if dept != responsible]
        for dept in base.informed:
            if dept != responsible and dept not in informed:
                informed.append(dept)
        for partner in base.partners:
            if partner not in partners:
                partners.append(partner)
        final_priority = _higher(priority, base.priority or "normal")
        triage_reason = None
        if chosen is None:
            triage_reason = unsure or "no rule named a responsible department"
        return Decision(
            rule_id=chosen.id if chosen is not None else TRIAGE_RULE_ID,
            matched=tuple(matched),
            responsible=responsible,
            informed=tuple(informed),
            partners=tuple(partners),
            priority=final_priority,
            sla=base.sla or self.triage.sla or Sla(5),
            # Not triage's promise for a rule without one: it speaks of triage's work and time
            # ("... binnen 2 werkdagen en sturen haar naar de juiste afdeling"), and beside a
            # rule's own SLA it promised one date while the page showed another.
            service_promise=_promise(base.service_promise, facts.language),
            escalation=base.escalation if base.escalation is not None else self.escalation,
            triage_reason=triage_reason,
            version=self.version,
            trace=tuple(trace),
        )

    def rule(self, rule_id: str) -> Rule | None:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        return None

    def escalation_for(self, rule_id: str) -> tuple[EscalationStep, ...]:
        rule = self.rule(rule_id)
        if rule is not None and rule.action.escalation is not None:
            return rule.action.escalation
        if rule_id == TRIAGE_RULE_ID and self.triage.escalation is not None:
            return self.triage.escalation
        return self.escalation

    def due_at(self, start: datetime, sla: Sla) -> datetime:
        if sla.type == "calendar":
            return start + timedelta(days=sla.days)
        return add_working_days(start, sla.days, self.office_hours.timezone, self.holidays)

    def working_days_between(self, start: datetime, end: datetime) -> int:
        """Whole working days from ``start`` to ``end`` (0 when ``end`` is not after ``start``)."""
        zone = ZoneInfo(self.office_hours.timezone)
        day = start.astimezone(zone).date()
        last = end.astimezone(zone).date()
        count = 0
        while day < last:
            day += timedelta(days=1)
            if day.weekday() < 5 and day not in self.holidays:
                count += 1
        return count


def _extend(target: list[str], items: Iterable[str]) -> None:
    for item in items:
        if item not in target:
            target.append(item)


def _higher(current: str | None, other: str) -> str:
    if current is None:
        return other
    return current if PRIORITIES.index(current) >= PRIORITIES.index(other) else other


def _promise(promise: str | Mapping[str, str] | None, language: str | None) -> str | None:
    """The service promise in the resident's language when the rule gives one per language."""
    if promise is None or isinstance(promise, str):
        return promise
    if language and language in promise:
        return promise[language]
    return promise.get("nl") or next(iter(promise.values()), None)


def add_working_days(
    start: datetime, days: int, timezone: str = "Europe/Amsterdam", holidays: frozenset[date] = frozenset()
) -> datetime:
    """The due date of a promise in working days (Monday to Friday, not on the tenant's holidays)."""
    zone = ZoneInfo(timezone)
    current = start.astimezone(zone)
    remaining = days
    while remaining > 0:
        current += timedelta(days=1)
        if current.weekday() < 5 and current.date() not in holidays:
            remaining -= 1
    return current.astimezone(UTC)


# -- loading and validation ----------------------------------------------------------------------


@dataclass(frozen=True)
class Vocabulary:
    """What rules may name; None means "not known here, do not check"."""

    departments: frozenset[str] | None = None
    partners: frozenset[str] | None = None
    topics: frozenset[str] | None = None
    subtopics: frozenset[str] | None = None


class _Lines:
    """Line numbers of every key and item in a YAML document, by path."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[Any, ...], int] = {}
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            node = None
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, key.value)
                self.lines[child] = key.start_mark.line + 1
                self._walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, (*path, index))

    def of(self, *path: Any) -> int:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 1


class _Validator:
    def __init__(self, source: str, lines: _Lines, vocabulary: Vocabulary) -> None:
        self.source = source
        self.lines = lines
        self.vocabulary = vocabulary
        self.problems: list[str] = []

    def error(self, path: tuple[Any, ...], message: str) -> None:
        self.problems.append(f"{self.source} line {self.lines.of(*path)}: {message}")

    def codes(self, value: Any, path: tuple[Any, ...], what: str) -> tuple[str, ...]:
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            self.error(path, f"{what} must be a code or a list of codes")
            return ()
        return tuple(items)

    def known(
        self, codes: Iterable[str], allowed: frozenset[str] | None, path: tuple[Any, ...], what: str
    ) -> None:
        if allowed is None:
            return
        for code in codes:
            if code not in allowed:
                self.error(path, f"unknown {what} {code!r}")

    def escalation(self, raw: Any, path: tuple[Any, ...]) -> tuple[EscalationStep, ...]:
        if not isinstance(raw, list):
            self.error(path, "escalation must be a list of {after_days, inform}")
            return ()
        steps: list[EscalationStep] = []
        for index, entry in enumerate(raw):
            where = (*path, index)
            if not isinstance(entry, dict):
                self.error(where, "an escalation step must be a mapping")
                continue
            after = entry.get("after_days", 0)
            if not isinstance(after, int) or isinstance(after, bool) or after < 0:
                self.error((*where, "after_days"), "after_days must be a whole number of working days >= 0")
                after = 0
            inform = self.codes(entry.get("inform"), (*where, "inform"), "inform")
            self.known(inform, self.vocabulary.departments, (*where, "inform"), "department")
            for key in set(entry) - {"after_days", "inform"}:
                self.error((*where, key), f"unknown escalation field {key!r}")
            steps.append(EscalationStep(after_days=after, inform=inform))
        ordered = sorted(steps, key=lambda step: step.after_days)
        if ordered != steps:
            self.error(path, "escalation steps must be in increasing order of after_days")
        return tuple(ordered)

    def action(self, raw: Any, path: tuple[Any, ...], allowed: frozenset[str]) -> Action:
        if not isinstance(raw, dict):
            self.error(path, "an action must be a mapping")
            return Action()
        for key in set(raw) - allowed:
            self.error((*path, key), f"unknown action field {key!r}")
        responsible = raw.get("responsible")
        if responsible is not None and not isinstance(responsible, str):
            self.error((*path, "responsible"), "responsible must be one department code")
            responsible = None
        if responsible is not None:
            self.known([responsible], self.vocabulary.departments, (*path, "responsible"), "department")
        informed = self.codes(raw.get("informed"), (*path, "informed"), "informed")
        self.known(informed, self.vocabulary.departments, (*path, "informed"), "department")
        partners = self.codes(raw.get("partners"), (*path, "partners"), "partners")
        self.known(partners, self.vocabulary.partners, (*path, "partners"), "partner")
        priority = raw.get("priority")
        if priority is not None and priority not in PRIORITIES:
            self.error((*path, "priority"), f"priority must be one of {', '.join(PRIORITIES)}")
            priority = None
        sla = self.sla(raw, path)
        promise = raw.get("service_promise")
        if (
            promise is not None
            and not isinstance(promise, str)
            and (
                not isinstance(promise, dict)
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in promise.items())
            )
        ):
            self.error((*path, "service_promise"), "service_promise must be text or {language: text}")
            promise = None
        escalation = None
        if "escalation" in raw:
            escalation = self.escalation(raw["escalation"], (*path, "escalation"))
        return Action(
            responsible=responsible,
            informed=informed,
            partners=partners,
            priority=priority,
            sla=sla,
            service_promise=promise,
            escalation=escalation,
        )

    def sla(self, raw: dict[str, Any], path: tuple[Any, ...]) -> Sla | None:
        if "sla" in raw and "sla_days" in raw:
            self.error((*path, "sla"), "give either sla or sla_days, not both")
        if "sla_days" in raw:
            days = raw["sla_days"]
            if not isinstance(days, int) or isinstance(days, bool) or days < 0:
                self.error((*path, "sla_days"), "sla_days must be a whole number >= 0")
                return None
            return Sla(days=days)
        if "sla" not in raw:
            return None
        value = raw["sla"]
        if not isinstance(value, dict):
            self.error((*path, "sla"), "sla must be {days: N, type: working|calendar}")
            return None
        days = value.get("days")
        kind = value.get("type", "working")
        if not isinstance(days, int) or isinstance(days, bool) or days < 0:
            self.error((*path, "sla", "days"), "sla.days must be a whole number >= 0")
            return None
        if kind not in ("working", "calendar"):
            self.error((*path, "sla", "type"), "sla.type must be 'working' or 'calendar'")
            return None
        return Sla(days=days, type=kind)

    def condition(self, raw: Any, path: tuple[Any, ...]) -> tuple[Check, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, dict):
            self.error(path, "'when' must be a mapping of conditions")
            return ()
        checks: list[Check] = []
        for key, value in raw.items():
            where = (*path, key)
            if key not in CONDITION_KEYS:
                self.error(where, f"unknown condition {key!r} (known: {', '.join(sorted(CONDITION_KEYS))})")
                continue
            if key in ("topic", "subtopic", "kind", "channel", "language", "area", "district"):
                codes = self.codes(value, where, key)
                if key == "topic":
                    self.known(codes, self.vocabulary.topics, where, "topic")
                elif key == "subtopic":
                    self.known(codes, self.vocabulary.subtopics, where, "subtopic")
                elif key == "kind":
                    self.known(codes, frozenset(KINDS), where, "kind")
                elif key == "channel":
                    self.known(codes, frozenset(CHANNELS), where, "channel")
                checks.append(Check(key, frozenset(codes)))
            elif key == "words":
                words = self.codes(value, where, "words")
                if words:
                    alternatives = "|".join(re.escape(word.strip()) for word in words if word.strip())
                    checks.append(Check(key, re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)))
            elif key == "confidence":
                checks.append(Check(key, self.confidence(value, where)))
            elif key in ("office_hours", "needs_review"):
                if not isinstance(value, bool):
                    self.error(where, f"{key} must be true or false")
                    continue
                checks.append(Check(key, value))
        return tuple(checks)

    def confidence(self, value: Any, path: tuple[Any, ...]) -> tuple[float | None, float | None]:
        if not isinstance(value, dict) or not set(value) <= {"min", "max"} or not value:
            self.error(path, "confidence must be {min: x, max: y} with 0 <= x <= y <= 1")
            return (None, None)
        bounds: list[float | None] = []
        for key in ("min", "max"):
            bound = value.get(key)
            if bound is not None and (
                isinstance(bound, bool) or not isinstance(bound, int | float) or not 0 <= bound <= 1
            ):
                self.error((*path, key), f"confidence {key} must be a number from 0 to 1")
                bound = None
            bounds.append(None if bound is None else float(bound))
        low, high = bounds
        if low is not None and high is not None and low > high:
            self.error(path, "confidence min is above max")
        return (low, high)


def parse_rules(text: str, source: str, vocabulary: Vocabulary | None = None) -> RuleSet:
    """Validate a rules document completely; every problem is listed, each with its line."""
    vocabulary = vocabulary or Vocabulary()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise RulesError(f"{source}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    lines = _Lines(text)
    check = _Validator(source, lines, vocabulary)
    if not isinstance(raw, dict):
        raise RulesError(f"{source} line 1: needs a 'triage' action and a list of 'rules'")
    for key in set(raw) - TOP_KEYS:
        check.error((key,), f"unknown top-level field {key!r}")
    version = raw.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        check.error(("version",), "version must be a whole number >= 1")
        version = 1
    office_hours = _office_hours(raw.get("office_hours"), raw.get("timezone"), check)
    holidays = _holidays(raw.get("holidays"), check)
    escalation: tuple[EscalationStep, ...] = ()
    if "escalation" in raw:
        escalation = check.escalation(raw["escalation"], ("escalation",))
    if "triage" not in raw:
        check.error((), "needs a 'triage' action (the department that sorts unsure signals)")
        triage = Action(responsible="")
        below = 0.0
    else:
        triage = check.action(raw["triage"], ("triage",), TRIAGE_KEYS)
        if triage.responsible is None:
            check.error(("triage",), "the triage action needs a 'responsible' department")
        below_raw = raw["triage"].get("below_confidence", 0.0) if isinstance(raw["triage"], dict) else 0.0
        if isinstance(below_raw, bool) or not isinstance(below_raw, int | float) or not 0 <= below_raw <= 1:
            check.error(("triage", "below_confidence"), "below_confidence must be a number from 0 to 1")
            below_raw = 0.0
        below = float(below_raw)
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    entries = raw.get("rules") or []
    if not isinstance(entries, list):
        check.error(("rules",), "'rules' must be a list")
        entries = []
    for index, entry in enumerate(entries):
        path = ("rules", index)
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            check.error(path, f"rule {index + 1} needs an 'id'")
            continue
        rule_id = entry["id"]
        if rule_id == TRIAGE_RULE_ID:
            check.error((*path, "id"), f"the id {TRIAGE_RULE_ID!r} is reserved for the triage action")
        if rule_id in seen:
            check.error((*path, "id"), f"rule id {rule_id!r} is used twice (first at line {seen[rule_id]})")
        seen[rule_id] = lines.of(*path)
        for key in set(entry) - RULE_KEYS:
            check.error((*path, key), f"rule {rule_id!r}: unknown field {key!r}")
        continues = entry.get("continue", False)
        if not isinstance(continues, bool):
            check.error((*path, "continue"), "continue must be true or false")
            continues = False
        if "then" not in entry:
            check.error(path, f"rule {rule_id!r} needs a 'then' action")
        action = check.action(entry.get("then", {}), (*path, "then"), ACTION_KEYS)
        if action.responsible is None and not continues:
            check.error(
                (*path, "then"), f"rule {rule_id!r}: a rule that does not continue needs 'responsible'"
            )
        rules.append(
            Rule(
                id=rule_id,
                action=action,
                checks=tuple(
                    sorted(
                        check.condition(entry.get("when"), (*path, "when")),
                        key=lambda c: _CHECK_ORDER.get(c.name, 10),
                    )
                ),
                continues=continues,
                line=lines.of(*path),
            )
        )
    if check.problems:
        count = len(check.problems)
        summary = check.problems[0] if count == 1 else f"{count} problems: " + "; ".join(check.problems)
        raise RulesError(summary, check.problems)
    return RuleSet(
        version=version,
        triage=triage,
        below_confidence=below,
        rules=rules,
        office_hours=office_hours,
        holidays=holidays,
        escalation=escalation,
        digest=hashlib.sha256(text.encode()).hexdigest()[:16],
        source=source,
    )


def _office_hours(raw: Any, timezone: Any, check: _Validator) -> OfficeHours:
    zone = timezone if isinstance(timezone, str) else "Europe/Amsterdam"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        check.error(("office_hours",), "office_hours must be {days, start, end}")
        return OfficeHours(timezone=zone)
    zone = str(raw.get("timezone", zone))
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        check.error(("office_hours", "timezone"), f"unknown time zone {zone!r}")
        zone = "Europe/Amsterdam"
    days_raw = raw.get("days", list(WEEKDAYS[:5]))
    days: set[int] = set()
    for day in days_raw if isinstance(days_raw, list) else [days_raw]:
        if str(day).lower()[:3] not in WEEKDAYS:
            check.error(("office_hours", "days"), f"unknown day {day!r}")
            continue
        days.add(WEEKDAYS.index(str(day).lower()[:3]))
    bounds: list[time] = []
    for key, default in (("start", "08:30"), ("end", "17:00")):
        value = raw.get(key, default)
        if isinstance(value, int):  # YAML 1.1 reads 08:30 as a sexagesimal number of minutes
            value = f"{value // 60:02d}:{value % 60:02d}"
        try:
            bounds.append(time.fromisoformat(str(value)))
        except ValueError:
            check.error(("office_hours", key), f"{key} must be a time such as 08:30")
            bounds.append(time.fromisoformat(default))
    return OfficeHours(timezone=zone, days=frozenset(days), start=bounds[0], end=bounds[1])


def _holidays(raw: Any, check: _Validator) -> frozenset[date]:
    if raw is None:
        return frozenset()
    if not isinstance(raw, list):
        check.error(("holidays",), "holidays must be a list of dates")
        return frozenset()
    days: set[date] = set()
    for index, value in enumerate(raw):
        if isinstance(value, date):
            days.add(value)
            continue
        try:
            days.add(date.fromisoformat(str(value)))
        except ValueError:
            check.error(("holidays", index), f"{value!r} is not a date (YYYY-MM-DD)")
    return frozenset(days)


# -- a tenant's vocabulary, from its folder --------------------------------------------------------


def _codes_from(path: Path, key: str) -> frozenset[str] | None:
    """The ``code`` of every entry under ``key`` in a YAML file; None when the file is absent."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except yaml.YAMLError as exc:
        raise RulesError(f"{path}: not valid YAML: {exc}") from exc
    entries = raw.get(key, []) if isinstance(raw, dict) else []
    return frozenset(
        str(entry["code"]) for entry in entries or [] if isinstance(entry, dict) and "code" in entry
    )


def tenant_vocabulary(folder: Path) -> Vocabulary:
    """Departments, partners and topics a tenant's rules may name, from its folder's files."""
    topics = subtopics = None
    try:
        taxonomy = yaml.safe_load((folder / "taxonomy.yaml").read_text(encoding="utf-8"))
    except FileNotFoundError:
        taxonomy = None
    except yaml.YAMLError as exc:
        raise RulesError(f"{folder / 'taxonomy.yaml'}: not valid YAML: {exc}") from exc
    if isinstance(taxonomy, dict):
        entries = [t for t in taxonomy.get("topics") or [] if isinstance(t, dict) and "code" in t]
        topics = frozenset(str(t["code"]) for t in entries)
        subtopics = frozenset(
            str(s["code"])
            for t in entries
            for s in t.get("subtopics") or []
            if isinstance(s, dict) and "code" in s
        )
    return Vocabulary(
        departments=_codes_from(folder / "departments.yaml", "departments"),
        partners=_codes_from(folder / "partners.yaml", "partners") or frozenset(),
        topics=topics,
        subtopics=subtopics,
    )


WATCHED_FILES = ("rules.yaml", "departments.yaml", "partners.yaml", "taxonomy.yaml")


def load_rules(folder: Path) -> RuleSet:
    path = folder / "rules.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise RulesError(f"{path}: missing") from exc
    return parse_rules(text, str(path), tenant_vocabulary(folder))


@dataclass(frozen=True)
class Reload:
    """One attempt to (re)load a tenant's rules, for the audit log."""

    tenant: str
    ok: bool
    version: int | None
    digest: str | None
    error: str | None


class RulesCache:
    """Each tenant's rules, reloaded when one of its files changes; a broken change keeps the last good set.

    ``on_reload`` is called for every load attempt (first load, change, refused change), so that the
    service can audit-log it.
    """

    def __init__(self, tenants_dir: Path, on_reload: Any = None) -> None:
        self.tenants_dir = tenants_dir
        self.on_reload = on_reload
        self._cache: dict[str, tuple[tuple[float, ...], RuleSet]] = {}
        self._refused: dict[str, tuple[float, ...]] = {}
        self.errors: dict[str, str] = {}

    def _stamp(self, folder: Path) -> tuple[float, ...]:
        stamps: list[float] = []
        for name in WATCHED_FILES:
            try:
                stat = (folder / name).stat()
                stamps.extend((stat.st_mtime, float(stat.st_size)))
            except FileNotFoundError:
                stamps.extend((0.0, -1.0))
        return tuple(stamps)

    def get(self, tenant: str) -> RuleSet:
        folder = self.tenants_dir / tenant
        stamp = self._stamp(folder)
        cached = self._cache.get(tenant)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if cached is not None and self._refused.get(tenant) == stamp:
            return cached[1]
        try:
            ruleset = load_rules(folder)
        except RulesError as exc:
            self.errors[tenant] = str(exc)
            self._refused[tenant] = stamp
            self._notify(Reload(tenant, False, None, None, str(exc)))
            if cached is not None:
                return cached[1]
            raise
        self.errors.pop(tenant, None)
        self._refused.pop(tenant, None)
        self._cache[tenant] = (stamp, ruleset)
        self._notify(Reload(tenant, True, ruleset.version, ruleset.digest, None))
        return ruleset

    def _notify(self, reload: Reload) -> None:
        if self.on_reload is not None:
            self.on_reload(reload)
