"""The cold-start model: a usable topic model built from the taxonomy alone.

A municipality starts without labelled reports, yet every signal needs a topic from day one.
The taxonomy's names and descriptions say what each subtopic is about, in the words residents
use, so a classifier trained on them already gets clear reports right; staff correct the rest
during triage, and those corrections become the training data of the first real model.

Training examples per subtopic (all labelled ``topic/subtopic``):

* its Dutch and English name;
* ``"<topic name> <subtopic name>"`` (both languages), tying the subtopic to its topic's words;
* each sentence of its description, except sentences that send the reader *elsewhere*
  ("Let op: ...", "... horen bij Straatmeubilair", "Bel de Dierenambulance"), whose words would
  teach the model the opposite of what they say;
* each sentence of its topic's description (the words the siblings share: they steer a report to
  the right topic even when its subtopic is unclear);
* its examples in every language the taxonomy has (``examples_nl``, ``examples_en``,
  ``examples_tr`` ...).

These choices, the stop words of :mod:`.features` and ``C`` were compared on a few dozen
hand-written Dutch reports (``tests/test_model.py``); the differences between the variants were a
sentence or two, so the defaults are the simple, explainable ones rather than a tuned optimum.

The examples matter most. The descriptions (Amsterdam's, written as instructions to staff) lack
the words residents use: "De lantaarnpaal voor mijn huis doet het niet" went to *fietswrak*,
whose description mentions bikes chained to lamp posts. Five ``examples_nl`` per subtopic of
the default taxonomy raised the right topic on 300 residents' reports from 64% to 92%, and
three ``examples_en`` that on 150 English reports from 55% to 88%, and three each in Turkish,
Polish and Arabic that on 100 reports in each from 32%, 44% and 19% to 91%, 94% and 81%
(``bench/classifier/coldstart.py``, which builds every variant in one run).
"""

from __future__ import annotations

import re
from pathlib import Path

from civicsignals.classifier.model.features import DEFAULT_FEATURE_CONFIG
from civicsignals.classifier.model.training import export_bundle, train
from civicsignals.classifier.taxonomy import Taxonomy, label_key, load_taxonomy

__all__ = ["COLDSTART_C", "COLDSTART_THRESHOLD", "build_default_bundle", "coldstart_examples"]

#: Confidence below which a cold-start prediction is flagged for review.
#:
#: A model trained on definitions and a few examples is far less sure than one trained on
#: reports: with ~150 classes (a uniform guess is 0.007) and a dozen sentences each, its top
#: probability on a report ranges from 0.01 to 0.9. Chosen on the hand-written reports of the
#: tests (with descriptions only, every wrong-topic prediction stayed below 0.05 and about 40% of
#: the reports scored 0.1 or more, all right), and kept when the default taxonomy got its
#: examples: on the 300 residents' reports of ``bench/classifier/coldstart.py`` (written apart
#: from the examples) 84% then score 0.1 or more, 97% of those with the right topic (taxonomy
#: 2026.2; on its 150 English ones 55%, all but one right; on 100 Turkish, Polish and Arabic ones
#: 48%, 50% and 27%, 96-100% right); the wrong ones mostly stay under 0.1. The uncertain
#: rest goes to human triage, which is where the cold start is meant to collect its first
#: labelled data anyway. A tenant can override it (``classifier.cold_start_review_threshold``
#: in tenant.yaml).
COLDSTART_THRESHOLD = 0.1

#: Inverse regularisation strength for the cold start: the examples are few, short and clean, so
#: the weights may grow large enough to make a single telling word ("paspoort") decisive.
COLDSTART_C = 20.0

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[^\sa-z])|\n+")
_BULLET = re.compile("^[\\s\u2022\u00b7\u2013*-]+")  # whitespace, bullets, dashes
#: Cues of a sentence that points to another category or organisation rather than describing this one.
_REDIRECT = re.compile(
    r"\b(let op|hoort bij|horen bij|gebruik dan|verwijs|doorverwijzen|neem direct contact|melden bij|"
    r"dus geen|dus géén|dus niet|bel )",
    re.IGNORECASE,
)


def _sentences(description: str) -> list[str]:
    out = []
    for part in _SENTENCE_END.split(description):
        sentence = _BULLET.sub("", part).strip()
        if sentence and not _REDIRECT.search(sentence):
            out.append(sentence)
    return out


def coldstart_examples(taxonomy: Taxonomy) -> tuple[list[str], list[str]]:
    """``(texts, labels)`` to train the cold-start model on, labels as ``topic/subtopic``."""
    texts: list[str] = []
    labels: list[str] = []
    for topic in taxonomy.topics:
        topic_sentences = _sentences(topic.description_nl)
        for sub in topic.subtopics:
            label = label_key(topic.code, sub.code)
            examples = [
                sub.name_nl,
                sub.name_en,
                f"{topic.name_nl} {sub.name_nl}",
                f"{topic.name_en} {sub.name_en}",
                *_sentences(sub.description_nl),
                *topic_sentences,
                *(example for examples in sub.examples.values() for example in examples),
            ]
            seen: set[str] = set()
            for example in examples:
                if example not in seen:
                    seen.add(example)
                    texts.append(example)
                    labels.append(label)
    return texts, labels


def build_default_bundle(out_dir: Path, taxonomy: Taxonomy | None = None) -> Path:
    """Train the cold-start model for ``taxonomy`` (default: the shipped one) and export it to ``out_dir``.

    Took 92 s on a slow 2-core machine (2026-12-07), almost all of it the fit. The bundle's
    version is ``coldstart-<taxonomy version>-<data sha256[:8]>``, so the same taxonomy always
    yields the same version; the card records the taxonomy's version and fingerprint and
    ``"kind": "coldstart"``.
    """
    taxonomy = taxonomy or load_taxonomy()
    texts, labels = coldstart_examples(taxonomy)
    # Stop words dropped (the features' defaults): with a few sentences per class, the model would
    # otherwise learn whichever class's definitions happened to use "onze" or "staat".
    model = train(texts, labels, C=COLDSTART_C, class_weight="balanced", features=DEFAULT_FEATURE_CONFIG)
    return export_bundle(
        model,
        Path(out_dir),
        threshold=COLDSTART_THRESHOLD,
        version=f"coldstart-{taxonomy.version}-{model.training_sha256[:8]}",
        card_extra={
            "kind": "coldstart",
            "taxonomy": {
                "version": taxonomy.version,
                "fingerprint": taxonomy.fingerprint(),
                "topics": len(taxonomy.topics),
                "subtopics": len(taxonomy.labels()),
            },
            "threshold_rationale": (
                "cold-start model trained on the taxonomy alone (names, descriptions, examples); its "
                f"probabilities are low and flat, so predictions below {COLDSTART_THRESHOLD} go to "
                "human triage"
            ),
        },
    )
