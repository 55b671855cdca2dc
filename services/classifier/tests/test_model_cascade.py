"""The cascade: an n-gram head answers the texts it is sure of, only the others go to the encoder.

Real parts throughout: the sentence encoder (onnxruntime with its custom ops), scikit-learn,
onnxruntime serving the bundle. The encoder that records what it was asked to embed is the real
encoder with a list beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from civicsignals.classifier.data import read_labelled
from civicsignals.classifier.model import BundleError, TopicModel, TrainedModel, export_bundle, train
from civicsignals.classifier.model.encoder import SentenceEncoder, default_encoder
from civicsignals.classifier.model.training import BUNDLE_FORMAT, CASCADE_BUNDLE_FORMAT, with_cascade
from civicsignals.classifier.pipeline import (
    TrainOptions,
    _class_names,
    _fit,
    _holdout_split,
    choose_cascade_threshold,
    train_bundle,
)

PROBE = [
    "de container is vol",
    "verkeerslicht kapot",
    "boom omgewaaid",
    "zomaar iets anders",
    "Melding: gras te hoog bij de speeltuin",
    "het licht op de hoek doet het niet en de bak zit vol",
    "vuil",
    "Hallo, de stoplichten en de bomen in onze straat.",
    "grofvuil",
    "lamp",
    "er is iets kapot",
    "tak op de weg",
]


class RecordingEncoder(SentenceEncoder):
    """The real encoder, remembering every text it was asked to embed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.seen: list[str] = []

    def encode(self, texts):  # type: ignore[no-untyped-def]
        self.seen.extend(texts)
        return super().encode(texts)


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return default_encoder()


def _models(rows: list[dict[str, str]], encoder: SentenceEncoder) -> tuple[TrainedModel, TrainedModel]:
    texts = [r["text"] for r in rows]
    labels = [f"{r['topic']}/{r['subtopic']}" for r in rows]
    full = train(texts, labels, embeddings=encoder.encode(texts), encoder=encoder.describe(), solver="lbfgs")
    # A weaker head (strong regularisation), so that its confidences spread over the probe.
    head = train(texts, labels, C=0.3)
    return full, head


def _middle_threshold(head: TrainedModel) -> float:
    """A threshold between two of the head's confidences on the probe, half of them on each side."""
    conf = np.sort(head.predict_proba(PROBE).max(axis=1))
    middle = len(conf) // 2
    return float((conf[middle - 1] + conf[middle]) / 2)


# ---------------------------------------------------------------------------- choosing the threshold


def test_threshold_is_the_lowest_where_the_head_loses_no_more_than_it_wins() -> None:
    conf = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    head = np.array([True, True, True, False, True, False])
    full = np.array([True, True, True, True, False, True])
    # Accepting 0.7 loses one text (the full model was right), 0.6 wins it back, 0.5 loses again.
    assert choose_cascade_threshold(conf, head, full) == (0.6, 5)
    # The head wrong on its most confident text where the full model was right: no threshold.
    assert (
        choose_cascade_threshold(np.array([0.9, 0.8]), np.array([False, True]), np.array([True, True]))
        is None
    )
    # Equal confidences are accepted together: the cut cannot fall between them.
    tied = choose_cascade_threshold(
        np.array([0.9, 0.8, 0.8]), np.array([True, True, False]), np.array([True, True, True])
    )
    assert tied == (0.9, 1)
    assert choose_cascade_threshold(np.zeros(0), np.zeros(0, bool), np.zeros(0, bool)) is None


def test_train_bundle_chooses_the_threshold_on_held_out_data_only(
    tmp_path: Path, reports_csv: Path, encoder: SentenceEncoder
) -> None:
    """The card's cascade threshold is the rule applied to the held-out part, with models fitted
    on the rest: recomputed here from the same split, it is the same number."""
    data = read_labelled(reports_csv)
    options = TrainOptions(C_grid=(10.0,), learning_curve=False)
    card = train_bundle(data, tmp_path / "m", options=options, encoder=encoder, progress=lambda _: None)
    assert card["format"] == CASCADE_BUNDLE_FORMAT
    block = card["cascade"]

    train_idx, held_idx, _ = _holdout_split(data, options.holdout, options.seed)
    classes = _class_names(data.labels)
    embeddings = encoder.encode(data.texts)
    tr_texts = [data.texts[i] for i in train_idx]
    tr_classes = [classes[i] for i in train_idx]
    ho_texts = [data.texts[i] for i in held_idx]
    truth = np.array([classes[i] for i in held_idx])
    full = _fit(tr_texts, tr_classes, embeddings[train_idx], encoder, options, 10.0)
    head = _fit(tr_texts, tr_classes, None, None, options, 10.0)
    full_proba = full.predict_proba(ho_texts, embeddings[held_idx])
    head_proba = head.predict_proba(ho_texts)
    names = np.array(full.classes)
    expected = choose_cascade_threshold(
        head_proba.max(axis=1), names[head_proba.argmax(1)] == truth, names[full_proba.argmax(1)] == truth
    )
    assert expected is not None
    assert block["threshold"] == pytest.approx(expected[0], abs=1e-9)
    assert block["heldout_n"] == len(held_idx) == card["heldout"]["n"]
    assert block["skipped_encoder"] == round(expected[1] / len(held_idx), 4)
    # On held-out data, the cascade is at least as accurate as the full model (the rule).
    assert block["accuracy"] >= block["full_accuracy"]
    served = TopicModel(tmp_path / "m", encoder=encoder)
    assert served.cascade_threshold == block["threshold"]

    # --no-cascade: a bundle like before the cascade (format /2, every text encoded).
    plain = train_bundle(
        data,
        tmp_path / "plain",
        options=TrainOptions(C_grid=(10.0,), learning_curve=False, cascade=False),
        encoder=encoder,
        progress=lambda _: None,
    )
    assert plain["format"] == BUNDLE_FORMAT and plain["cascade"] is None
    assert TopicModel(tmp_path / "plain", encoder=encoder).predict_proba_routed(PROBE)[1].all()


# ---------------------------------------------------------------------------------------- serving


def test_onnxruntime_cascade_equals_the_scikit_learn_cascade(
    tmp_path: Path, reports_rows: list[dict[str, str]], encoder: SentenceEncoder
) -> None:
    full, head = _models(reports_rows, encoder)
    threshold = _middle_threshold(head)
    trained = with_cascade(full, head, threshold)
    served = TopicModel(export_bundle(trained, tmp_path / "b"), encoder=encoder)
    got, used = served.predict_proba_routed(PROBE)
    expected, hard = trained.cascade_proba_from_features(
        served._extractor.rows(PROBE), PROBE, encode=encoder.encode
    )
    assert 0 < used.sum() < len(PROBE)  # both branches are exercised
    assert np.array_equal(used, hard)
    assert np.abs(got - expected).max() < 1e-5
    assert np.array_equal(got.argmax(1), expected.argmax(1))
    # The same with all the texts' embeddings given (each side picks the rows it needs). Not
    # compared with ``got``: the encoder quantises per batch, so a text embedded among all twelve
    # differs a little from the same text embedded among the six that needed it.
    every = encoder.encode(PROBE)
    given = served.predict_proba(PROBE, embeddings=every)
    assert np.abs(trained.predict_proba(PROBE, every) - given).max() < 1e-5
    card = json.loads((tmp_path / "b" / "card.json").read_text())
    assert card["cascade"]["threshold"] == threshold
    assert card["onnx"]["outputs"]["use_encoder"] == "bool[N]"


def test_texts_below_the_threshold_go_to_the_encoder_and_only_they(
    tmp_path: Path, reports_rows: list[dict[str, str]], encoder: SentenceEncoder
) -> None:
    full, head = _models(reports_rows, encoder)
    threshold = _middle_threshold(head)
    bundle = export_bundle(with_cascade(full, head, threshold), tmp_path / "b")
    recording = RecordingEncoder(encoder.path)
    served = TopicModel(bundle, encoder=recording)
    got, used = served.predict_proba_routed(PROBE)

    head_proba = head.predict_proba(PROBE)
    below = head_proba.max(axis=1) < threshold
    assert sorted(recording.seen) == sorted(t for t, b in zip(PROBE, below, strict=True) if b)
    assert np.array_equal(used, below)
    # Those below got the full model's answer (their embeddings made together, as serving makes
    # them: the encoder quantises per batch), those above the n-gram head's.
    hard = [t for t, b in zip(PROBE, below, strict=True) if b]
    assert np.abs(got[below] - full.predict_proba(hard, encoder.encode(hard))).max() < 1e-5
    full_proba = full.predict_proba(PROBE, encoder.encode(PROBE))
    assert np.abs(got[~below] - head_proba[~below]).max() < 1e-5

    # Without the cascade, every text is encoded and answered by the full model.
    recording.seen.clear()
    every = TopicModel(bundle, encoder=recording, cascade=False)
    assert every.cascade_threshold is None
    assert np.abs(every.predict_proba(PROBE) - full_proba).max() < 1e-5
    assert sorted(recording.seen) == sorted(PROBE)
    # Threshold 1: nothing is sure enough, so every text is encoded, as without a cascade.
    recording.seen.clear()
    strict = TopicModel(export_bundle(with_cascade(full, head, 1.0), tmp_path / "strict"), encoder=recording)
    assert np.abs(strict.predict_proba(PROBE) - full_proba).max() < 1e-5
    assert len(recording.seen) == len(PROBE)


def test_a_bundle_without_a_cascade_still_loads_and_encodes_every_text(
    tmp_path: Path, reports_rows: list[dict[str, str]], encoder: SentenceEncoder
) -> None:
    full, _ = _models(reports_rows, encoder)
    bundle = export_bundle(full, tmp_path / "old")
    card_path = bundle / "card.json"
    card = json.loads(card_path.read_text())
    assert card["format"] == BUNDLE_FORMAT and "encoded" not in card["onnx"]["inputs"]
    del card["cascade"]  # as written before the cascade existed
    card_path.write_text(json.dumps(card))
    recording = RecordingEncoder(encoder.path)
    served = TopicModel(bundle, encoder=recording)
    assert served.cascade_threshold is None
    got, used = served.predict_proba_routed(PROBE)
    assert used.all() and sorted(recording.seen) == sorted(PROBE)
    assert np.abs(got - full.predict_proba(PROBE, encoder.encode(PROBE))).max() < 1e-5


def test_a_cascade_graph_without_its_threshold_is_refused(
    tmp_path: Path, reports_rows: list[dict[str, str]], encoder: SentenceEncoder
) -> None:
    full, head = _models(reports_rows, encoder)
    bundle = export_bundle(with_cascade(full, head, 0.5), tmp_path / "b")
    card_path = bundle / "card.json"
    card = json.loads(card_path.read_text())
    card["cascade"] = None
    card_path.write_text(json.dumps(card))
    with pytest.raises(BundleError, match="cascade"):
        TopicModel(bundle, encoder=encoder)


def test_with_cascade_refuses_a_head_fitted_on_other_texts(
    reports_rows: list[dict[str, str]], encoder: SentenceEncoder
) -> None:
    full, _ = _models(reports_rows, encoder)
    other = train([r["text"] for r in reports_rows[:-8]], [r["topic"] + "/x" for r in reports_rows[:-8]])
    with pytest.raises(ValueError, match="same texts"):
        with_cascade(full, other, 0.5)
    ngrams_only = train([r["text"] for r in reports_rows], [r["topic"] + "/x" for r in reports_rows])
    with pytest.raises(ValueError, match="encoder"):
        with_cascade(ngrams_only, ngrams_only, 0.5)
