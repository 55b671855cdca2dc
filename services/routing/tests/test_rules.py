"""Routing rules without a server: order, continue, triage, every condition, explanations, validation."""

from __future__ import annotations

import os
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml

from civicsignals.routing.rules import (
    RulesCache,
    RulesError,
    SignalFacts,
    Sla,
    Vocabulary,
    add_working_days,
    parse_rules,
)

VOCABULARY = Vocabulary(
    departments=frozenset({"kcc", "afval", "wonen", "handhaving", "sociaal", "verkeer"}),
    partners=frozenset({"woonpartners", "welzijn-west"}),
    topics=frozenset({"afval", "wonen", "overlast", "verkeer", "zorg"}),
    subtopics=frozenset({"container", "onderhoud", "schimmel"}),
)

RULES = """\
version: 7
office_hours: {timezone: Europe/Amsterdam, days: [mon, tue, wed, thu, fri], start: "08:30", end: "17:00"}
holidays: ["2026-12-25"]
triage:
  responsible: kcc
  below_confidence: 0.3
  sla: {days: 2, type: working}
  service_promise: "Binnen 2 werkdagen bij de juiste afdeling."
escalation:
  - {after_days: 0, inform: [kcc]}
  - {after_days: 3, inform: [handhaving]}
rules:
  - id: spoed
    when: {words: [gaslucht, brand]}
    then: {responsible: handhaving, priority: urgent, sla: {days: 1, type: calendar}}
  - id: wijk-noord
    when: {district: [noord]}
    continue: true
    then: {informed: [verkeer], priority: high}
  - id: schimmel
    when: {topic: wonen, subtopic: [schimmel]}
    continue: true
    then: {responsible: wonen, partners: [woonpartners], sla_days: 10, service_promise: {nl: "Binnen 10 werkdagen.", en: "Within 10 working days."}}
  - id: zorg-onzeker
    when: {topic: zorg, needs_review: true}
    then: {responsible: sociaal, partners: [welzijn-west]}
  - id: wonen
    when: {topic: wonen}
    then: {responsible: wonen, informed: [handhaving], sla_days: 5}
  - id: afval-buiten-kantoortijd
    when: {topic: afval, office_hours: false, channel: [app, web], kind: report}
    then: {responsible: afval, priority: high, sla_days: 1}
  - id: afval-engels
    when: {topic: afval, language: en, confidence: {min: 0.5, max: 1.0}, area: [centrum]}
    then: {responsible: afval, informed: [kcc]}
  - id: afval
    when: {topic: afval}
    then: {responsible: afval, sla_days: 5}
"""

# A Wednesday at 10:00 in Amsterdam (office hours) and the following Saturday night.
OFFICE = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
WEEKEND = datetime(2026, 11, 28, 22, 0, tzinfo=UTC)


def facts(**overrides: object) -> SignalFacts:
    values: dict[str, object] = {
        "topic": "afval",
        "subtopic": None,
        "kind": "report",
        "channel": "web",
        "needs_review": False,
        "confidence": 0.9,
        "language": "nl",
        "area": None,
        "district": None,
        "text": "Er ligt afval naast de container.",
        "received_at": OFFICE,
    }
    values.update(overrides)
    return SignalFacts(**values)  # type: ignore[arg-type]


@pytest.fixture
def rules():
    return parse_rules(RULES, "rules.yaml", VOCABULARY)


def test_the_first_matching_rule_decides_and_later_rules_are_not_evaluated(rules) -> None:
    decision = rules.decide(facts(), explain=True)
    assert decision.rule_id == "afval"
    assert decision.responsible == "afval"
    assert decision.sla == Sla(5, "working")
    outcomes = {t.rule_id: t.outcome for t in decision.trace}
    assert outcomes["afval"] == "matched"
    assert outcomes["spoed"] == "not_matched"
    assert outcomes["afval-buiten-kantoortijd"] == "not_matched"
    assert [t.rule_id for t in decision.trace] == [rule.id for rule in rules.rules]


def test_order_matters_an_earlier_rule_wins_over_a_later_one(rules) -> None:
    decision = rules.decide(facts(text="Ik ruik een GASLUCHT bij de container"), explain=True)
    assert decision.rule_id == "spoed"
    assert decision.responsible == "handhaving" and decision.priority == "urgent"
    assert decision.sla == Sla(1, "calendar")
    trace = {t.rule_id: t for t in decision.trace}
    assert trace["spoed"].reasons == ["the text contains 'gaslucht'"]
    assert trace["afval"].outcome == "not_evaluated"
    assert "'spoed' matched before it and did not continue" in trace["afval"].reasons[0]


def test_words_match_whole_words_only(rules) -> None:
    assert rules.decide(facts(text="De brandkraan lekt")).rule_id == "afval"
    assert rules.decide(facts(text="Er is brand!")).rule_id == "spoed"


def test_continue_keeps_informed_partners_and_priority_and_the_first_responsible_wins(rules) -> None:
    decision = rules.decide(facts(topic="wonen", subtopic="schimmel", district="noord"), explain=True)
    # wijk-noord (continue) adds verkeer and raises the priority; schimmel (continue) names the
    # responsible department and the partner; wonen stops evaluation and adds handhaving.
    assert decision.matched == ("wijk-noord", "schimmel", "wonen")
    assert decision.rule_id == "schimmel"
    assert decision.responsible == "wonen"
    assert decision.informed == ("verkeer", "handhaving")
    assert decision.partners == ("woonpartners",)
    assert decision.priority == "high"
    assert decision.sla == Sla(10, "working")
    assert decision.service_promise == "Binnen 10 werkdagen."
    assert rules.decide(facts(topic="wonen", subtopic="schimmel", language="en")).service_promise == (
        "Within 10 working days."
    )
    outcomes = [(t.rule_id, t.outcome) for t in decision.trace]
    assert ("wijk-noord", "matched_continue") in outcomes and ("wonen", "matched") in outcomes
    assert ("afval", "not_evaluated") in outcomes


def test_a_rule_without_a_promise_makes_none_rather_than_lending_triages(rules) -> None:
    """Triage's promise speaks of triage (two working days, "bij de juiste afdeling"): beside the
    afval rule's own SLA of five days it would promise one date while the page showed another.
    The SLA still falls back to triage's when a rule names none."""
    decision = rules.decide(facts(topic="afval"))
    assert (decision.rule_id, decision.sla, decision.service_promise) == ("afval", Sla(5, "working"), None)
    english = rules.decide(facts(topic="afval", language="en", confidence=0.9, area="centrum"))
    assert (english.rule_id, english.sla, english.service_promise) == (
        "afval-engels",
        Sla(2, "working"),
        None,
    )


def test_low_confidence_and_needs_review_go_to_triage(rules) -> None:
    low = rules.decide(facts(confidence=0.2), explain=True)
    assert low.is_triage and low.responsible == "kcc"
    assert "below the triage threshold 0.3" in (low.triage_reason or "")
    # Rules with a needs_review or confidence condition are still evaluated; the others are skipped.
    outcomes = {t.rule_id: t.outcome for t in low.trace}
    assert outcomes.pop("zorg-onzeker") == outcomes.pop("afval-engels") == "not_matched"
    assert set(outcomes.values()) == {"skipped_unsure"}
    review = rules.decide(facts(needs_review=True))
    assert review.is_triage and review.sla == Sla(2, "working")
    assert review.service_promise == "Binnen 2 werkdagen bij de juiste afdeling."


def test_a_rule_that_addresses_unsure_signals_is_evaluated_for_them(rules) -> None:
    decision = rules.decide(facts(topic="zorg", needs_review=True))
    assert decision.rule_id == "zorg-onzeker"
    assert decision.responsible == "sociaal" and decision.partners == ("welzijn-west",)
    # The same rule does not match a signal the classifier was sure of.
    assert rules.decide(facts(topic="zorg")).is_triage


def test_office_hours_channel_and_kind(rules) -> None:
    assert rules.decide(facts(received_at=WEEKEND)).rule_id == "afval-buiten-kantoortijd"
    assert rules.decide(facts(received_at=WEEKEND, channel="phone")).rule_id == "afval"
    assert rules.decide(facts(received_at=WEEKEND, kind="question")).rule_id == "afval"
    # Christmas Day on a Friday at noon is not office time.
    christmas = datetime(2026, 12, 25, 11, 0, tzinfo=UTC)
    assert rules.decide(facts(received_at=christmas)).rule_id == "afval-buiten-kantoortijd"


def test_language_confidence_range_and_area(rules) -> None:
    english = {"language": "en", "area": "centrum", "confidence": 0.7}
    decision = rules.decide(facts(**english), explain=True)
    assert decision.rule_id == "afval-engels" and decision.informed == ("kcc",)
    reasons = {t.rule_id: t.reasons for t in decision.trace}["afval-engels"]
    assert "confidence 0.700 is within [0.5, 1.0]" in reasons
    assert rules.decide(facts(**{**english, "area": "west"})).rule_id == "afval"
    assert rules.decide(facts(**{**english, "confidence": 0.4})).rule_id == "afval"
    not_matched = rules.decide(facts(**{**english, "language": "nl"}), explain=True).trace
    assert any("language 'nl' is not one of ['en']" in r for t in not_matched for r in t.reasons)


def test_no_matching_rule_falls_back_to_triage(rules) -> None:
    decision = rules.decide(facts(topic="verkeer"))
    assert decision.is_triage and decision.triage_reason == "no rule named a responsible department"


def test_escalation_steps_default_and_per_rule(rules) -> None:
    assert [s.after_days for s in rules.escalation_for("afval")] == [0, 3]
    assert rules.escalation_for("afval")[1].inform == ("handhaving",)


def test_due_dates_in_working_and_calendar_days(rules) -> None:
    friday = datetime(2026, 12, 18, 10, 0, tzinfo=UTC)
    # Monday 21, Tuesday 22, Wednesday 23, Thursday 24, (Friday 25 is a holiday), Monday 28.
    assert rules.due_at(friday, Sla(5, "working")).date() == date(2026, 12, 28)
    assert rules.due_at(friday, Sla(5, "calendar")).date() == date(2026, 12, 23)
    assert add_working_days(friday, 1).date() == date(2026, 12, 21)
    assert rules.working_days_between(friday, datetime(2026, 12, 28, 10, 0, tzinfo=UTC)) == 5


@pytest.mark.parametrize(
    ("change", "message", "line"),
    [
        (
            ("    then: {responsible: afval, sla_days: 5}", "    then: {responsible: afvall, sla_days: 5}"),
            "unknown department 'afvall'",
            38,
        ),
        (("partners: [woonpartners]", "partners: [woonpartner]"), "unknown partner 'woonpartner'", 23),
        (("when: {topic: afval}", "when: {topic: afvla}"), "unknown topic 'afvla'", 37),
        (("subtopic: [schimmel]", "subtopic: [schimel]"), "unknown subtopic 'schimel'", 21),
        (("when: {district: [noord]}", "when: {wijk: [noord]}"), "unknown condition 'wijk'", 17),
        (("kind: report}", "kind: melding}"), "unknown kind 'melding'", 31),
        (("priority: urgent", "priority: asap"), "priority must be one of", 15),
        (("  - id: wonen\n", "  - id: afval\n"), "rule id 'afval' is used twice", 36),
        (("max: 1.0}", "max: 1.5}"), "confidence max must be a number from 0 to 1", 34),
        (("type: calendar}", "type: lunar}"), "sla.type must be", 15),
    ],
)
def test_invalid_rules_are_refused_with_the_line(change: tuple[str, str], message: str, line: int) -> None:
    old, new = change
    assert old in RULES
    with pytest.raises(RulesError) as info:
        parse_rules(RULES.replace(old, new, 1), "gouda/rules.yaml", VOCABULARY)
    problem = next(p for p in info.value.problems if message in p)
    assert problem.startswith(f"gouda/rules.yaml line {line}:"), problem


def test_every_problem_is_listed_and_broken_yaml_names_its_line() -> None:
    text = RULES.replace("responsible: afvall", "x").replace(
        "then: {responsible: afval, sla_days: 5}", "then: {responsible: nobody}"
    )
    text = text.replace("when: {topic: afval}", "when: {topic: nothing}")
    with pytest.raises(RulesError) as info:
        parse_rules(text, "rules.yaml", VOCABULARY)
    assert len(info.value.problems) == 2
    with pytest.raises(RulesError, match=r"rules.yaml line 4: not valid YAML"):
        parse_rules("version: 1\ntriage: {responsible: kcc}\nrules: [ {id: a\n", "rules.yaml", VOCABULARY)


def test_a_rule_that_stops_needs_a_responsible_department() -> None:
    text = "triage: {responsible: kcc}\nrules:\n  - id: a\n    then: {informed: [afval]}\n"
    with pytest.raises(
        RulesError, match="line 4: rule 'a': a rule that does not continue needs 'responsible'"
    ):
        parse_rules(text, "rules.yaml", VOCABULARY)


def _write(folder: Path, text: str) -> None:
    path = folder / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    stamp = time.time_ns() + 2_000_000_000
    os.utime(path, ns=(stamp, stamp))


def test_the_cache_hot_reloads_and_keeps_the_last_good_version(tmp_path: Path) -> None:
    folder = tmp_path / "gouda"
    folder.mkdir()
    (folder / "departments.yaml").write_text(
        yaml.safe_dump({"departments": [{"code": c} for c in sorted(VOCABULARY.departments or ())]}),
        encoding="utf-8",
    )
    (folder / "partners.yaml").write_text(
        yaml.safe_dump({"partners": [{"code": "woonpartners"}, {"code": "welzijn-west"}]}), encoding="utf-8"
    )
    reloads = []
    cache = RulesCache(tmp_path, on_reload=reloads.append)
    _write(folder, RULES)
    assert cache.get("gouda").version == 7
    assert cache.get("gouda") is cache.get("gouda")  # unchanged files are not read again
    _write(folder, RULES.replace("version: 7", "version: 8"))
    assert cache.get("gouda").version == 8
    _write(
        folder,
        RULES.replace("version: 7", "version: 9").replace(
            "responsible: wonen, informed", "responsible: nobody, informed"
        ),
    )
    assert cache.get("gouda").version == 8  # refused: the last good version stays in force
    assert "unknown department 'nobody'" in cache.errors["gouda"]
    assert cache.get("gouda").version == 8
    assert [(r.ok, r.version) for r in reloads] == [(True, 7), (True, 8), (False, None)]
    # Removing a department that a rule names is refused too: the vocabulary is watched.
    (folder / "departments.yaml").write_text(
        yaml.safe_dump({"departments": [{"code": "kcc"}]}), encoding="utf-8"
    )
    _write(folder, RULES.replace("version: 7", "version: 10"))
    assert cache.get("gouda").version == 8
    with pytest.raises(RulesError):
        RulesCache(tmp_path).get("gouda")


def test_the_topic_index_gives_the_same_decisions_as_evaluating_every_rule() -> None:
    import random

    rng = random.Random(3)
    topics = ["afval", "wonen", "overlast", "zorg", "verkeer"]
    entries = []
    for index in range(60):
        when: dict[str, object] = {}
        if index % 4:
            when["topic"] = rng.sample(topics, rng.randint(1, 2))
        if index % 3 == 0:
            when["channel"] = ["app"]
        entries.append(
            {
                "id": f"r{index}",
                "when": when,
                "continue": index % 5 == 0,
                "then": {
                    "responsible": rng.choice(["afval", "wonen", "kcc"]),
                    "informed": [rng.choice(["verkeer", "sociaal"])],
                },
            }
        )
    rules = parse_rules(
        yaml.safe_dump({"triage": {"responsible": "kcc"}, "rules": entries}), "r.yaml", VOCABULARY
    )
    for _ in range(500):
        signal = facts(topic=rng.choice([*topics, "elders"]), channel=rng.choice(["app", "web"]))
        fast, explained = rules.decide(signal), rules.decide(signal, explain=True)
        assert (fast.rule_id, fast.matched, fast.informed) == (
            explained.rule_id,
            explained.matched,
            explained.informed,
        )


SHIPPED_TENANTS = sorted(
    folder
    for folder in (Path(__file__).resolve().parents[3] / "config" / "tenants").iterdir()
    if folder.is_dir()
)


@pytest.mark.parametrize("folder", SHIPPED_TENANTS, ids=lambda folder: folder.name)
def test_shipped_promises_speak_every_language_of_their_tenant(folder: Path) -> None:
    """A plain-text promise reaches every resident as it is: in a tenant with Dutch and English an
    English-speaking resident read "We bekijken uw melding …" in an English mail. The shipped
    folders are what `make run` and new municipalities start from, so each of their promises is
    given in every language the tenant names."""
    languages = yaml.safe_load((folder / "tenant.yaml").read_text(encoding="utf-8"))["languages"]
    rules = parse_rules((folder / "rules.yaml").read_text(encoding="utf-8"), f"{folder.name} rules.yaml")
    actions = {"triage": rules.triage} | {rule.id: rule.action for rule in rules.rules}
    promises = {name: action.service_promise for name, action in actions.items() if action.service_promise}
    assert promises, "the tenant's rules make no promise at all"
    for name, promise in promises.items():
        assert isinstance(promise, dict), f"{name}: a promise in one language only"
        assert sorted(promise) == sorted(languages), f"{name}: {sorted(promise)} against {languages}"
        assert all(text.strip() for text in promise.values()), f"{name}: an empty promise"
