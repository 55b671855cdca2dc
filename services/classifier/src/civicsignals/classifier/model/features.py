"""Text -> hashed sparse features: the only part of a topic model that runs in Python.

Why this split: tokenising strings is awkward in ONNX, while everything numeric (tf transform,
idf, L2 normalisation, the linear layer and the softmax) is easy there and then runs identically
in training checks and in serving. So this module only turns text into *which* features occur and
*how often*; the bundle's ``model.onnx`` does all the maths.

Features of a text, after :func:`normalize`:

* word unigrams ``w:<word>`` and word bigrams ``b:<word> <word>`` (word = a run of letters/digits),
  after dropping :data:`STOP_WORDS` when ``stop_words`` is on (so ``"de container is vol"`` gives
  the bigram ``container vol``);
* character n-grams ``c:<gram>`` of ``<word>`` (the word padded with ``<`` and ``>``, so prefixes and
  suffixes are distinct), for n in ``char_ngram_min..char_ngram_max``, never crossing a word
  boundary. They make the model robust to Dutch compounds, inflection and typos:
  ``lantaarnpaal``/``lantaarnpalen``/``lantarenpaal`` share most of their grams.

Each feature string is hashed to ``[0, 2**hash_bits)`` with CRC-32 of its UTF-8 bytes. CRC-32 is
stable across processes, platforms and Python versions (unlike :func:`hash`, which is salted per
process), so a model trained today reads the same indices tomorrow. Collisions just merge two
features, which a linear model tolerates at this size.

The output for a batch is ``ids`` (int64 ``[N, L]``, the distinct feature indices of each text in
ascending order) and ``counts`` (float32 ``[N, L]``, how often each occurred, summed over
collisions), padded on the right with id 0 and count 0; ``L`` is the longest row of the batch.
A zero count contributes nothing in the graph, so the padding needs no mask.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from itertools import pairwise
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_FEATURE_CONFIG",
    "STOP_WORDS",
    "TRAINED_FEATURE_CONFIG",
    "FeatureBatch",
    "FeatureConfig",
    "FeatureExtractor",
    "encode_batch",
    "feature_index",
    "feature_strings",
    "normalize",
    "pad_rows",
    "shared_extractor",
    "tokenize",
]

_WORD = re.compile(r"[^\W_]+")

#: Dutch (and the commonest English) function words, in normalised form (lowercase, no accents).
#: Negations (niet, geen, nooit) are kept on purpose: "niet opgehaald" is a report.
STOP_WORDS: frozenset[str] = frozenset(
    """
    de het een en of maar want dat die dit deze wat wie waar wanneer hoe waarom welk welke
    ik je jij u hij zij ze we wij jullie men hen hun hem haar mij me mijn jouw uw zijn ons onze zich
    zelf iemand iets er hier daar daarom dus toch al nog ook wel zo dan als om te tot
    van voor na naar in op aan bij met door over onder uit tegen tussen zonder binnen buiten sinds
    via per is ben bent was waren wordt worden werd geweest heb hebt heeft hebben had hadden
    kan kun kunt kunnen kon konden zou zouden wil wilt willen moet moeten mag mogen ga gaat gaan
    doe doet doen staat staan stond ligt liggen lag zit zitten zat even erg heel veel meer zeer
    graag alstublieft aub svp dank bedankt beste geachte hallo goedemorgen goedemiddag
    a an and or of to in on at for is are was were be been i my me we our you your it its this
    that with have has had please
    """.split()  # noqa: SIM905 - a word block reads better than 170 quoted strings
)


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """How text becomes features; stored in every model card so serving rebuilds exactly the same.

    Changing any field changes the feature space, so a model must be served with the config it
    was trained with (:class:`~civicsignals.classifier.model.inference.TopicModel` reads it from
    ``card.json``).
    """

    #: Features are hashed into ``2**hash_bits`` buckets.
    hash_bits: int = 18
    #: Longest word n-gram (1 = unigrams only, 2 = unigrams and bigrams).
    word_ngram_max: int = 2
    #: Character n-gram lengths inside ``<word>``; ``char_ngram_max = 0`` switches them off.
    char_ngram_min: int = 3
    char_ngram_max: int = 5
    #: Drop :data:`STOP_WORDS` (articles, pronouns, prepositions, auxiliaries) before building features.
    #: They carry no topic, yet fill most of a report; a model trained on few examples (the cold
    #: start) otherwise learns whichever class's definitions happened to use "onze" or "staat".
    stop_words: bool = True
    #: Drop diacritics after NFKC (``geïnd`` = ``geind``, ``café`` = ``cafe``): residents type both.
    strip_accents: bool = True
    #: Only the first ``max_chars`` characters count: bounds work and memory for pasted walls of text.
    max_chars: int = 10_000

    def __post_init__(self) -> None:
        if not 8 <= self.hash_bits <= 24:
            raise ValueError(f"hash_bits must be in 8..24, got {self.hash_bits}")
        if self.word_ngram_max not in (1, 2):
            raise ValueError(f"word_ngram_max must be 1 or 2, got {self.word_ngram_max}")
        if self.char_ngram_max != 0 and not 1 <= self.char_ngram_min <= self.char_ngram_max <= 10:
            raise ValueError(
                f"need 1 <= char_ngram_min <= char_ngram_max <= 10 (or char_ngram_max = 0), "
                f"got {self.char_ngram_min}..{self.char_ngram_max}"
            )
        if self.max_chars < 1:
            raise ValueError(f"max_chars must be positive, got {self.max_chars}")

    @property
    def dim(self) -> int:
        """Number of hash buckets, ``2**hash_bits``."""
        return 1 << self.hash_bits

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``card.json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureConfig:
        """Rebuild from ``card.json``; unknown keys are an error (a newer, incompatible card)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown feature settings {unknown}; this card needs a newer classifier")
        return cls(**{k: data[k] for k in known if k in data})


DEFAULT_FEATURE_CONFIG = FeatureConfig()

#: The features of a model trained on labelled data (``train``, ``retrain``): the defaults, but
#: with the stop words kept. With thousands of examples the model learns for itself which
#: function words matter ("why was my card declined" against "my card was declined"): in 5-fold
#: cross-validation on BANKING77's training split, keeping them was better in every fold
#: (0.9204 against 0.9180, 64 texts gained and 40 lost, paired standard error 0.10 points), and on
#: the Dutch xSID sentences (15 classes, 299 to train) it was as good or better (with the
#: encoder 0.916/0.922/0.922 against 0.912/0.920/0.922 for C = 3/10/30; n-grams alone
#: 0.868-0.904 against 0.826-0.882). The cold start (a few sentences per class) still drops them
#: (:data:`DEFAULT_FEATURE_CONFIG`, see :mod:`.coldstart`). ``docs/classifier.md``, "Measured accuracy".
TRAINED_FEATURE_CONFIG = FeatureConfig(stop_words=False)


def normalize(text: str, *, strip_accents: bool = True, max_chars: int | None = None) -> str:
    """NFKC, case-fold, optionally strip diacritics, truncate to ``max_chars``.

    NFKC folds look-alike code points (ligatures, full-width letters, ``ĳ`` -> ``ij``) that phones and
    PDFs produce; case-folding makes ``WOZ`` and ``woz`` one word.
    """
    if max_chars is not None:
        text = text[:max_chars]
    text = unicodedata.normalize("NFKC", text).casefold()
    if strip_accents:
        decomposed = unicodedata.normalize("NFD", text)
        text = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
        text = unicodedata.normalize("NFC", text)
    return text


def tokenize(normalized: str) -> list[str]:
    """Words of an already normalised text: maximal runs of letters and digits.

    Hyphens, apostrophes and punctuation split words (``woz-waarde`` -> ``woz``, ``waarde``), so
    that a redaction placeholder such as ``[telefoonnummer]`` still becomes an ordinary word.
    """
    return _WORD.findall(normalized)


def feature_index(feature: str, hash_bits: int = DEFAULT_FEATURE_CONFIG.hash_bits) -> int:
    """Stable bucket of one feature string: CRC-32 of its UTF-8 bytes, masked to ``hash_bits``."""
    return zlib.crc32(feature.encode("utf-8")) & ((1 << hash_bits) - 1)


def _words(text: str, config: FeatureConfig) -> list[str]:
    words = tokenize(normalize(text, strip_accents=config.strip_accents, max_chars=config.max_chars))
    if config.stop_words:
        return [w for w in words if w not in STOP_WORDS]
    return words


def _word_feature_strings(word: str, config: FeatureConfig) -> list[str]:
    out = [f"w:{word}"]
    if config.char_ngram_max:
        padded = f"<{word}>"
        for n in range(config.char_ngram_min, min(config.char_ngram_max, len(padded)) + 1):
            out.extend(f"c:{padded[i : i + n]}" for i in range(len(padded) - n + 1))
    return out


def feature_strings(text: str, config: FeatureConfig = DEFAULT_FEATURE_CONFIG) -> list[str]:
    """All feature strings of a text, with repetitions, before hashing.

    For debugging and for explaining a prediction; :class:`FeatureExtractor` computes the same
    thing directly as hashed counts.
    """
    words = _words(text, config)
    out: list[str] = []
    for word in words:
        out.extend(_word_feature_strings(word, config))
    if config.word_ngram_max >= 2:
        out.extend(f"b:{a} {b}" for a, b in pairwise(words))
    return out


class FeatureBatch(NamedTuple):
    """Padded feature indices and counts of a batch of texts (the ONNX graph's two inputs)."""

    ids: npt.NDArray[np.int64]
    counts: npt.NDArray[np.float32]


class FeatureExtractor:
    """Turns texts into hashed feature counts for one :class:`FeatureConfig`.

    The hashed features of each distinct word are cached (an LRU of ``cache_size`` words): words
    repeat a lot across reports, and hashing a word's ~40 character n-grams dominates the cost.
    Instances are safe to share between threads (the cache is ``functools.lru_cache``).
    """

    def __init__(self, config: FeatureConfig = DEFAULT_FEATURE_CONFIG, *, cache_size: int = 200_000) -> None:
        self.config = config
        self._mask = config.dim - 1
        self._word_ids: Callable[[str], tuple[int, ...]] = lru_cache(maxsize=cache_size)(self._hash_word)

    def _hash(self, feature: str) -> int:
        return zlib.crc32(feature.encode("utf-8")) & self._mask

    def _hash_word(self, word: str) -> tuple[int, ...]:
        return tuple(self._hash(f) for f in _word_feature_strings(word, self.config))

    def text_counts(self, text: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Distinct feature indices of one text (ascending) and their counts."""
        cfg = self.config
        words = _words(text, cfg)
        counter: Counter[int] = Counter()
        word_ids = self._word_ids
        for word in words:
            counter.update(word_ids(word))
        if cfg.word_ngram_max >= 2:
            counter.update(self._hash(f"b:{a} {b}") for a, b in pairwise(words))
        if not counter:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        ids = np.fromiter(counter.keys(), dtype=np.int64, count=len(counter))
        counts = np.fromiter(counter.values(), dtype=np.float32, count=len(counter))
        order = np.argsort(ids, kind="stable")
        return ids[order], counts[order]

    def rows(self, texts: Sequence[str]) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        """:meth:`text_counts` of each text, unpadded (for callers that batch them themselves)."""
        return [self.text_counts(t) for t in texts]

    def batch(self, texts: Sequence[str]) -> FeatureBatch:
        """Padded ``ids [N, L]`` and ``counts [N, L]`` of a batch of texts (``L >= 1``)."""
        return pad_rows(self.rows(texts))


def pad_rows(rows: Sequence[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]) -> FeatureBatch:
    """Right-pad per-text ``(ids, counts)`` to one ``[N, L]`` batch with id 0 and count 0."""
    width = max((len(ids) for ids, _ in rows), default=0) or 1
    ids_out = np.zeros((len(rows), width), dtype=np.int64)
    counts_out = np.zeros((len(rows), width), dtype=np.float32)
    for i, (ids, counts) in enumerate(rows):
        ids_out[i, : len(ids)] = ids
        counts_out[i, : len(counts)] = counts
    return FeatureBatch(ids_out, counts_out)


@lru_cache(maxsize=8)
def shared_extractor(config: FeatureConfig = DEFAULT_FEATURE_CONFIG) -> FeatureExtractor:
    """One extractor (and word cache) per config for the process, so repeated calls reuse it."""
    return FeatureExtractor(config)


def encode_batch(texts: Sequence[str], config: FeatureConfig = DEFAULT_FEATURE_CONFIG) -> FeatureBatch:
    """Padded features of a batch of texts, with a shared extractor (and word cache) per config."""
    return shared_extractor(config).batch(texts)
