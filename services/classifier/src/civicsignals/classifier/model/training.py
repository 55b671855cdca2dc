"""Train a topic model with scikit-learn and export it as an ONNX bundle.

Training reproduces in numpy/scipy exactly what the ONNX graph computes (see :mod:`.onnx_graph`):
hashed counts from :mod:`.features`, sublinear tf ``log1p(count)``, smooth idf
``ln((1 + n) / (1 + df)) + 1``, L2 normalisation per text, then a multinomial
:class:`~sklearn.linear_model.LogisticRegression`. :meth:`TrainedModel.predict_proba` is that
reference path; the tests hold the ONNX output to it within 1e-5.

A bundle is a folder with four files:

* ``model.onnx`` — the graph;
* ``vocabulary.npy`` — the hashed feature index of each compact row ``1..V`` (int32, ascending;
  row 0 is every unseen feature): serving maps hashed indices to the graph's ``rows`` with it;
* ``labels.json`` — a JSON array with one ``{"topic": ..., "subtopic": ...}`` object per column
  of the ``probabilities`` output, in column order;
* ``card.json`` — what the model is: ``format``, ``version``, ``created_at`` (RFC 3339 UTC),
  ``threshold`` (confidence below which a prediction needs human review), ``training_data``
  (``sha256``, ``examples``, ``bytes``), ``class_counts``, ``features`` (the
  :class:`~.features.FeatureConfig` plus tf/idf/norm settings), ``classifier`` (estimator and
  hyper-parameters), ``onnx`` (opset, inputs, outputs, ``sha256`` of ``model.onnx``), plus any
  ``card_extra`` keys of the caller.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from civicsignals.classifier.model.features import (
    TRAINED_FEATURE_CONFIG,
    FeatureConfig,
    FeatureExtractor,
    shared_extractor,
)
from civicsignals.classifier.model.onnx_graph import IR_VERSION, OPSET, build_onnx_model
from civicsignals.classifier.taxonomy import label_key, split_label

__all__ = [
    "BUNDLE_FORMAT",
    "CARD_FEATURE_NOTES",
    "CARD_FILE",
    "CASCADE_BUNDLE_FORMAT",
    "FEATURE_HASH",
    "LABELS_FILE",
    "MODEL_FILE",
    "READABLE_FORMATS",
    "VOCABULARY_FILE",
    "Cascade",
    "TrainedModel",
    "export_bundle",
    "train",
    "training_data_digest",
    "with_cascade",
]

BUNDLE_FORMAT = "civicsignals-topic-model/2"
#: The format of a bundle with a cascade (an n-gram head that lets sure texts skip the encoder;
#: see :mod:`.onnx_graph`): its graph has other inputs, so older servers must refuse it.
CASCADE_BUNDLE_FORMAT = "civicsignals-topic-model/3"
#: Formats serving reads: /1 bundles have no vocabulary file (the lookup is in their graph).
READABLE_FORMATS = frozenset({"civicsignals-topic-model/1", BUNDLE_FORMAT, CASCADE_BUNDLE_FORMAT})
#: The only feature hash a bundle of this format may use.
FEATURE_HASH = "crc32-utf8"
#: Keys of the card's ``features`` block that describe the graph rather than configure features.
CARD_FEATURE_NOTES = frozenset({"hash", "tf", "idf", "norm", "vocabulary_size"})
MODEL_FILE = "model.onnx"
VOCABULARY_FILE = "vocabulary.npy"
LABELS_FILE = "labels.json"
CARD_FILE = "card.json"


@dataclass(slots=True)
class Cascade:
    """The n-gram head of a cascade: a logistic regression on the same tf-idf features alone.

    A text whose top n-gram-head probability reaches ``threshold`` keeps that head's answer and
    never goes through the sentence encoder; the others get the full model's. ``coef`` ``[C, V]``
    and ``intercept`` ``[C]`` as in :class:`TrainedModel`; ``card`` is the card's ``cascade``
    block (how the threshold was chosen, on held-out data only).
    """

    coef: npt.NDArray[np.float64]
    intercept: npt.NDArray[np.float64]
    estimator: LogisticRegression
    threshold: float
    card: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class TrainedModel:
    """Everything needed to export (and to check) a trained model.

    ``vocabulary[j]`` is the hashed index of compact row ``j + 1``; row 0 stands for every feature
    unseen in training. ``idf`` has ``V + 1`` entries (``idf[0]`` for unseen features), ``coef`` is
    ``[C, V]`` and ``intercept`` ``[C]``, with classes in ``classes`` order (a binary problem is
    stored as two rows, the first all zeros, so that softmax equals scikit-learn's sigmoid).
    """

    feature_config: FeatureConfig
    sublinear_tf: bool
    classes: tuple[str, ...]
    vocabulary: npt.NDArray[np.int64]
    idf: npt.NDArray[np.float64]
    coef: npt.NDArray[np.float64]
    intercept: npt.NDArray[np.float64]
    estimator: LogisticRegression
    class_counts: dict[str, int]
    training_sha256: str
    training_examples: int
    training_bytes: int
    params: dict[str, Any] = field(default_factory=dict)
    #: ``[C, E]`` weights of the sentence embeddings (scale folded in), or None without an encoder.
    dense_coef: npt.NDArray[np.float64] | None = None
    #: The card's ``encoder`` block (name, dim, sha256, scale), or None.
    encoder: dict[str, Any] | None = None
    #: The n-gram head and its threshold (:func:`with_cascade`), or None: every text is encoded.
    cascade: Cascade | None = None
    _remap: npt.NDArray[np.int32] | None = field(default=None, repr=False)

    def remap_table(self) -> npt.NDArray[np.int32]:
        """Hashed index -> compact row (0 = unseen): the ``remap`` initialiser of the graph."""
        if self._remap is None:
            table = np.zeros(self.feature_config.dim, dtype=np.int32)
            table[self.vocabulary] = np.arange(1, len(self.vocabulary) + 1, dtype=np.int32)
            self._remap = table
        return self._remap

    def transform(
        self, texts: Sequence[str], embeddings: npt.NDArray[np.floating] | None = None
    ) -> sp.csr_matrix:
        """The matrix the classifier sees (numpy twin of the graph): normalised tf-idf ``[n, V]``,
        followed by the scaled embeddings ``[n, E]`` when the model has an encoder."""
        # The process's shared extractor, as serving keeps one per model: both paths then pay the
        # same featurisation cost and the benchmark compares what comes after it.
        return self.transform_features(shared_extractor(self.feature_config).rows(texts), embeddings)

    def transform_features(
        self,
        rows: Sequence[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]],
        embeddings: npt.NDArray[np.floating] | None = None,
    ) -> sp.csr_matrix:
        """:meth:`transform` after featurisation (per-text ``(ids, counts)`` from :mod:`.features`)."""
        tfidf = _tfidf(rows, self.remap_table(), self.idf, self.sublinear_tf)
        return _with_embeddings(tfidf, embeddings, self.encoder)

    def predict_proba(
        self,
        texts: Sequence[str],
        embeddings: npt.NDArray[np.floating] | None = None,
        *,
        encode: Callable[[list[str]], npt.NDArray[np.floating]] | None = None,
    ) -> npt.NDArray[np.float64]:
        """scikit-learn's probabilities ``[n, C]``: the reference the ONNX graph must reproduce.

        With a cascade, the n-gram head answers the texts it is sure of and only the others go
        through the full model: their embeddings are rows of ``embeddings`` (all texts') or come
        from ``encode`` (called once, with those texts only, as serving calls the encoder).
        """
        if self.cascade is None:
            if embeddings is None and encode is not None and self.encoder is not None:
                embeddings = encode(list(texts))
            return np.asarray(
                self.estimator.predict_proba(self.transform(texts, embeddings)), dtype=np.float64
            )
        rows = shared_extractor(self.feature_config).rows(texts)
        return self.cascade_proba_from_features(rows, texts, embeddings=embeddings, encode=encode)[0]

    def cascade_proba_from_features(
        self,
        rows: Sequence[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]],
        texts: Sequence[str] | None = None,
        *,
        embeddings: npt.NDArray[np.floating] | None = None,
        encode: Callable[[list[str]], npt.NDArray[np.floating]] | None = None,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """The cascade in scikit-learn after featurisation: probabilities and which texts needed
        the encoder. ``encode`` needs ``texts``; without a cascade every text is encoded."""
        tfidf = _tfidf(rows, self.remap_table(), self.idf, self.sublinear_tf)
        n = tfidf.shape[0]
        if self.cascade is None:
            hard = np.ones(n, dtype=bool)
            out = np.zeros((n, len(self.classes)), dtype=np.float64)
        else:
            out = np.asarray(self.cascade.estimator.predict_proba(tfidf), dtype=np.float64)
            hard = out.max(axis=1) < self.cascade.threshold
        picked = np.flatnonzero(hard)
        if len(picked):
            if embeddings is not None:
                part = np.asarray(embeddings)[picked]
            elif encode is not None and texts is not None:
                part = np.asarray(encode([texts[int(i)] for i in picked]))
            elif self.encoder is None:
                part = None
            else:
                raise ValueError("this model needs the texts' embeddings (or texts and encode)")
            full = _with_embeddings(tfidf[picked], part, self.encoder)
            out[picked] = self.estimator.predict_proba(full)
        return out, hard


def _with_embeddings(
    tfidf: sp.csr_matrix,
    embeddings: npt.NDArray[np.floating] | None,
    encoder: Mapping[str, Any] | None,
) -> sp.csr_matrix:
    if encoder is None:
        if embeddings is not None:
            raise ValueError("this model has no encoder, but embeddings were given")
        return tfidf
    if embeddings is None:
        raise ValueError("this model needs the texts' embeddings")
    dense = np.asarray(embeddings, dtype=np.float64) * float(encoder["scale"])
    if dense.shape != (tfidf.shape[0], int(encoder["dim"])):
        raise ValueError(f"embeddings must be [{tfidf.shape[0]}, {encoder['dim']}], got {dense.shape}")
    return sp.hstack([tfidf, sp.csr_matrix(dense)], format="csr")


def _tfidf(
    rows: Sequence[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]],
    remap: npt.NDArray[np.int32],
    idf: npt.NDArray[np.float64],
    sublinear_tf: bool,
) -> sp.csr_matrix:
    n = len(rows)
    lengths = np.array([len(ids) for ids, _ in rows], dtype=np.int64)
    ids = np.concatenate([r[0] for r in rows]) if n else np.zeros(0, np.int64)
    counts = np.concatenate([r[1] for r in rows]).astype(np.float64) if n else np.zeros(0)
    row_of = np.repeat(np.arange(n), lengths)
    compact = remap[ids].astype(np.int64)
    tf = np.log1p(counts) if sublinear_tf else counts
    w = tf * idf[compact]
    # The norm includes unseen features (compact 0), as the graph does.
    norms = np.sqrt(np.bincount(row_of, weights=w * w, minlength=n))
    w = w / np.maximum(norms, 1e-12)[row_of]
    seen = compact > 0
    return sp.csr_matrix(
        (w[seen], (row_of[seen], compact[seen] - 1)), shape=(n, len(idf) - 1), dtype=np.float64
    )


def training_data_digest(texts: Sequence[str], labels: Sequence[str]) -> tuple[str, int]:
    """SHA-256 and byte size of the training data, for the model card.

    Computed over the UTF-8 of one JSON array ``[text, label]`` per line, in training order, so
    the same examples give the same digest whatever file format they came from.
    """
    digest = hashlib.sha256()
    size = 0
    for text, label in zip(texts, labels, strict=True):
        line = (json.dumps([text, label], ensure_ascii=False) + "\n").encode("utf-8")
        digest.update(line)
        size += len(line)
    return digest.hexdigest(), size


def train(
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    C: float = 10.0,
    class_weight: Literal["balanced"] | None = "balanced",
    sublinear_tf: bool = True,
    min_df: int = 1,
    max_iter: int = 1000,
    tol: float = 1e-4,
    solver: Literal["newton-cg", "lbfgs", "saga"] = "newton-cg",
    features: FeatureConfig = TRAINED_FEATURE_CONFIG,
    embeddings: npt.NDArray[np.floating] | None = None,
    encoder: Mapping[str, Any] | None = None,
    embedding_scale: float = 1.0,
) -> TrainedModel:
    """Fit hashed tf-idf + multinomial logistic regression (lbfgs) on labelled texts.

    ``labels`` are class names; for the classifier service they are ``topic/subtopic`` strings
    (:func:`~civicsignals.classifier.taxonomy.label_key`). ``C`` is the inverse L2 strength; a
    high value suits small, clean data such as the cold start, while a municipality's noisy export
    may want less. ``class_weight="balanced"`` keeps a frequent class from winning by prior alone.
    The default solver is ``newton-cg``: it minimises the same multinomial objective as ``lbfgs``,
    but in a handful of iterations, whereas SciPy's L-BFGS-B (>= 1.15) spends about half a second
    per iteration once there are millions of parameters (features x classes), making the cold
    start take 10-30 s instead of about 2 s. (On a slow machine on 2026-12-07, with the taxonomy
    grown to 3,546 examples, 148 subtopics and 80,948 features: newton-cg 61 s in 8 iterations,
    lbfgs 145 s in 34; each sparse product with the 12-million-weight matrix takes about 0.25 s.)
    Features seen in fewer than ``min_df`` training texts are treated as unseen, which shrinks the
    bundle for large exports. ``features`` defaults to :data:`~.features.TRAINED_FEATURE_CONFIG`
    (stop words kept: measured better with real training data); the cold start passes
    :data:`~.features.DEFAULT_FEATURE_CONFIG` (stop words dropped). The result is deterministic for the same inputs.

    ``embeddings`` (``[n, E]``, unit length, from :class:`~.encoder.SentenceEncoder`) add the
    sentence embedding of each text as ``E`` dense features beside the tf-idf ones; ``encoder`` is
    the encoder's :meth:`~.encoder.SentenceEncoder.describe` for the card. Both blocks have unit
    L2 norm, so with ``embedding_scale = 1`` neither dominates the regulariser by its size alone.
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"need at least two classes to train, got {classes}")
    if min_df < 1:
        raise ValueError("min_df must be at least 1")
    if (embeddings is None) != (encoder is None):
        raise ValueError("give both embeddings and encoder, or neither")
    encoder_card = None if encoder is None else {**encoder, "scale": float(embedding_scale)}

    rows = FeatureExtractor(features).rows(texts)
    n = len(rows)
    all_ids = np.concatenate([ids for ids, _ in rows])
    df = np.bincount(all_ids, minlength=features.dim)  # ids are distinct within a row
    vocabulary = np.flatnonzero(df >= min_df).astype(np.int64)
    idf = np.empty(len(vocabulary) + 1, dtype=np.float64)
    idf[0] = np.log((1 + n) / 1) + 1  # a feature with document frequency 0
    idf[1:] = np.log((1 + n) / (1 + df[vocabulary])) + 1

    model = TrainedModel(
        feature_config=features,
        sublinear_tf=sublinear_tf,
        classes=tuple(classes),
        vocabulary=vocabulary,
        idf=idf,
        coef=np.zeros((0, 0)),
        intercept=np.zeros(0),
        estimator=LogisticRegression(
            C=C, solver=solver, max_iter=max_iter, tol=tol, class_weight=class_weight
        ),
        class_counts=dict(sorted(Counter(labels).items())),
        training_sha256="",
        training_examples=n,
        training_bytes=0,
        encoder=encoder_card,
    )
    x = _with_embeddings(_tfidf(rows, model.remap_table(), idf, sublinear_tf), embeddings, encoder_card)
    # One BLAS thread: the matrix products here are sparse (single-threaded anyway), and idle
    # OpenBLAS threads spinning on a busy host made fitting several times slower.
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1):
        warnings.simplefilter("always", ConvergenceWarning)
        model.estimator.fit(x, np.asarray(labels))
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)

    est = model.estimator
    if list(est.classes_) != classes:
        raise RuntimeError("scikit-learn reordered the classes")  # never expected; guards the export
    coef = np.asarray(est.coef_, dtype=np.float64)
    intercept = np.asarray(est.intercept_, dtype=np.float64)
    if len(classes) == 2:  # sigmoid(z) == softmax([0, z])[1]
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    if encoder_card is not None:
        n_sparse = len(vocabulary)
        model.dense_coef = coef[:, n_sparse:] * encoder_card["scale"]
        coef = coef[:, :n_sparse]
    model.coef, model.intercept = coef, intercept
    model.training_sha256, model.training_bytes = training_data_digest(texts, labels)
    model.params = {
        "estimator": "sklearn.linear_model.LogisticRegression",
        "solver": solver,
        "C": C,
        "class_weight": class_weight,
        "max_iter": max_iter,
        "tol": tol,
        "min_df": min_df,
        "iterations": int(np.max(est.n_iter_)),
        "converged": converged,
    }
    return model


def with_cascade(
    model: TrainedModel, head: TrainedModel, threshold: float, card: Mapping[str, Any] | None = None
) -> TrainedModel:
    """A copy of ``model`` (with an encoder) with ``head``, a model of the n-gram features alone
    fitted on the same texts and labels (so the same vocabulary, idf and classes), as its cascade.
    ``model`` itself is left as it was (it still answers every text with the full model)."""
    if model.encoder is None:
        raise ValueError("a cascade only makes sense for a model with an encoder")
    if head.encoder is not None or head.cascade is not None:
        raise ValueError("the cascade's head must be a model of the n-gram features alone")
    if (
        head.classes != model.classes
        or head.feature_config != model.feature_config
        or head.sublinear_tf != model.sublinear_tf
        or not np.array_equal(head.vocabulary, model.vocabulary)
        or not np.array_equal(head.idf, model.idf)
    ):
        raise ValueError("the cascade's head was not fitted on the same texts and labels")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the cascade threshold must be in [0, 1], got {threshold}")
    cascade = Cascade(
        coef=head.coef,
        intercept=head.intercept,
        estimator=head.estimator,
        threshold=float(threshold),
        card={"head": head.params, **(card or {})},
    )
    return dataclasses.replace(model, cascade=cascade)


def export_bundle(
    model: TrainedModel,
    out_dir: Path,
    *,
    labels: Sequence[tuple[str, str | None]] | None = None,
    card_extra: Mapping[str, Any] | None = None,
    threshold: float = 0.5,
    version: str | None = None,
    created_at: datetime | None = None,
) -> Path:
    """Write ``model.onnx``, ``labels.json`` and ``card.json`` into ``out_dir``; return ``out_dir``.

    ``labels`` gives ``(topic, subtopic)`` for each of ``model.classes`` in order (subtopic None
    for a model of topics only); by default each class name is split as ``topic/subtopic``. ``version`` defaults to
    ``<created_at as YYYYMMDDTHHMMSSZ>-<first 8 hex of the training data sha256>``. ``card_extra``
    adds keys to the card (e.g. tenant, taxonomy, evaluation); it may not replace the required
    ones. Each file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    if labels is None:
        labels = [split_label(c) for c in model.classes]
    # A subtopic of None means a model of topics only (an export with one category column).
    labels = [(str(t), None if s is None else str(s)) for t, s in labels]
    if len(labels) != len(model.classes):
        raise ValueError(f"{len(labels)} labels for {len(model.classes)} classes")
    if len(set(labels)) != len(labels):
        raise ValueError("labels are not unique")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    created = (created_at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    version = version or f"{created:%Y%m%dT%H%M%SZ}-{model.training_sha256[:8]}"

    n_rows = len(model.vocabulary) + 1
    weights = np.zeros((n_rows, len(model.classes)), dtype=np.float32)
    weights[1:] = model.coef.T
    cascade_weights = None
    if model.cascade is not None:
        cascade_weights = np.zeros_like(weights)
        cascade_weights[1:] = model.cascade.coef.T
    bundle_format = BUNDLE_FORMAT if model.cascade is None else CASCADE_BUNDLE_FORMAT
    onnx_model = build_onnx_model(
        idf=model.idf,
        weights=weights,
        bias=model.intercept,
        sublinear_tf=model.sublinear_tf,
        dense_weights=None if model.dense_coef is None else model.dense_coef.T,
        cascade_weights=cascade_weights,
        cascade_bias=None if model.cascade is None else model.cascade.intercept,
        cascade_threshold=None if model.cascade is None else model.cascade.threshold,
        metadata={"version": version, "bundle_format": bundle_format},
    )
    onnx_bytes = onnx_model.SerializeToString()
    buffer = io.BytesIO()
    np.save(buffer, model.vocabulary.astype(np.int32), allow_pickle=False)
    vocabulary_bytes = buffer.getvalue()

    inputs = {"rows": "int64[N,L]", "counts": "float32[N,L]"}
    outputs = {"probabilities": f"float32[N,{len(labels)}]"}
    if model.encoder is not None and model.cascade is None:
        inputs["embeddings"] = f"float32[N,{model.encoder['dim']}]"
    elif model.encoder is not None:
        inputs.update(embeddings=f"float32[M,{model.encoder['dim']}]", encoded="int64[M]")
        outputs["use_encoder"] = "bool[N]"
    card: dict[str, Any] = {
        "format": bundle_format,
        "version": version,
        "created_at": created.isoformat().replace("+00:00", "Z"),
        "threshold": threshold,
        "labels": len(labels),
        "training_data": {
            "sha256": model.training_sha256,
            "examples": model.training_examples,
            "bytes": model.training_bytes,
        },
        "class_counts": {
            (label[0] if label[1] is None else label_key(label[0], label[1])): model.class_counts.get(cls, 0)
            for cls, label in zip(model.classes, labels, strict=True)
        },
        "features": {
            **model.feature_config.to_dict(),
            "hash": FEATURE_HASH,
            "tf": "log1p" if model.sublinear_tf else "raw",
            "idf": "smooth",
            "norm": "l2",
            "vocabulary_size": len(model.vocabulary),
        },
        "classifier": model.params,
        "encoder": model.encoder,
        "cascade": None
        if model.cascade is None
        else {**model.cascade.card, "threshold": model.cascade.threshold},
        "vocabulary": {
            "file": VOCABULARY_FILE,
            "size": len(model.vocabulary),
            "sha256": hashlib.sha256(vocabulary_bytes).hexdigest(),
        },
        "onnx": {
            "file": MODEL_FILE,
            "opset": OPSET,
            "ir_version": IR_VERSION,
            "inputs": inputs,
            "outputs": outputs,
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "bytes": len(onnx_bytes),
        },
    }
    for key, value in (card_extra or {}).items():
        if key in card:
            raise ValueError(f"card_extra may not replace the required card field {key!r}")
        card[key] = value

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / MODEL_FILE, onnx_bytes)
    _write_atomic(out_dir / VOCABULARY_FILE, vocabulary_bytes)
    labels_json = [{"topic": t, "subtopic": s} for t, s in labels]
    _write_atomic(out_dir / LABELS_FILE, _json_bytes(labels_json))
    _write_atomic(out_dir / CARD_FILE, _json_bytes(card))  # last: its presence marks a complete bundle
    return out_dir


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
