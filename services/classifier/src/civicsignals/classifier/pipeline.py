"""Train, evaluate and apply a topic model on labelled data: what the commands do, without argparse.

``train`` in detail (:func:`train_bundle`):

1. the texts' sentence embeddings are computed once (when the encoder is on, the default);
2. a held-out part is set aside: the newest ``holdout`` share when a date column is named
   (as the model will be used: on reports newer than its training data; the dates are parsed, so
   ``dd-mm-yyyy`` sorts by time, not as text), otherwise a stratified random share (seed 0, so
   the same data gives the same split). Examples marked ``train_only`` (the taxonomy's cold-start
   examples that ``retrain`` adds) are never held out;
3. models are fitted on the rest with each ``C`` of a small grid (3, 10, 30: how strongly to
   regularise suits the data's size and noise) and measured on the held-out part; the best ``C``
   is kept, with its accuracy, macro-F1 and per-class figures; the review **threshold** is chosen
   there (:func:`conformal_threshold`, optionally raised by :func:`choose_threshold`), and a
   **learning curve** is measured (the same held-out part, models fitted on the first 100, 500, 2,000 and all
   training examples of a fixed shuffle);
   With the encoder, an **n-gram head** (the same logistic regression on the n-gram features
   alone, same ``C``) is fitted on the training part too, and the **cascade threshold** is chosen
   on the held-out part (:func:`choose_cascade_threshold`): texts whose n-gram-head confidence
   reaches it skip the encoder when the model serves. The held-out figures and the review
   threshold are then those of the cascade, as served;
4. the bundle's model (and n-gram head) is then fitted on *all* the data, so no labelled report
   is wasted; its card carries the held-out figures of step 3, which are thus a slightly
   pessimistic estimate.

The model is :func:`~.model.training.train`: hashed word, bigram and character n-gram tf-idf
(plus the sentence embedding) and a multinomial logistic regression, exported to ONNX.
"""

from __future__ import annotations

import csv
import json
import os
import random
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from tqdm import tqdm

from civicsignals.classifier.data import (
    DATE_FORMATS_HELP,
    Label,
    LabelledData,
    TextRows,
    label_name,
    parse_date,
)
from civicsignals.classifier.model.coldstart import coldstart_examples
from civicsignals.classifier.model.encoder import SentenceEncoder, default_encoder
from civicsignals.classifier.model.inference import TopicModel
from civicsignals.classifier.model.training import (
    TrainedModel,
    export_bundle,
    train,
    training_data_digest,
    with_cascade,
)
from civicsignals.classifier.taxonomy import Taxonomy, split_label

__all__ = [
    "LEARNING_CURVE_SIZES",
    "Metrics",
    "TrainOptions",
    "choose_cascade_threshold",
    "choose_threshold",
    "conformal_threshold",
    "evaluate",
    "measure",
    "predict_rows",
    "retraining_data",
    "train_bundle",
    "write_predictions",
    "write_report",
]

#: Training-set sizes of the learning curve (plus "all").
LEARNING_CURVE_SIZES = (100, 500, 2000)
#: Below this many held-out examples, figures and a threshold from them would be noise.
MIN_HOLDOUT = 20
#: The threshold when it cannot be measured (too little data): a coin-flip between the top two.
FALLBACK_THRESHOLD = 0.5

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TrainOptions:
    """How ``train`` and ``retrain`` fit a model; the defaults are what the commands use."""

    #: Add the multilingual sentence embedding to the n-gram features.
    encoder: bool = True
    #: Inverse L2 strengths to try: each is fitted on the training part and the one with the best
    #: held-out accuracy is used (the data decides how much to regularise, not a benchmark).
    C_grid: tuple[float, ...] = (3.0, 10.0, 30.0)
    #: Used when there is too little data to hold any out (the core's default).
    C: float = 10.0
    #: None fits the data as it is (best accuracy); "balanced" weighs classes equally (macro-F1).
    class_weight: Literal["balanced"] | None = None
    #: Share of the data held out to measure the model and choose its threshold.
    holdout: float = 0.1
    #: The review threshold is set so that about this share of *correct* predictions fall below it
    #: (split-conformal, :func:`conformal_threshold`): the review load spent on right answers.
    review_share: float = 0.05
    #: Optionally also the lowest confidence at which held-out predictions reach this precision
    #: (:func:`choose_threshold`); the threshold is then the higher of the two. Off by default:
    #: on data the model already gets right 90% of the time, it lets almost everything through.
    target_precision: float | None = None
    learning_curve: bool = True
    seed: int = 0
    #: None picks by features: lbfgs with the 512 dense embedding columns (newton-cg took about 7x
    #: longer on BANKING77), newton-cg for n-grams alone (where lbfgs is the slow one).
    solver: Literal["newton-cg", "lbfgs", "saga"] | None = None
    max_iter: int = 2000
    #: With the encoder: add an n-gram head so that texts it is sure of skip the encoder
    #: (:func:`choose_cascade_threshold`); needs a held-out part to choose its threshold.
    cascade: bool = True

    def describe(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder,
            "C_grid": list(self.C_grid),
            "class_weight": self.class_weight,
            "holdout": self.holdout,
            "review_share": self.review_share,
            "target_precision": self.target_precision,
            "seed": self.seed,
            "solver": self.solver,
            "cascade": self.cascade,
        }


@dataclass
class Metrics:
    """Accuracy, macro-F1 and per-class figures of predictions against the truth."""

    accuracy: float
    macro_f1: float
    n: int
    per_class: dict[str, dict[str, float | int]]
    labels: list[str]
    confusion: npt.NDArray[np.int64]

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": round(self.accuracy, 4),
            "macro_f1": round(self.macro_f1, 4),
            "n": self.n,
            "per_class": self.per_class,
        }


def measure(truth: Sequence[str], predicted: Sequence[str]) -> Metrics:
    """Metrics over the classes that occur in the truth or the predictions (as scikit-learn does)."""
    labels = sorted(set(truth) | set(predicted))
    n = len(truth)
    if n == 0:
        return Metrics(0.0, 0.0, 0, {}, labels, np.zeros((0, 0), dtype=np.int64))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    per_class = {
        label: {
            "precision": round(float(p), 4),
            "recall": round(float(r), 4),
            "f1": round(float(f), 4),
            "support": int(s),
        }
        for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    }
    accuracy = float(np.mean([t == p for t, p in zip(truth, predicted, strict=True)]))
    matrix = confusion_matrix(truth, predicted, labels=labels).astype(np.int64)
    return Metrics(accuracy, float(np.mean(f1)), n, per_class, labels, matrix)


def choose_threshold(
    confidence: npt.NDArray[np.floating], correct: npt.NDArray[np.bool_], target: float
) -> float:
    """The lowest confidence ``t`` such that the predictions with confidence >= ``t`` are right at
    least ``target`` of the time; the highest confidence seen when no ``t`` reaches it.

    Everything below ``t`` gets ``needs_review``: staff then see the uncertain signals and the
    rest flows on with the promised precision (as measured on held-out data).
    """
    if len(confidence) == 0:
        return FALLBACK_THRESHOLD
    order = np.argsort(-confidence, kind="stable")
    conf = np.asarray(confidence)[order]
    hits = np.cumsum(np.asarray(correct)[order])
    precision = hits / np.arange(1, len(conf) + 1)
    ok = np.flatnonzero(precision >= target)
    if len(ok) == 0:
        return round(float(conf[0]), 4)
    # precision[i] counts the first i+1 predictions: those with confidence >= conf[i].
    return round(float(conf[ok[-1]]), 4)


def conformal_threshold(
    confidence: npt.NDArray[np.floating], correct: npt.NDArray[np.bool_], share: float
) -> tuple[float, int, int]:
    """The review threshold by split conformal prediction; returns ``(threshold, k, n)``.

    Of the ``n`` held-out predictions that were right, the threshold is the ``k``-th lowest
    confidence, ``k = floor(share * (n + 1))`` (at least 1). For a new text like the held-out
    ones (exchangeable) whose prediction is right, the chance that its confidence falls below
    the threshold, and so that a right answer is sent to review, is then at most
    ``k / (n + 1) <= share`` (``1 / (n + 1)`` when ``k`` had to be raised to 1 on a tiny
    held-out part). Wrong predictions are not used: the rule fixes the cost of review among
    right answers and lets the model's own confidence decide how many wrong ones (and texts
    of no known class, which training never saw) fall below it. Rounded *down* to 4 decimals
    so that the ``k``-th confidence itself still passes. With no right prediction at all, the
    fallback threshold.
    """
    scores = np.sort(np.asarray(confidence, dtype=np.float64)[np.asarray(correct, dtype=bool)])
    n = len(scores)
    if n == 0:
        return FALLBACK_THRESHOLD, 0, 0
    k = max(1, int(np.floor(share * (n + 1))))
    return float(np.floor(scores[k - 1] * 10_000) / 10_000), k, n


def choose_cascade_threshold(
    head_confidence: npt.NDArray[np.floating],
    head_correct: npt.NDArray[np.bool_],
    full_correct: npt.NDArray[np.bool_],
) -> tuple[float, int] | None:
    """The cascade threshold from held-out data: returns ``(threshold, accepted)`` or None.

    The held-out texts are ranked by the n-gram head's confidence. For a threshold ``t`` the
    texts with confidence >= ``t`` would keep the n-gram head's answer; among them, count the
    texts the full model gets right and the head wrong (lost by the cascade) and those the head
    gets right and the full model wrong (won). The threshold is the lowest confidence at which
    the accepted texts lose no more than they win: there the cascade is, on held-out data, at
    least as accurate as the full model, and every text below it goes to the encoder. None when
    no threshold qualifies (then every text is encoded). The threshold sits exactly on a held-out
    confidence (ties accepted together), so the held-out texts accepted are exactly ``accepted``.
    """
    conf = np.asarray(head_confidence, dtype=np.float64)
    if len(conf) == 0:
        return None
    order = np.argsort(-conf, kind="stable")
    conf = conf[order]
    head = np.asarray(head_correct, dtype=bool)[order]
    full = np.asarray(full_correct, dtype=bool)[order]
    balance = np.cumsum(full & ~head) - np.cumsum(head & ~full)  # lost minus won, top i + 1
    # A cut may only fall after the last of equal confidences (a threshold accepts all of them).
    cut_ok = np.append(conf[1:] < conf[:-1], True)
    ok = np.flatnonzero((balance <= 0) & cut_ok)
    if len(ok) == 0:
        return None
    last = int(ok[-1])
    return float(conf[last]), last + 1


def _class_names(labels: Sequence[Label]) -> list[str]:
    # JSON keeps any category name intact (exports use spaces, capitals and slashes).
    return [json.dumps([t, s], ensure_ascii=False) for t, s in labels]


def _moments(data: LabelledData, indices: Sequence[int]) -> dict[int, datetime]:
    """The dates of ``indices`` as moments in UTC, so that the newest are found by time, not by
    the text of the dates (``31-01-2025`` sorts after ``01-12-2025`` as text)."""
    assert data.dates is not None
    moments: dict[int, datetime] = {}
    for index in indices:
        try:
            moments[index] = parse_date(data.dates[index])
        except ValueError:
            raise ValueError(
                f"example {index + 1} of {data.source or 'the data'}: its date {data.dates[index]!r} is not a "
                f"date; use {DATE_FORMATS_HELP}"
            ) from None
    return moments


def _holdout_split(data: LabelledData, fraction: float, seed: int) -> tuple[list[int], list[int], str]:
    """Indices ``(train, held_out)`` and how they were chosen.

    Only reports can be held out: examples marked ``train_only`` (a taxonomy's cold-start
    examples) are always trained on, and the share and the minimum count are of the reports.
    """
    n = len(data)
    train_only = data.train_only or [False] * n
    candidates = [i for i in range(n) if not train_only[i]]
    fixed = n - len(candidates)
    if fraction <= 0 or len(candidates) < 4 * MIN_HOLDOUT:
        return list(range(n)), [], "none"
    # Small data: hold out at least MIN_HOLDOUT examples (at most a quarter, by the test above).
    fraction = max(fraction, MIN_HOLDOUT / len(candidates))
    of_reports = (
        f" of the {len(candidates)} reports (the {fixed} cold-start examples are always trained on)"
        if fixed
        else ""
    )
    if data.dates is not None:
        moments = _moments(data, candidates)
        order = sorted(candidates, key=lambda i: (moments[i], i))
        cut = len(order) - round(len(order) * fraction)
        held_set = set(order[cut:])
        return (
            [i for i in range(n) if i not in held_set],
            sorted(held_set),
            f"newest {fraction:.0%} by date{of_reports}",
        )
    by_class: dict[Label, list[int]] = defaultdict(list)
    for index in candidates:
        by_class[data.labels[index]].append(index)
    rng = random.Random(seed)
    held: list[int] = []
    for label in sorted(by_class, key=lambda x: (x[0], x[1] or "")):
        members = by_class[label]
        rng.shuffle(members)
        take = round(len(members) * fraction)
        if len(members) - take >= 1:
            held.extend(members[:take])
    held_set = set(held)
    return (
        [i for i in range(n) if i not in held_set],
        sorted(held),
        f"stratified random {fraction:.0%}, seed {seed}{of_reports}",
    )


def _has_subtopic(labels: Sequence[Label]) -> bool:
    return any(subtopic is not None for _, subtopic in labels)


def _reconcile_levels(
    corrections: Sequence[Label], base_labels: Sequence[Label], base_name: str, warn: Progress
) -> list[Label]:
    """The corrections' labels at the level of the base data, with one line on stderr when the
    levels differ.

    A base with topics only (an export with one category column) makes a topics-only model; a
    correction's ``topic/subtopic`` next to it would be a class of its own beside its topic, and
    the two would split the topic's probability. So the corrections are reduced to their topics.
    The other way round (the base has subtopics, a correction names a topic alone) nothing can be
    added to the correction: it is kept as a topic-only label, as ``train`` keeps a row with an
    empty subtopic, and the warning says so.
    """
    with_subtopic = sum(subtopic is not None for _, subtopic in corrections)
    if not _has_subtopic(base_labels):
        if with_subtopic:
            warn(
                f"retrain: the {base_name} has topics only and {with_subtopic} of the {len(corrections)} "
                "corrections have a subtopic: the corrections were reduced to their topics, so the model "
                "predicts topics only"
            )
        return [(topic, None) for topic, _ in corrections]
    without_subtopic = len(corrections) - with_subtopic
    if without_subtopic:
        warn(
            f"retrain: {without_subtopic} of the {len(corrections)} corrections name a topic without a "
            f"subtopic while the {base_name} has subtopics: they are kept as topic-only labels, so the "
            "model may answer those topics without a subtopic"
        )
    return list(corrections)


def retraining_data(
    corrections: LabelledData,
    *,
    base: LabelledData | None = None,
    taxonomy: Taxonomy | None = None,
    warn: Progress = _stderr,
) -> LabelledData:
    """What ``retrain`` trains on: staff's corrections plus a base export, or, without one, the
    cold-start examples of ``taxonomy`` (required then).

    Corrections alone cover only the topics staff happened to correct (a few dozen reports of
    three topics, say); a model trained on them alone knows nothing else, and activating it would
    send every other report to one of those topics. The cold-start examples (the same texts the
    cold-start model is trained on: the taxonomy's names, descriptions and examples) keep every
    label of the taxonomy learnable, while the corrections, being real reports, weigh in where
    they exist. They are marked ``train_only``: the held-out figures are measured on corrections.
    A base export is not mixed with them: its categories are the municipality's own names, not
    the taxonomy's codes, and it covers its labels with real reports already.

    The result's ``extra`` (the card's ``data``) records the parts; without a base, ``sha256`` and
    ``size`` are those of the training rows as trained (one JSON ``[text, label]`` line each, the
    card's ``training_data`` digest), as there is no file to hash.
    """
    if base is not None:
        labels = base.labels + _reconcile_levels(corrections.labels, base.labels, "base data", warn)
        parts = {"corrections": len(corrections), "base": len(base)}
        data = LabelledData(
            texts=base.texts + corrections.texts,
            labels=labels,
            # A split by date needs dates on both; otherwise the split is stratified.
            dates=(base.dates + (corrections.dates or [])) if base.dates is not None else None,
            skipped_empty=base.skipped_empty + corrections.skipped_empty,
            skipped_unlabelled=base.skipped_unlabelled,
            rows=base.rows + corrections.rows,
            sha256=base.sha256,
            size=base.size,
            source=base.source,
            extra={"parts": parts},
        )
        data.has_subtopics = _has_subtopic(labels)
        return data
    if taxonomy is None:
        raise ValueError("retraining without a base export needs the taxonomy (for its cold-start examples)")
    texts, keys = coldstart_examples(taxonomy)
    coldstart_labels: list[Label] = [split_label(key) for key in keys]
    labels = _reconcile_levels(corrections.labels, coldstart_labels, "taxonomy", warn) + coldstart_labels
    all_texts = corrections.texts + texts
    sha256, size = training_data_digest(all_texts, _class_names(labels))
    parts = {"corrections": len(corrections), "coldstart": len(texts)}
    data = LabelledData(
        texts=all_texts,
        labels=labels,
        # Corrections are held out by the date they were made; cold-start examples never are.
        dates=(corrections.dates + [""] * len(texts)) if corrections.dates is not None else None,
        skipped_empty=corrections.skipped_empty,
        skipped_unlabelled=corrections.skipped_unlabelled,
        rows=corrections.rows + len(texts),
        sha256=sha256,
        size=size,
        source="",
        extra={
            "parts": parts,
            "sha256_of": "the training rows as trained (as training_data.sha256)",
            "taxonomy": {"version": taxonomy.version, "fingerprint": taxonomy.fingerprint()},
        },
        train_only=[False] * len(corrections) + [True] * len(texts),
    )
    data.has_subtopics = _has_subtopic(labels)
    return data


def _embed(encoder: SentenceEncoder, texts: Sequence[str], what: str) -> npt.NDArray[np.float32]:
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    step = encoder.batch_size * 4
    with tqdm(total=len(texts), desc=what, unit="text", disable=None, file=sys.stderr) as bar:
        for start in range(0, len(texts), step):
            chunk = texts[start : start + step]
            out[start : start + len(chunk)] = encoder.encode(chunk)
            bar.update(len(chunk))
    return out


def _fit(
    texts: Sequence[str],
    classes: Sequence[str],
    embeddings: npt.NDArray[np.float32] | None,
    encoder: SentenceEncoder | None,
    options: TrainOptions,
    C: float,
) -> TrainedModel:
    solver = options.solver or ("lbfgs" if encoder is not None else "newton-cg")
    return train(
        texts,
        classes,
        C=C,
        class_weight=options.class_weight,
        solver=solver,
        max_iter=options.max_iter,
        embeddings=embeddings,
        encoder=encoder.describe() if encoder is not None else None,
    )


def _predict_trained(
    model: TrainedModel, texts: Sequence[str], embeddings: npt.NDArray[np.float32] | None
) -> tuple[list[str], npt.NDArray[np.float64]]:
    proba = model.predict_proba(texts, embeddings)
    best = proba.argmax(axis=1)
    return [model.classes[int(i)] for i in best], proba[np.arange(len(best)), best]


def train_bundle(
    data: LabelledData,
    out_dir: Path,
    *,
    options: TrainOptions | None = None,
    encoder: SentenceEncoder | None = None,
    version: str | None = None,
    card_extra: dict[str, Any] | None = None,
    progress: Progress = _stderr,
) -> dict[str, Any]:
    """Train on ``data`` and write a bundle to ``out_dir``; return its card."""
    options = options or TrainOptions()
    if len(set(data.labels)) < 2:
        raise ValueError(f"need at least two different labels to train, found {len(set(data.labels))}")
    if options.encoder and encoder is None:
        encoder = default_encoder()
    if not options.encoder:
        encoder = None
    classes = _class_names(data.labels)
    embeddings = _embed(encoder, data.texts, "embedding") if encoder is not None else None

    train_idx, held_idx, how = _holdout_split(data, options.holdout, options.seed)
    heldout: dict[str, Any] = {"how": how, "n": len(held_idx)}
    curve: list[dict[str, Any]] = []
    threshold = FALLBACK_THRESHOLD
    chosen_c = options.C
    cascade_card: dict[str, Any] | None = None
    rationale = (
        f"too little data (< {4 * MIN_HOLDOUT} examples) to hold any out: the fallback {FALLBACK_THRESHOLD}"
    )

    def pick(indices: Sequence[int]) -> tuple[list[str], list[str], npt.NDArray[np.float32] | None]:
        return (
            [data.texts[i] for i in indices],
            [classes[i] for i in indices],
            None if embeddings is None else embeddings[list(indices)],
        )

    if held_idx:
        tr_texts, tr_classes, tr_emb = pick(train_idx)
        ho_texts, ho_classes, ho_emb = pick(held_idx)
        if len(set(tr_classes)) >= 2:
            search = []
            best: tuple[float, float, list[str], npt.NDArray[np.float64]] | None = None
            for c_value in options.C_grid or (options.C,):
                progress(
                    f"fitting on {len(tr_texts)} examples (C={c_value:g}), measuring on {len(ho_texts)} held out ..."
                )
                model = _fit(tr_texts, tr_classes, tr_emb, encoder, options, c_value)
                guess, conf = _predict_trained(model, ho_texts, ho_emb)
                acc = float(np.mean([g == t for g, t in zip(guess, ho_classes, strict=True)]))
                search.append({"C": c_value, "accuracy": round(acc, 4)})
                if best is None or acc > best[1]:
                    best = (c_value, acc, guess, conf)
            assert best is not None
            chosen_c, _, predicted, confidence = best
            heldout["C_search"] = search
            heldout["C"] = chosen_c
            if encoder is not None and options.cascade:
                progress(
                    f"fitting the n-gram head of the cascade on {len(tr_texts)} examples (C={chosen_c:g}) ..."
                )
                head = _fit(tr_texts, tr_classes, None, None, options, chosen_c)
                head_guess, head_conf = _predict_trained(head, ho_texts, None)
                cascade_card, predicted, confidence = _cascade_on_heldout(
                    ho_classes, predicted, confidence, head_guess, head_conf
                )
            metrics, by_label = measure_classes(ho_classes, predicted, data.has_subtopics)
            correct = np.array([t == p for t, p in zip(ho_classes, predicted, strict=True)])
            threshold, k, n_correct = conformal_threshold(confidence, correct, options.review_share)
            rationale = (
                f"split-conformal: the confidence ranked {k} from the lowest among the {n_correct} "
                f"held-out predictions that were right ({how}), so that a right prediction on new data of the same kind goes "
                f"to review with probability at most {k / (n_correct + 1):.3f} "
                f"(review share {options.review_share:g})"
            )
            if options.target_precision is not None:
                floor = choose_threshold(confidence, correct, options.target_precision)
                if floor > threshold:
                    threshold = floor
                    rationale += (
                        f"; raised to {floor}, the lowest confidence at which held-out predictions "
                        f"were right at least {options.target_precision:.0%} of the time"
                    )
            accepted = confidence >= threshold
            heldout.update(metrics.to_dict())  # per topic, as `evaluate` reports it
            if by_label is not None:
                heldout["subtopic"] = by_label.to_dict()
            heldout["at_threshold"] = {
                "threshold": threshold,
                "accepted": round(float(accepted.mean()), 4),
                "precision_accepted": round(float(correct[accepted].mean()), 4) if accepted.any() else None,
                "right_sent_to_review": round(float((~accepted[correct]).mean()), 4)
                if correct.any()
                else None,
                "wrong_sent_to_review": round(float((~accepted[~correct]).mean()), 4)
                if (~correct).any()
                else None,
            }
            if options.learning_curve:
                curve = _learning_curve(
                    tr_texts,
                    tr_classes,
                    tr_emb,
                    ho_texts,
                    ho_classes,
                    ho_emb,
                    encoder,
                    options,
                    chosen_c,
                    progress,
                    data.has_subtopics,
                )
                curve.append(_curve_point(len(tr_texts), metrics, by_label))

    progress(f"fitting the final model on all {len(data)} examples (C={chosen_c:g}) ...")
    final = _fit(data.texts, classes, embeddings, encoder, options, chosen_c)
    if cascade_card is not None and cascade_card["threshold"] is not None:
        progress(f"fitting the final n-gram head on all {len(data)} examples (C={chosen_c:g}) ...")
        final_head = _fit(data.texts, classes, None, None, options, chosen_c)
        final = with_cascade(
            final,
            final_head,
            cascade_card["threshold"],
            {k: v for k, v in cascade_card.items() if k != "threshold"},
        )
    labels = [tuple(json.loads(c)) for c in final.classes]
    extra: dict[str, Any] = {
        "kind": "trained",
        "data": data.summary(),
        "heldout": heldout,
        "learning_curve": curve,
        "threshold_rationale": rationale,
        "training_options": options.describe(),
        "topics_only": not data.has_subtopics,
    }
    if cascade_card is not None and cascade_card["threshold"] is None:
        extra["cascade_rejected"] = cascade_card  # why every text goes through the encoder
    extra.update(card_extra or {})
    export_bundle(
        final,
        out_dir,
        labels=[(str(t), None if s is None else str(s)) for t, s in labels],
        threshold=threshold,
        version=version,
        card_extra=extra,
    )
    card: dict[str, Any] = json.loads((Path(out_dir) / "card.json").read_text(encoding="utf-8"))
    return card


def _cascade_on_heldout(
    truth: Sequence[str],
    full_guess: list[str],
    full_conf: npt.NDArray[np.float64],
    head_guess: list[str],
    head_conf: npt.NDArray[np.float64],
) -> tuple[dict[str, Any], list[str], npt.NDArray[np.float64]]:
    """Choose the cascade threshold on the held-out part; return the card's ``cascade`` block and
    the cascade's held-out predictions and confidences (what serving will answer)."""
    full_correct = np.array([g == t for g, t in zip(full_guess, truth, strict=True)], dtype=bool)
    head_correct = np.array([g == t for g, t in zip(head_guess, truth, strict=True)], dtype=bool)
    chosen = choose_cascade_threshold(head_conf, head_correct, full_correct)
    n = len(truth)
    block: dict[str, Any] = {
        "rule": "the lowest n-gram-head confidence at which the held-out texts it accepts lose no more "
        "right answers against the full model than they win",
        "heldout_n": n,
        "head_accuracy": round(float(head_correct.mean()), 4),
        "full_accuracy": round(float(full_correct.mean()), 4),
    }
    if chosen is None:
        block["threshold"] = None
        return block, full_guess, full_conf
    threshold, _ = chosen
    skip = np.asarray(head_conf) >= threshold
    guess = [h if s else f for h, f, s in zip(head_guess, full_guess, skip, strict=True)]
    conf = np.where(skip, head_conf, full_conf)
    correct = np.array([g == t for g, t in zip(guess, truth, strict=True)], dtype=bool)
    block.update(
        threshold=threshold,
        skipped_encoder=round(float(skip.mean()), 4),
        accuracy=round(float(correct.mean()), 4),
        accepted_head_accuracy=round(float(head_correct[skip].mean()), 4) if skip.any() else None,
        accepted_full_accuracy=round(float(full_correct[skip].mean()), 4) if skip.any() else None,
        accepted_agreement=round(
            float(np.mean([h == f for h, f, s in zip(head_guess, full_guess, skip, strict=True) if s])), 4
        )
        if skip.any()
        else None,
    )
    return block, guess, conf


def _learning_curve(
    tr_texts: Sequence[str],
    tr_classes: Sequence[str],
    tr_emb: npt.NDArray[np.float32] | None,
    ho_texts: Sequence[str],
    ho_classes: Sequence[str],
    ho_emb: npt.NDArray[np.float32] | None,
    encoder: SentenceEncoder | None,
    options: TrainOptions,
    C: float,
    progress: Progress,
    by_subtopic: bool,
) -> list[dict[str, Any]]:
    order = list(range(len(tr_texts)))
    random.Random(options.seed).shuffle(order)
    points = []
    for size in LEARNING_CURVE_SIZES:
        if size >= len(tr_texts):
            break
        subset = order[:size]
        classes = [tr_classes[i] for i in subset]
        if len(set(classes)) < 2:
            continue
        progress(f"learning curve: fitting on {size} examples ...")
        model = _fit(
            [tr_texts[i] for i in subset],
            classes,
            None if tr_emb is None else tr_emb[subset],
            encoder,
            options,
            C,
        )
        predicted, _ = _predict_trained(model, ho_texts, ho_emb)
        points.append(_curve_point(size, *measure_classes(ho_classes, predicted, by_subtopic)))
    return points


def measure_classes(
    truth: Sequence[str], predicted: Sequence[str], by_subtopic: bool
) -> tuple[Metrics, Metrics | None]:
    """Metrics per topic of the model's classes (JSON ``[topic, subtopic]``), and per
    ``topic/subtopic`` label when the data has subtopics (see :func:`evaluate`)."""
    truth_labels = [tuple(json.loads(c)) for c in truth]
    predicted_labels = [tuple(json.loads(c)) for c in predicted]
    per_topic = measure([t[0] for t in truth_labels], [p[0] for p in predicted_labels])
    if not by_subtopic:
        return per_topic, None
    return per_topic, measure(
        [label_name(t) for t in truth_labels], [label_name(p) for p in predicted_labels]
    )


def _curve_point(examples: int, per_topic: Metrics, by_label: Metrics | None) -> dict[str, Any]:
    point: dict[str, Any] = {"examples": examples, "accuracy": round(per_topic.accuracy, 4)}
    if by_label is not None:
        point["subtopic_accuracy"] = round(by_label.accuracy, 4)
    return point


def predict_rows(
    model: TopicModel, texts: Sequence[str], *, threshold: float | None = None, chunk: int = 2048
) -> tuple[list[Label], npt.NDArray[np.float32], list[bool]]:
    """Labels, confidences and needs_review of many texts, with a progress bar on long runs."""
    labels: list[Label] = []
    confidences = np.zeros(len(texts), dtype=np.float32)
    review: list[bool] = []
    with tqdm(total=len(texts), desc="classifying", unit="text", disable=None, file=sys.stderr) as bar:
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            for i, p in enumerate(model.predict(part, threshold=threshold, top_k=1)):
                labels.append((p.topic, p.subtopic))
                confidences[start + i] = p.confidence
                review.append(p.needs_review)
            bar.update(len(part))
    return labels, confidences, review


def evaluate(model: TopicModel, data: LabelledData) -> tuple[Metrics, dict[str, Any]]:
    """Measure ``model`` on labelled data; returns the topic metrics and notes for the report.

    The headline figures are always per topic: the categories a municipality routes by, and the
    level its exports count ("15 categories"). Comparing ``topic/subtopic`` instead made an export
    with a subtopic column (picked up by default) read as a far lower accuracy than the same model
    has on its categories (CLINC150's 10 domains with their 150 intents as subtopics: 0.956
    against 0.986). When both the model and the data have subtopics, ``notes["subtopic"]`` holds
    the same figures for ``topic/subtopic`` labels.
    """
    predicted, _, review = predict_rows(model, data.texts)
    accepted = ~np.array(review, dtype=bool)

    def accepted_accuracy(truth: Sequence[str], guess: Sequence[str]) -> float | None:
        if not accepted.any():
            return None
        correct = np.array([t == g for t, g in zip(truth, guess, strict=True)], dtype=bool)
        return round(float(correct[accepted].mean()), 4)

    truth = [topic for topic, _ in data.labels]
    guess = [topic for topic, _ in predicted]
    metrics = measure(truth, guess)
    notes: dict[str, Any] = {
        "level": "topic",
        "threshold": model.threshold,
        "accepted": round(float(accepted.mean()), 4) if len(accepted) else 0.0,
        "accuracy_accepted": accepted_accuracy(truth, guess),
        "skipped_empty": data.skipped_empty,
        "skipped_unlabelled": data.skipped_unlabelled,
    }
    if data.has_subtopics and not model.topics_only:
        label_truth = [label_name(label) for label in data.labels]
        label_guess = [label_name(label) for label in predicted]
        notes["subtopic"] = measure(label_truth, label_guess)
        notes["subtopic_accuracy_accepted"] = accepted_accuracy(label_truth, label_guess)
    return metrics, notes


def _per_class_table(title: str, metrics: Metrics) -> list[str]:
    lines = [
        "",
        f"## {title}",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, figures in metrics.per_class.items():
        lines.append(
            f"| {label} | {figures['precision']:.3f} | {figures['recall']:.3f} | {figures['f1']:.3f} | "
            f"{figures['support']} |"
        )
    return lines


def write_predictions(
    rows: TextRows,
    labels: Sequence[Label],
    confidences: npt.NDArray[np.float32],
    review: Sequence[bool],
    out: Path,
) -> None:
    """Write every input row with ``topic``, ``subtopic``, ``confidence`` and ``needs_review`` added
    (empty for rows without text); same-named input columns are replaced. Atomic: temp + rename."""
    added = ["topic", "subtopic", "confidence", "needs_review"]
    fieldnames = [name for name in rows.fieldnames if name not in added] + added
    predictions: dict[int, dict[str, str]] = {}
    for index, label, conf, flag in zip(rows.kept, labels, confidences, review, strict=True):
        predictions[index] = {
            "topic": label[0],
            "subtopic": label[1] or "",
            "confidence": f"{float(conf):.4f}",
            "needs_review": "true" if flag else "false",
        }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fieldnames, extrasaction="ignore")
            writer.writeheader()
            for index, row in enumerate(rows.rows):
                blank = dict.fromkeys(added, "")
                writer.writerow({**row, **predictions.get(index, blank)})
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(
    report_dir: Path,
    metrics: Metrics,
    notes: dict[str, Any],
    card: dict[str, Any],
    data: LabelledData,
) -> Path:
    """Write ``report.md`` with ``confusion.png`` (and ``learning_curve.png`` when the card has one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    by_label: Metrics | None = notes.get("subtopic")
    n = len(metrics.labels)
    size = min(4 + 0.18 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = metrics.confusion.sum(axis=1, keepdims=True)
    share = np.divide(metrics.confusion, np.maximum(rows, 1))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), metrics.labels, rotation=90, fontsize=max(4, 10 - n // 15))
    ax.set_yticks(range(n), metrics.labels, fontsize=max(4, 10 - n // 15))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion of topics (row share), accuracy {metrics.accuracy:.3f}, n = {metrics.n}")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if metrics.confusion[i, j]:
                    colour = "white" if share[i, j] > 0.5 else "black"
                    ax.text(
                        j, i, str(metrics.confusion[i, j]), ha="center", va="center", fontsize=7, color=colour
                    )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(report_dir / "confusion.png", dpi=110)
    plt.close(fig)

    curve = card.get("learning_curve") or []
    if curve:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        examples = [p["examples"] for p in curve]
        ax.plot(examples, [p["accuracy"] for p in curve], marker="o", label="topic")
        if all("subtopic_accuracy" in p for p in curve):
            ax.plot(examples, [p["subtopic_accuracy"] for p in curve], marker="s", label="topic and subtopic")
            ax.legend(loc="lower right")
        ax.set_xscale("log")
        ax.set_xlabel("training examples")
        ax.set_ylabel("held-out accuracy")
        ax.set_title("Learning curve")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(report_dir / "learning_curve.png", dpi=110)
        plt.close(fig)

    lines = [
        f"# Evaluation of model {card.get('version')}",
        "",
        f"- data: `{Path(data.source).name}` (sha256 `{data.sha256[:16]}…`, {data.size} bytes), "
        f"{metrics.n} texts; skipped {data.skipped_empty} empty and {data.skipped_unlabelled} unlabelled rows",
        f"- per topic: **accuracy {metrics.accuracy:.4f}**, **macro-F1 {metrics.macro_f1:.4f}** "
        f"({len(metrics.per_class)} topics)",
        *(
            [
                f"- per topic and subtopic: accuracy {by_label.accuracy:.4f}, macro-F1 {by_label.macro_f1:.4f} "
                f"({len(by_label.per_class)} labels)"
            ]
            if by_label is not None
            else []
        ),
        f"- review threshold {notes['threshold']}: {notes['accepted']:.1%} of the texts pass without review"
        + (
            f", with topic accuracy {notes['accuracy_accepted']:.4f}"
            if notes.get("accuracy_accepted") is not None
            else ""
        )
        + (
            f" (topic and subtopic {notes['subtopic_accuracy_accepted']:.4f})"
            if notes.get("subtopic_accuracy_accepted") is not None
            else ""
        ),
        f"- model: created {card.get('created_at')}, trained on {card.get('training_data', {}).get('examples')} "
        f"examples, encoder {(card.get('encoder') or {}).get('name', 'none')}",
        "",
        "## Confusion matrix",
        "",
        "![confusion matrix](confusion.png)",
        "",
    ]
    if curve:
        lines += [
            "## Learning curve (from training, on its held-out data)",
            "",
            "| training examples | held-out accuracy per topic | per topic and subtopic |",
            "|---:|---:|---:|",
            *[
                f"| {p['examples']} | {p['accuracy']:.4f} | "
                + (f"{p['subtopic_accuracy']:.4f} |" if "subtopic_accuracy" in p else "— |")
                for p in curve
            ],
            "",
            "![learning curve](learning_curve.png)",
            "",
        ]
    lines += _per_class_table("Per topic", metrics)
    if by_label is not None:
        lines += _per_class_table("Per topic and subtopic", by_label)
    # The finest level there is: which subtopics are taken for which says most about what to fix.
    finest = by_label if by_label is not None else metrics
    worst = Counter(
        {
            (finest.labels[i], finest.labels[j]): int(finest.confusion[i, j])
            for i in range(len(finest.labels))
            for j in range(len(finest.labels))
            if i != j and finest.confusion[i, j]
        }
    ).most_common(10)
    if worst:
        lines += ["", "## Most frequent confusions", "", "| true | predicted | count |", "|---|---|---:|"]
        lines += [f"| {t} | {p} | {c} |" for (t, p), c in worst]
    path = report_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
