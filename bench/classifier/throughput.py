"""Batch inference speed in onnxruntime beside the source model's own predict, and the latency the
classifier stage adds to a signal.

1. Throughput, one core (onnxruntime with one intra-op thread, scikit-learn/BLAS limited to one
   thread), on the same texts in the same run: BANKING77 test texts and the Dutch xSID texts,
   repeated to ``--texts``. For each model (the default n-gram features alone, and n-grams plus
   the sentence encoder, both trained on BANKING77's train split):

   * ``onnxruntime``: :meth:`TopicModel.predict_proba`, i.e. Python featurisation (+ the encoder
     session) + the topic graph;
   * ``source model``: :meth:`TrainedModel.predict_proba`, the same featurisation (+ the encoder)
     and scikit-learn's ``LogisticRegression.predict_proba`` on the tf-idf matrix.

   Both share one feature extractor (with its word cache) per process, so the end-to-end row
   compares like with like; the row "after featurisation" times only what differs: the graph as
   serving runs it (:meth:`TopicModel.proba_from_features`: sorted, chunked, padded) against the
   tf-idf matrix plus scikit-learn's ``predict_proba``, on the same feature rows (and embeddings).
   Both rows also check the two agree: same label share and the largest probability difference.

   The "parts" line times featurisation alone and the sentence encoder alone, the encoder as
   :meth:`SentenceEncoder.encode` runs it (texts sorted by length, batches of 128) beside the
   way it ran before (input order, batches of 256), on the same session.

   After a warm-up, the two are timed alternately seven times each and the best time of each
   counts. The machine's two cores are shared, so runs vary a lot: compare the columns of one run.

2. Latency: the classifier service in-process over a real nats-server with SQLite; ``--signals``
   ``signal.received`` events are published one at a time, each waiting for its
   ``signal.classified`` (consumer fetch, classification, inbox + outbox commit, relay publish).

Usage: ``.venv/bin/python bench/classifier/throughput.py [--texts 10000] [--signals 200] [--data DIR]``
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from civicsignals.classifier.model import (
    TRAINED_FEATURE_CONFIG,
    TopicModel,
    TrainedModel,
    export_bundle,
    train,
)
from civicsignals.classifier.model.encoder import SentenceEncoder
from civicsignals.classifier.model.features import shared_extractor

#: The shared data sets live beside the repository (``<repo>/../shared/data``); ``--data`` overrides.
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def best_of(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def best_of_pair(
    first: Callable[[], object], second: Callable[[], object], repeats: int = 7
) -> tuple[float, float]:
    """Best time of each of two functions, run alternately: load from other work on the shared
    machine then falls on both columns alike instead of on whichever happened to run during it."""
    first()
    second()
    a, b = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        first()
        a.append(time.perf_counter() - started)
        started = time.perf_counter()
        second()
        b.append(time.perf_counter() - started)
    return min(a), min(b)


def _row(name: str, n: int, onnx_s: float, source_s: float, extra: str = "") -> str:
    return (
        f"  {name:<28} onnxruntime {n / onnx_s:8.0f} texts/s   source model (scikit-learn) "
        f"{n / source_s:8.0f} texts/s   ratio {source_s / onnx_s:.2f}{extra}"
    )


def compare(
    name: str, model: TopicModel, trained: TrainedModel, texts: list[str], encoder: SentenceEncoder | None
) -> list[str]:
    """The two rows of one model: end to end, and after featurisation (and encoding)."""
    n = len(texts)

    def encode(batch: list[str]) -> npt.NDArray[np.float32] | None:
        return None if encoder is None else encoder.encode(batch)

    # End to end: text in, probabilities out; both share featurisation (and the encoder session).
    onnx_s, source_s = best_of_pair(
        lambda: model.predict_proba(texts), lambda: trained.predict_proba(texts, encode(texts))
    )
    sample = texts[:2000]
    sample_emb = encode(sample)
    ours = model.predict_proba(sample, embeddings=sample_emb)
    theirs = trained.predict_proba(sample, sample_emb)
    agree = float(np.mean(ours.argmax(1) == theirs.argmax(1)))
    diff = float(np.abs(ours - theirs).max())
    lines = [_row(name, n, onnx_s, source_s, f"   same label {agree:.4f}   max |dp| {diff:.1e}")]
    # The part that differs between the two: everything after featurisation (and encoding).
    # onnxruntime as serving runs it (sorted by length, chunked, padded, one run per chunk);
    # scikit-learn: the tf-idf matrix and LogisticRegression.predict_proba.
    features = model._extractor.rows(texts)
    text_emb = encode(texts)
    graph_s, sk_s = best_of_pair(
        lambda: model.proba_from_features(features, embeddings=text_emb),
        lambda: trained.estimator.predict_proba(trained.transform_features(features, text_emb)),
    )
    lines.append(_row("  after featurisation", n, graph_s, sk_s))
    return lines


def encode_unsorted(
    encoder: SentenceEncoder, texts: list[str], batch_size: int = 256
) -> npt.NDArray[np.float32]:
    """The encoder as it ran before: texts in input order, batches of 256 (the reference for
    :meth:`SentenceEncoder.encode`, which sorts texts by length into batches of 128)."""
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    for start in range(0, len(texts), batch_size):
        chunk = np.array(texts[start : start + batch_size], dtype=object)
        out[start : start + len(chunk)] = encoder._session.run(["outputs"], {"inputs": chunk})[0]
    return out


def throughput(n_texts: int, work: Path, data: Path) -> None:
    with (data / "banking77.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with (data / "xsid_nl_en.csv").open(encoding="utf-8", newline="") as handle:
        dutch = [r["text_nl"] for r in csv.DictReader(handle)]
    train_rows = [r for r in rows if r["split"] == "train"]
    texts = [r["text"] for r in rows if r["split"] == "test"] + dutch
    texts = (texts * (n_texts // len(texts) + 1))[:n_texts]
    train_texts = [r["text"] for r in train_rows]
    labels = [r["label"] + "/x" for r in train_rows]
    encoder = SentenceEncoder(intra_op_threads=1)
    n = len(texts)
    print(f"throughput on one core, {n} texts (BANKING77 test + xSID Dutch, repeated):")
    with threadpool_limits(limits=1):
        for name, use_encoder in (
            ("n-grams (default features)", False),
            ("n-grams + sentence encoder", True),
        ):
            embeddings = encoder.encode(train_texts) if use_encoder else None
            # As `train` fits them (no class weighting; lbfgs with the embeddings, else newton-cg).
            trained = train(
                train_texts,
                labels,
                class_weight=None,
                solver="lbfgs" if use_encoder else "newton-cg",
                max_iter=2000,
                embeddings=embeddings,
                encoder=encoder.describe() if use_encoder else None,
            )
            bundle = export_bundle(trained, work / name.replace(" ", "-"))
            model = TopicModel(bundle, encoder=encoder, intra_op_threads=1)
            for line in compare(name, model, trained, texts, encoder if use_encoder else None):
                print(line)
        feature_s = best_of(lambda: shared_extractor(TRAINED_FEATURE_CONFIG).rows(texts))
        encode_s, unsorted_s = best_of_pair(
            lambda: encoder.encode(texts), lambda: encode_unsorted(encoder, texts)
        )
        print(
            f"  parts: featurisation in Python {n / feature_s:.0f} texts/s, "
            f"sentence encoder in onnxruntime {n / encode_s:.0f} texts/s "
            f"(sorted by length, batches of {encoder.batch_size}; in input order, batches of 256 as before: "
            f"{n / unsorted_s:.0f} texts/s, ratio {unsorted_s / encode_s:.2f})"
        )


async def latency(n_signals: int, work: Path) -> None:
    from civicsignals.classifier.app import create_app
    from civicsignals.classifier.settings import ClassifierSettings
    from civicsignals.common.bus import Bus
    from civicsignals.common.events import CloudEvent, SignalReceived, make_event
    from civicsignals.common.ids import new_id
    from civicsignals.common.tenants import add_key
    from civicsignals.devstack.nats import NatsServer

    tenants = work / "tenants"
    (tenants / "bench").mkdir(parents=True)
    (tenants / "bench" / "tenant.yaml").write_text("name: Bench\n", encoding="utf-8")
    add_key(tenants / "bench", ["signals:write"])
    nats = NatsServer(store_dir=work / "nats").start()
    try:
        settings = ClassifierSettings(
            nats_url=nats.url, tenants_dir=tenants, data_dir=work / "data", models_dir=work / "models"
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            await asyncio.wait_for(app.state.runtime.bus_ready.wait(), timeout=30)
            bus = Bus(nats.url, service="bench")
            await bus.connect(retry_forever=False)
            got: asyncio.Queue[str] = asyncio.Queue()

            async def on_message(msg) -> None:  # type: ignore[no-untyped-def]
                await got.put(CloudEvent.from_json(msg.data).data["signal_id"])

            subscription = await bus.nc.subscribe("civic.bench.signal.classified", cb=on_message)
            texts = [
                "Er ligt afval naast de container",
                "De lantaarnpaal is kapot",
                "Paspoort verlengen, afspraak?",
            ]
            samples = []
            for index in range(n_signals + 10):
                data = SignalReceived(
                    signal_id=new_id(),
                    tracking_code="BNCH-0000-0000",
                    kind="report",
                    channel="web",
                    text=texts[index % len(texts)],
                    received_at=datetime.now(UTC),
                    has_contact=False,
                    source="bench",
                )
                started = time.perf_counter()
                await bus.publish(
                    SignalReceived.bus_subject("bench"),
                    make_event(tenant="bench", service="bench", data=data),
                )
                while await asyncio.wait_for(got.get(), timeout=30) != data.signal_id:
                    pass
                if index >= 10:  # warm-up
                    samples.append(time.perf_counter() - started)
            await subscription.unsubscribe()
            await bus.close()
            model = app.state.classifier.registry.model_for("bench")
            alone = []
            for index in range(200):
                started = time.perf_counter()
                model.predict([texts[index % 3]])
                alone.append(time.perf_counter() - started)
    finally:
        nats.stop()
    q = statistics.quantiles(samples, n=20)
    print(
        f"latency of the classifier stage, {len(samples)} signals one at a time (SQLite, cold-start model): "
        f"p50 {statistics.median(samples) * 1000:.1f} ms, p95 {q[18] * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms; "
        f"of which the model call p50 {statistics.median(alone) * 1000:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=10_000)
    parser.add_argument("--signals", type=int, default=200)
    parser.add_argument("--data", type=Path, default=DATA, help=f"the shared data folder (default {DATA})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-classifier-") as tmp:
        throughput(args.texts, Path(tmp), args.data)
        asyncio.run(latency(args.signals, Path(tmp)))


if __name__ == "__main__":
    main()
