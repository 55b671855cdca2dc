"""Generated, personal-data-free event streams: for the tests, the benchmark and trying the dashboard.

Every signal gets the events the other services would publish for it (``signal.received`` or
``conversation.received``, ``signal.classified``, mostly ``signal.routed`` and status changes, some
feedback), with plausible mixes of channels, languages, topics and areas. Deterministic for a seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

from civicsignals.common.events import (
    Alternative,
    CaseStatusChanged,
    CloudEvent,
    CoarseLocation,
    ConversationReceived,
    ConversationTurn,
    EventData,
    FeedbackReceived,
    SignalClassified,
    SignalReceived,
    SignalRouted,
    make_event,
)
from civicsignals.common.ids import new_id

TOPICS: dict[str, tuple[str, list[str], float]] = {
    # topic: (responsible department, subtopics, weight)
    "afval": ("afval-en-reiniging", ["dumping", "container", "grofvuil"], 0.22),
    "wegen-verkeer": ("openbare-ruimte", ["bestrating", "verkeerslicht", "fietspad"], 0.16),
    "groen-water": ("groen-en-water", ["boom", "gras", "water"], 0.10),
    "overlast-en-veiligheid": ("handhaving", ["geluid", "parkeren", "hangjongeren"], 0.12),
    "burgerzaken": ("burgerzaken", ["bsn-registratie", "paspoort", "verhuizing"], 0.12),
    "belastingen": ("belastingen", ["aanslag", "kwijtschelding"], 0.07),
    "zorg-en-welzijn": ("sociaal-domein", ["wmo", "jeugd"], 0.07),
    "werk-en-inkomen": ("werk-en-inkomen", ["bijstand", "schulden"], 0.06),
    "wonen": ("wonen", ["woningcorporatie-onderhoud", "woningzoeken"], 0.05),
    "verlichting": ("openbare-ruimte", ["lantaarnpaal"], 0.03),
    # Never drawn at random: for tests that need a topic with a handful of signals.
    "begraafplaatsen": ("openbare-ruimte", ["onderhoud"], 0.0),
    # ... and a topic of the default taxonomy with a long name, for the charts' layout.
    "overlast-van-en-door-personen-of-groepen": ("handhaving", ["hangjongeren"], 0.0),
}
AREAS = ("centrum", "noord", "oost", "west", "zuid", "korte-akkeren", "bloemendaal", "goverwelle")
CHANNELS = (
    ("web", 0.45),
    ("app", 0.25),
    ("email", 0.12),
    ("phone", 0.08),
    ("counter", 0.05),
    ("open311", 0.05),
)
LANGUAGES = (("nl", 0.82), ("en", 0.11), ("tr", 0.03), ("pl", 0.02), ("ar", 0.02))
KINDS = (("report", 0.55), ("complaint", 0.15), ("question", 0.2), ("idea", 0.05), ("compliment", 0.05))
NOTES = (
    "Opgelost: de melding is afgehandeld door de buitendienst.",
    "We hebben de situatie ter plaatse bekeken en hersteld.",
    "Resolved: our team fixed this on site.",
    "De vraag is beantwoord en de uitleg op de website verbeterd.",
)


def _pick(rng: random.Random, options: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([o for o, _ in options], weights=[w for _, w in options])[0]


def _event(tenant: str, service: str, data: EventData, at: datetime) -> CloudEvent:
    event = make_event(tenant=tenant, service=service, data=data)
    event.time = at
    return event


def signal_events(
    rng: random.Random,
    tenant: str,
    received_at: datetime,
    *,
    topic: str | None = None,
    area: str | None = None,
    language: str | None = None,
    passive: bool | None = None,
    now: datetime | None = None,
) -> list[CloudEvent]:
    """The events of one signal's life, in the order the services would publish them."""
    signal_id = new_id()
    topic = topic or rng.choices(list(TOPICS), weights=[t[2] for t in TOPICS.values()])[0]
    department, subtopics, _ = TOPICS[topic]
    subtopic = rng.choice(subtopics)
    area = area or rng.choice(AREAS)
    language = language or _pick(rng, LANGUAGES)
    passive = rng.random() < 0.25 if passive is None else passive
    kind = _pick(rng, KINDS)
    tracking = f"T{signal_id[-10:]}"
    events: list[CloudEvent] = []
    if passive:
        channel = rng.choice(("phone", "chat"))
        events.append(
            _event(
                tenant,
                "intake",
                ConversationReceived(
                    signal_id=signal_id,
                    channel=channel,
                    turns=[
                        ConversationTurn(speaker="citizen", text=f"Vraag over {subtopic} [PHONE]"),
                        ConversationTurn(speaker="agent", text="Ik zoek het voor u uit."),
                    ],
                    started_at=received_at,
                    duration_s=rng.uniform(60, 900),
                    team="kcc",
                ),
                received_at,
            )
        )
    else:
        channel = _pick(rng, CHANNELS)
        events.append(
            _event(
                tenant,
                "intake",
                SignalReceived(
                    signal_id=signal_id,
                    tracking_code=tracking,
                    kind=kind,
                    channel=channel,
                    text=f"Melding over {subtopic} bij [ADDRESS], bel [PHONE].",
                    language=language if rng.random() < 0.5 else None,
                    location=CoarseLocation(lat=52.01, lon=4.71, area=area),
                    received_at=received_at,
                    has_contact=True,
                    source="portal",
                ),
                received_at,
            )
        )
    classified_at = received_at + timedelta(seconds=rng.uniform(1, 30))
    events.append(
        _event(
            tenant,
            "classifier",
            SignalClassified(
                signal_id=signal_id,
                topic=topic,
                subtopic=subtopic,
                confidence=0.8,
                alternatives=[Alternative(topic=topic, subtopic=subtopic, probability=0.8)],
                language=language,
                kind=kind,
                needs_review=False,
                model_version="synthetic",
            ),
            classified_at,
        )
    )
    if rng.random() < 0.15:
        return events
    case_id = new_id()
    routed_at = classified_at + timedelta(seconds=rng.uniform(1, 10))
    events.append(
        _event(
            tenant,
            "routing",
            SignalRouted(
                signal_id=signal_id,
                case_id=case_id,
                tracking_code=tracking,
                responsible=department,
                priority="normal",
                rule_id="synthetic",
                due_at=routed_at + timedelta(days=5),
            ),
            routed_at,
        )
    )
    steps = [("received", "assigned"), ("assigned", "in_progress")]
    resolve = rng.random() < 0.75
    resolved_at = routed_at + timedelta(hours=rng.expovariate(1 / 60))
    if resolve and (now is None or resolved_at <= now):
        steps.append(("in_progress", "resolved"))
    at = routed_at
    for sequence, (old, new) in enumerate(steps, start=1):
        at = resolved_at if new == "resolved" else at + timedelta(minutes=rng.uniform(5, 240))
        events.append(
            _event(
                tenant,
                "routing",
                CaseStatusChanged(
                    case_id=case_id,
                    signal_id=signal_id,
                    tracking_code=tracking,
                    **{"from": old},
                    to=new,
                    public_note=rng.choice(NOTES) if new == "resolved" else None,
                    actor="department",
                    sequence=sequence,
                ),
                at,
            )
        )
    if steps[-1][1] == "resolved" and rng.random() < 0.35:
        score = rng.choices([1, 2, 3, 4, 5], weights=[1, 1, 2, 4, 3])[0]
        events.append(
            _event(
                tenant,
                "intake",
                FeedbackReceived(signal_id=signal_id, case_id=case_id, satisfied=score >= 4, score=score),
                at + timedelta(hours=rng.uniform(1, 48)),
            )
        )
    return events


def generate(
    tenant: str, start: date, days: int, per_day: float, *, seed: int = 1, now: datetime | None = None
) -> Iterator[CloudEvent]:
    """Signals over ``days`` days from ``start`` (about ``per_day`` a day, fewer at weekends)."""
    rng = random.Random(seed)
    for offset in range(days):
        day = start + timedelta(days=offset)
        weekday_factor = 0.45 if day.weekday() >= 5 else 1.1
        count = max(0, round(rng.gauss(per_day * weekday_factor, (per_day * weekday_factor) ** 0.5)))
        for _ in range(count):
            received_at = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
                seconds=rng.uniform(6 * 3600, 21 * 3600)
            )
            yield from signal_events(rng, tenant, received_at, now=now)
