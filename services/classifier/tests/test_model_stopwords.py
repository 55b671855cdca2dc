"""Which features a model gets: stop words kept when trained on data, dropped for the cold start."""

from __future__ import annotations

import json
from pathlib import Path

from civicsignals.classifier.model import (
    DEFAULT_FEATURE_CONFIG,
    TRAINED_FEATURE_CONFIG,
    TopicModel,
    build_default_bundle,
    export_bundle,
    train,
)
from civicsignals.classifier.model.features import feature_strings

TEXTS = ["waarom is mijn pas geweigerd", "mijn pas is geweigerd", "wanneer komt mijn pas", "pas komt niet"]
LABELS = ["pas/geweigerd-waarom", "pas/geweigerd", "pas/levering", "pas/levering"]


def test_trained_models_keep_stop_words(tmp_path: Path) -> None:
    assert not TRAINED_FEATURE_CONFIG.stop_words and DEFAULT_FEATURE_CONFIG.stop_words
    # Apart from the stop words, the two feature settings are the same.
    assert {**TRAINED_FEATURE_CONFIG.to_dict(), "stop_words": True} == DEFAULT_FEATURE_CONFIG.to_dict()
    model = train(TEXTS, LABELS)
    assert model.feature_config == TRAINED_FEATURE_CONFIG
    # "waarom" (why) is a stop word: kept, it is a feature the model can weigh.
    assert "w:waarom" in feature_strings(TEXTS[0], model.feature_config)
    assert "w:waarom" not in feature_strings(TEXTS[0], DEFAULT_FEATURE_CONFIG)
    export_bundle(model, tmp_path / "b")
    card = json.loads((tmp_path / "b" / "card.json").read_text())
    assert card["features"]["stop_words"] is False
    # Serving rebuilds the features from the card, so it agrees with training.
    served = TopicModel(tmp_path / "b")
    assert served.feature_config == TRAINED_FEATURE_CONFIG
    assert served.predict(["waarom is mijn pas geweigerd"])[0].subtopic == "geweigerd-waarom"


def test_coldstart_still_drops_stop_words(tmp_path: Path) -> None:
    bundle = build_default_bundle(tmp_path / "cold")
    card = json.loads((Path(bundle) / "card.json").read_text())
    assert card["features"]["stop_words"] is True
