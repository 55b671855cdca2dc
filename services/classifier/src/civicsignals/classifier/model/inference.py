"""Serve a topic-model bundle with onnxruntime.

:class:`TopicModel` loads a bundle folder (``model.onnx``, ``vocabulary.npy``, ``labels.json``,
``card.json``; see :mod:`.training`), rebuilds the feature extractor from the card, and turns texts into
:class:`Prediction` objects carrying what the ``signal.classified.v1`` event needs: topic,
subtopic, confidence, the top alternatives, ``needs_review`` and the model version.

Batching: texts are featurised in Python (hashed, then looked up in the vocabulary, as a
tokeniser maps tokens to ids), sorted by their number of distinct features and cut
into chunks whose padded size (rows x longest row) stays under a budget, so one long text does
not make a whole batch pad to its length, and memory stays bounded (the graph gathers a
``[rows, L, C]`` block of weights). Each chunk is one ``session.run``.

The session uses one intra-op thread: the service scales out by processes and replicas, and
several threads per call would fight over cores with the event loop and the other workers.
``InferenceSession.run`` is thread-safe, so one :class:`TopicModel` can serve concurrent calls.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from civicsignals.classifier.model.encoder import EncoderUnavailable, SentenceEncoder, default_encoder
from civicsignals.classifier.model.features import FeatureConfig, FeatureExtractor
from civicsignals.classifier.model.training import (
    CARD_FEATURE_NOTES,
    CARD_FILE,
    FEATURE_HASH,
    LABELS_FILE,
    MODEL_FILE,
    READABLE_FORMATS,
    VOCABULARY_FILE,
)

__all__ = ["Alternative", "BundleError", "Prediction", "TopicModel", "read_card"]


@dataclass(frozen=True, slots=True)
class Alternative:
    """One candidate label with its probability."""

    topic: str
    subtopic: str | None
    probability: float

    def to_dict(self) -> dict[str, Any]:
        """``{"topic", "subtopic", "probability"}``, as in ``signal.classified.v1``."""
        return {"topic": self.topic, "subtopic": self.subtopic, "probability": self.probability}


@dataclass(frozen=True, slots=True)
class Prediction:
    """The classification of one text.

    ``confidence`` is the highest probability; ``alternatives`` are the ``top_k`` most probable
    labels in descending order, the chosen one first; ``needs_review`` is true when
    ``confidence`` is below the threshold, so a person should check the label. ``subtopic`` is
    None for a model trained on topics only (an export with one category column).
    """

    topic: str
    subtopic: str | None
    confidence: float
    alternatives: tuple[Alternative, ...]
    needs_review: bool
    model_version: str

    def to_dict(self) -> dict[str, Any]:
        """The classification fields of ``signal.classified.v1``."""
        return {
            "topic": self.topic,
            "subtopic": self.subtopic,
            "confidence": self.confidence,
            "alternatives": [a.to_dict() for a in self.alternatives],
            "needs_review": self.needs_review,
            "model_version": self.model_version,
        }


class BundleError(ValueError):
    """A bundle folder is missing a file or its files disagree; the message names the folder."""


def read_card(bundle_dir: Path) -> dict[str, Any]:
    """Read and minimally check a bundle's ``card.json`` (cheap: for registries listing bundles)."""
    path = Path(bundle_dir) / CARD_FILE
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"model bundle {bundle_dir}: cannot read {CARD_FILE}: {exc}") from exc
    if not isinstance(card, dict):
        raise BundleError(f"model bundle {bundle_dir}: {CARD_FILE} is not a JSON object")
    if card.get("format") not in READABLE_FORMATS:
        raise BundleError(
            f"model bundle {bundle_dir}: format {card.get('format')!r} is not one of {sorted(READABLE_FORMATS)}"
        )
    missing = [k for k in ("version", "threshold", "features") if k not in card]
    if missing:
        raise BundleError(f"model bundle {bundle_dir}: {CARD_FILE} lacks {missing}")
    threshold = card["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise BundleError(f"model bundle {bundle_dir}: threshold {threshold!r} is not a number in [0, 1]")
    if not isinstance(card["features"], dict):
        raise BundleError(f"model bundle {bundle_dir}: 'features' in {CARD_FILE} is not an object")
    return card


class TopicModel:
    """A loaded bundle; call :meth:`predict` (labels) or :meth:`predict_proba` (raw probabilities)."""

    def __init__(
        self,
        bundle_dir: Path,
        *,
        batch_cells: int = 16_384,
        max_batch: int = 256,
        intra_op_threads: int = 1,
        encoder: SentenceEncoder | None = None,
        cascade: bool = True,
    ) -> None:
        """Load ``bundle_dir``; raise :class:`BundleError` if it is incomplete or inconsistent.

        A chunk of the batch holds at most ``max_batch`` texts and ``batch_cells`` padded
        features (rows x longest row), bounding the ``[rows, L, classes]`` float32 block the graph
        gathers to ``batch_cells x classes x 4`` bytes (about 10 MB for 150 classes; smaller blocks
        stay in the CPU's caches, which measured faster than 32,768 cells).

        A bundle whose card names a sentence encoder gets ``encoder`` or the process's shared
        one; its file must be the one the bundle was trained with (same SHA-256).

        A bundle with a cascade (format /3, card ``cascade``) lets the texts its n-gram head is
        sure of skip the encoder; ``cascade=False`` sends every text through the full model
        (to measure what the cascade changes). Bundles without one encode every text, as before.
        """
        self.bundle_dir = Path(bundle_dir)
        self.card = read_card(self.bundle_dir)
        settings = self.card["features"]
        if settings.get("hash", FEATURE_HASH) != FEATURE_HASH:
            raise BundleError(
                f"model bundle {self.bundle_dir}: unsupported feature hash {settings['hash']!r}"
            )
        try:
            # Unknown settings are an error, not ignored: features built differently from training
            # would give confident nonsense.
            self.feature_config = FeatureConfig.from_dict(
                {k: v for k, v in settings.items() if k not in CARD_FEATURE_NOTES}
            )
        except (TypeError, ValueError) as exc:
            raise BundleError(f"model bundle {self.bundle_dir}: bad feature settings: {exc}") from exc
        try:
            raw_labels = json.loads((self.bundle_dir / LABELS_FILE).read_text(encoding="utf-8"))
            self.labels: list[tuple[str, str | None]] = [
                (str(x["topic"]), None if x.get("subtopic") is None else str(x["subtopic"]))
                for x in raw_labels
            ]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise BundleError(f"model bundle {self.bundle_dir}: cannot read {LABELS_FILE}: {exc}") from exc

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(
                str(self.bundle_dir / MODEL_FILE), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(f"model bundle {self.bundle_dir}: cannot load {MODEL_FILE}: {exc}") from exc
        inputs = {i.name for i in self._session.get_inputs()}
        # "rows": the graph takes vocabulary rows, looked up here from the vocabulary file; "ids"
        # (format /1): it takes hashed indices and holds the lookup table itself.
        self._rows_input = "rows" if "rows" in inputs else "ids"
        self._remap: npt.NDArray[np.int32] | None = None
        if self._rows_input == "rows":
            self._remap = self._load_vocabulary()
        n_outputs = self._session.get_outputs()[0].shape[-1]
        if n_outputs != len(self.labels):
            raise BundleError(
                f"model bundle {self.bundle_dir}: {MODEL_FILE} has {n_outputs} outputs "
                f"but {LABELS_FILE} has {len(self.labels)} labels"
            )
        self.encoder: SentenceEncoder | None = None
        wanted = self.card.get("encoder")
        if wanted:
            try:
                self.encoder = encoder or default_encoder()
            except EncoderUnavailable as exc:
                raise BundleError(f"model bundle {self.bundle_dir}: {exc}") from exc
            if wanted.get("name") != self.encoder.name or wanted.get("sha256") != self.encoder.sha256:
                raise BundleError(
                    f"model bundle {self.bundle_dir}: trained with encoder {wanted.get('name')!r} "
                    f"(sha256 {str(wanted.get('sha256'))[:12]}...), but {self.encoder.name!r} "
                    f"(sha256 {self.encoder.sha256[:12]}...) is installed"
                )
        # A cascade graph takes the embeddings of some texts only ("encoded" says which).
        self._cascade_threshold: float | None = None
        if "encoded" in inputs:
            block = self.card.get("cascade")
            threshold = block.get("threshold") if isinstance(block, dict) else None
            if self.encoder is None or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
                raise BundleError(
                    f"model bundle {self.bundle_dir}: {MODEL_FILE} is a cascade graph, but {CARD_FILE} "
                    "has no cascade threshold in [0, 1] or no encoder"
                )
            self._cascade_threshold = float(threshold)
        elif self.card.get("cascade"):
            raise BundleError(f"model bundle {self.bundle_dir}: {CARD_FILE} has a cascade, {MODEL_FILE} not")
        self._use_cascade = cascade and self._cascade_threshold is not None
        self.version: str = str(self.card["version"])
        self.threshold: float = float(self.card["threshold"])
        self._extractor = FeatureExtractor(self.feature_config)
        self._batch_cells = max(1, batch_cells)
        self._max_batch = max(1, max_batch)

    def _load_vocabulary(self) -> npt.NDArray[np.int32]:
        """The hashed index -> vocabulary row table, from the bundle's vocabulary file (checked
        against the card's sha256, so a file from another bundle is refused)."""
        path = self.bundle_dir / VOCABULARY_FILE
        try:
            raw = path.read_bytes()
            wanted = (self.card.get("vocabulary") or {}).get("sha256")
            if wanted != hashlib.sha256(raw).hexdigest():
                raise ValueError("its sha256 differs from the card's")
            vocabulary = np.load(io.BytesIO(raw), allow_pickle=False)
            dim = self.feature_config.dim
            if vocabulary.ndim != 1 or vocabulary.dtype.kind not in "iu":
                raise ValueError("not a 1-D array of integers")
            if vocabulary.size and (vocabulary.min() < 0 or vocabulary.max() >= dim):
                raise ValueError(f"indices outside [0, {dim})")
        except (OSError, ValueError) as exc:
            raise BundleError(
                f"model bundle {self.bundle_dir}: cannot read {VOCABULARY_FILE}: {exc}"
            ) from exc
        table = np.zeros(dim, dtype=np.int32)
        table[vocabulary] = np.arange(1, len(vocabulary) + 1, dtype=np.int32)
        return table

    @property
    def topics_only(self) -> bool:
        """True when the model predicts topics without subtopics."""
        return all(sub is None for _, sub in self.labels)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32] | None:
        """The sentence embeddings this model needs for ``texts``, or None when it uses no encoder."""
        return None if self.encoder is None else self.encoder.encode(texts)

    @property
    def cascade_threshold(self) -> float | None:
        """The n-gram head's threshold when the bundle has a cascade (and it is on), else None."""
        return self._cascade_threshold if self._use_cascade else None

    def predict_proba(
        self, texts: Sequence[str], *, embeddings: npt.NDArray[np.float32] | None = None
    ) -> npt.NDArray[np.float32]:
        """Probabilities ``[len(texts), len(labels)]``, columns in :attr:`labels` order.

        ``embeddings`` (of all ``texts``) may be passed when the caller computed them already
        (:meth:`embed`); otherwise the encoder embeds the texts that need it: all of them, or with
        a cascade only those the n-gram head is not sure of.
        """
        return self.predict_proba_routed(texts, embeddings=embeddings)[0]

    def predict_proba_routed(
        self, texts: Sequence[str], *, embeddings: npt.NDArray[np.float32] | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """:meth:`predict_proba` and, per text, whether it went through the sentence encoder."""
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32), np.zeros(0, dtype=bool)
        encoder = self.encoder

        def encode(indices: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
            assert encoder is not None
            return encoder.encode([texts[int(i)] for i in indices])

        return self.routed_from_features(self._extractor.rows(texts), embeddings=embeddings, encode=encode)

    def proba_from_features(
        self,
        rows: Sequence[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]],
        *,
        embeddings: npt.NDArray[np.float32] | None = None,
    ) -> npt.NDArray[np.float32]:
        """:meth:`predict_proba` after featurisation: per-text ``(ids, counts)`` (and embeddings) in.

        Public so that the benchmark can time the graph exactly as serving calls it (sorted,
        chunked, padded), apart from the Python featurisation that both paths share.
        """
        return self.routed_from_features(rows, embeddings=embeddings)[0]

    def routed_from_features(
        self,
        rows: Sequence[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]],
        *,
        embeddings: npt.NDArray[np.float32] | None = None,
        encode: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]] | None = None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Probabilities and, per text, whether it went through the encoder, after featurisation.

        The embeddings of the texts that need them are rows of ``embeddings`` (given for all
        texts) or ``encode(indices)``. With a cascade, a first pass of the graph gives the n-gram
        head's answer and ``use_encoder`` for every text; only those texts are embedded and run
        again through the full model.
        """
        n = len(rows)
        out = np.zeros((n, len(self.labels)), dtype=np.float32)
        if self.encoder is None:
            for chunk, feed in self._feeds(rows):
                (out[chunk],) = self._session.run(["probabilities"], feed)
            return out, np.zeros(n, dtype=bool)
        if embeddings is None and encode is None:
            raise ValueError("this model needs the texts' embeddings")
        if self._cascade_threshold is None:  # every text through the full model, as before
            # One encoder call for all texts (it sorts them by length into its own batches).
            every = self._embeddings_of(np.arange(n), embeddings, encode)
            for chunk, feed in self._feeds(rows):
                feed["embeddings"] = np.ascontiguousarray(every[chunk])
                (out[chunk],) = self._session.run(["probabilities"], feed)
            return out, np.ones(n, dtype=bool)
        hard = np.ones(n, dtype=bool)
        if self._use_cascade:
            no_embeddings = np.zeros((0, self.encoder.dim), dtype=np.float32)
            none = np.zeros(0, dtype=np.int64)
            for chunk, feed in self._feeds(rows):
                feed.update(embeddings=no_embeddings, encoded=none)
                out[chunk], hard[chunk] = self._session.run(["probabilities", "use_encoder"], feed)
        picked = np.flatnonzero(hard)
        if len(picked):
            # The encoder's own batching sorts the texts by length; one call for all of them.
            part = self._embeddings_of(picked, embeddings, encode)
            for chunk, feed in self._feeds([rows[int(i)] for i in picked]):
                feed.update(
                    embeddings=np.ascontiguousarray(part[chunk]),
                    encoded=np.arange(len(chunk), dtype=np.int64),
                )
                (out[picked[chunk]],) = self._session.run(["probabilities"], feed)
        return out, hard

    @staticmethod
    def _embeddings_of(
        indices: npt.NDArray[np.int64],
        embeddings: npt.NDArray[np.float32] | None,
        encode: Callable[[npt.NDArray[np.int64]], npt.NDArray[np.float32]] | None,
    ) -> npt.NDArray[np.float32]:
        if embeddings is not None:
            return np.ascontiguousarray(embeddings[indices], dtype=np.float32)
        assert encode is not None
        return np.ascontiguousarray(encode(indices), dtype=np.float32)

    def _feeds(
        self, rows: Sequence[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]
    ) -> Iterator[tuple[npt.NDArray[np.int64], dict[str, npt.NDArray[Any]]]]:
        """The graph's feature inputs, chunk by chunk: ``(indices of the chunk's texts, feed)``."""
        n = len(rows)
        if not n:
            return
        ids_list = [ids for ids, _ in rows]
        lengths = np.fromiter(map(len, ids_list), dtype=np.int64, count=n)
        # Chunks: texts sorted by length, cut so that rows x (longest row) stays within the
        # budget; a chunk of k sorted texts pads to its last one, so rows x width grows with k.
        order = np.argsort(lengths, kind="stable")
        sorted_lengths = lengths[order]
        bounds = [0]
        while bounds[-1] < n:
            start = bounds[-1]
            widths = np.maximum(sorted_lengths[start : start + self._max_batch], 1)
            cells = widths * np.arange(1, len(widths) + 1)
            bounds.append(start + max(1, int(np.searchsorted(cells, self._batch_cells, side="right"))))
        edges = np.asarray(bounds, dtype=np.int64)
        chunk_rows = np.diff(edges)
        chunk_width = np.maximum(sorted_lengths[edges[1:] - 1], 1)
        chunk_base = np.concatenate([[0], np.cumsum(chunk_rows * chunk_width)])
        # Every chunk's padded [rows, width] block lives in one flat buffer; each feature is
        # scattered to its place at once (numpy over all features, no Python loop per text), and
        # the blocks handed to onnxruntime are reshaped views of the buffer.
        chunk_of = np.repeat(np.arange(len(chunk_rows)), chunk_rows)
        first_cell = np.empty(n, dtype=np.int64)
        first_cell[order] = chunk_base[chunk_of] + (np.arange(n) - edges[chunk_of]) * chunk_width[chunk_of]
        hashed = np.concatenate(ids_list)
        text_start = np.cumsum(lengths) - lengths
        cell = np.repeat(first_cell - text_start, lengths) + np.arange(len(hashed))
        flat_ids = np.zeros(int(chunk_base[-1]), dtype=np.int64)
        # Hashed index -> vocabulary row (format /2); a /1 graph looks the hashed index up itself.
        flat_ids[cell] = hashed if self._remap is None else self._remap[hashed]
        flat_counts = np.zeros(int(chunk_base[-1]), dtype=np.float32)
        flat_counts[cell] = np.concatenate([counts for _, counts in rows])
        for c in range(len(chunk_rows)):
            shape = (int(chunk_rows[c]), int(chunk_width[c]))
            cells_of = slice(int(chunk_base[c]), int(chunk_base[c + 1]))
            yield (
                order[edges[c] : edges[c + 1]],
                {
                    self._rows_input: flat_ids[cells_of].reshape(shape),
                    "counts": flat_counts[cells_of].reshape(shape),
                },
            )

    def predict(
        self, texts: Sequence[str], *, threshold: float | None = None, top_k: int = 3
    ) -> list[Prediction]:
        """Classify texts; ``threshold`` overrides the card's (e.g. a tenant setting)."""
        return self.decide(self.predict_proba(texts), threshold=threshold, top_k=top_k)

    def decide(
        self, probabilities: npt.NDArray[np.float32], *, threshold: float | None = None, top_k: int = 3
    ) -> list[Prediction]:
        """Turn rows of :meth:`predict_proba` into predictions (top ``top_k``, needs_review)."""
        limit = self.threshold if threshold is None else threshold
        k = max(1, min(top_k, len(self.labels)))
        top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        predictions = []
        for row, indices in zip(probabilities, top, strict=True):
            alternatives = tuple(
                Alternative(*self.labels[int(j)], probability=round(float(row[j]), 6)) for j in indices
            )
            best = alternatives[0]
            predictions.append(
                Prediction(
                    topic=best.topic,
                    subtopic=best.subtopic,
                    confidence=best.probability,
                    alternatives=alternatives,
                    needs_review=best.probability < limit,
                    model_version=self.version,
                )
            )
        return predictions
