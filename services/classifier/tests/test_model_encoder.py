"""The sentence encoder's batching (texts sorted by length into batches), with the real encoder."""

from __future__ import annotations

import numpy as np
import pytest

from civicsignals.classifier.model.encoder import SentenceEncoder, default_encoder


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return default_encoder()


def test_encoder_keeps_the_callers_order(encoder: SentenceEncoder) -> None:
    """The encoder sorts texts by length into batches; the rows must come back in input order."""
    texts = [
        "kort",
        "Een veel langere zin over een kapotte lantaarnpaal in de straat bij de school",
        "middellange zin over afval",
        "",
        "The streetlight in front of my house is broken",
    ]
    together = SentenceEncoder(encoder.path, batch_size=2).encode(texts)
    alone = np.vstack([encoder.encode([t]) for t in texts])
    similarity = together @ alone.T
    # Each row is (almost) the embedding of its own text: far closer to it than to any other.
    assert np.all(np.diag(similarity) > 0.99)
    assert np.array_equal(similarity.argmax(axis=1), np.arange(len(texts)))
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-3)


def test_batch_size_does_not_reorder(encoder: SentenceEncoder) -> None:
    texts = [f"melding nummer {i}: " + "afval " * (i % 7) for i in range(40)]
    big = SentenceEncoder(encoder.path, batch_size=64).encode(texts)
    small = SentenceEncoder(encoder.path, batch_size=8).encode(texts)
    assert big.shape == small.shape == (40, encoder.dim)
    assert np.all(np.sum(big * small, axis=1) > 0.99)
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_the_rewritten_graph_embeds_as_the_shipped_file_does(encoder: SentenceEncoder) -> None:
    """The encoder is served with its layer normalisations and selects fused (``encoder_graph``).
    Against the file as shipped, each text's embedding is as close as embedding it in another
    batch is (the activations are quantised per batch, so a rounding may fall either way)."""
    assert encoder.rewrites == {"layer_norms": 4, "selects": 14, "unused": 18}
    texts = [
        "De lantaarnpaal voor mijn huis is kapot",
        "Er ligt afval naast de container",
        "Wanneer wordt mijn paspoort klaar?",
        "The streetlight in front of my house is broken",
        "Ik wil een klacht indienen over de behandeling aan de balie",
        "Mijn afvalstoffenheffing is te hoog",
    ]
    shipped = SentenceEncoder(encoder.path, rewrite_graph=False)
    assert shipped.rewrites == {}
    rewritten, original = encoder.encode(texts), shipped.encode(texts)
    assert np.all(np.sum(rewritten * original, axis=1) > 0.999)
    assert encoder.describe()["graph_rewrites"] == encoder.rewrites
