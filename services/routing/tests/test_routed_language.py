"""``signal.routed`` carries the language the classifier detected, so that notifier can write to a
resident whose portal and intake gave none (intake's guess needs a longer text) in that language."""

from __future__ import annotations

import pytest

from civicsignals.common.events import SignalRouted

from .conftest import Api


@pytest.mark.parametrize("language", ["en", "nl", None])
async def test_signal_routed_carries_the_classifiers_language(api: Api, language: str | None) -> None:
    case = await api.route(language=language, text="Streetlight broken")
    assert case.language == language
    [(subject, event)] = await api.outbox("signal.routed")
    assert subject == SignalRouted.bus_subject("gouda")
    assert event["data"]["signal_id"] == case.signal_id
    assert "language" in event["data"] and event["data"]["language"] == language
    assert SignalRouted.model_validate(event["data"]).language == language


def test_a_signal_routed_from_before_the_field_still_reads() -> None:
    old = {
        "signal_id": "01KBH6Y3A7J6WQ2C8E3D5F7G9H",
        "case_id": "01KBH6Y3C2X8B4N6M1P3R5T7V9",
        "tracking_code": "7KQ2-M9XD-4HTC",
        "responsible": "afval-en-reiniging",
        "priority": "normal",
        "rule_id": "afval",
    }
    assert SignalRouted.model_validate(old).language is None
