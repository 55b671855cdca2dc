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

   Each is timed five times after a warm-up; the best time counts. The machine's two cores are
   shared, so single runs vary by some 10%: compare the two columns of one run.

2. Latency: the classifier service in-process over a real nats-server with SQLite; ``--signals``
   ``signal.received`` events are published one at a time, each waiting for its
   ``signal.classified`` (consumer fetch, classification, inbox + outbox commit, relay publish).

Usage: ``.venv/bin/python bench/classifier/throughput.py [--texts 10000] [--signals 200]``
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
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from civicsignals.classifier.model import TopicModel, TrainedModel, export_bundle, train
from civicsignals.classifier.model.encoder import SentenceEncoder

DATA = Path("/work/shared/data")


def best_of(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def throughput(n_texts: int, work: Path) -> None:
    with (DATA / "banking77.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with (DATA / "xsid_nl_en.csv").open(encoding="utf-8", newline="") as handle:
        dutch = [r["text_nl"] for r in csv.DictReader(handle)]
    train_rows = [r for r in rows if r["split"] == "train"]
    texts = [r["text"] for r in rows if r["split"] == "test"] + dutch
    texts = (texts * (n_texts // len(texts) + 1))[:n_texts]
    train_texts = [r["text"] for r in train_rows]
    labels = [r["label"] + "/x" for r in train_rows]
    encoder = SentenceEncoder(intra_op_threads=1)
    print(f"throughput on one core, {len(texts)} texts (BANKING77 test + xSID Dutch, repeated):")
    with threadpool_limits(limits=1):
        for name, use_encoder in (
            ("n-grams (default features)", False),
            ("n-grams + sentence encoder", True),
        ):
            embeddings = encoder.encode(train_texts) if use_encoder else None
            trained = train(
                train_texts,
                labels,
                solver="lbfgs",
                max_iter=2000,
                embeddings=embeddings,
                encoder=encoder.describe() if use_encoder else None,
            )
            bundle = export_bundle(trained, work / name.replace(" ", "-"))
            model = TopicModel(bundle, encoder=encoder, intra_op_threads=1)
            onnx_s = best_of(lambda m=model: m.predict_proba(texts))
            if use_encoder:
                source_s = best_of(lambda t=trained: t.predict_proba(texts, encoder.encode(texts)))
            else:
                source_s = best_of(lambda t=trained: t.predict_proba(texts))
            agree = float(
                np.mean(
                    model.predict_proba(texts[:2000]).argmax(1)
                    == trained.predict_proba(
                        texts[:2000], encoder.encode(texts[:2000]) if use_encoder else None
                    ).argmax(1)
                )
            )
            print(
                f"  {name:<28} onnxruntime {len(texts) / onnx_s:8.0f} texts/s   source model (scikit-learn) "
                f"{len(texts) / source_s:8.0f} texts/s   ratio {source_s / onnx_s:.2f}   same label {agree:.4f}"
            )
            if not use_encoder:
                # The part that differs between the two: everything after featurisation.
                from civicsignals.classifier.model.features import pad_rows
                from civicsignals.classifier.model.training import _tfidf

                rows = model._extractor.rows(texts)

                def graph_only(m: TopicModel = model, r: list[Any] = rows) -> None:
                    for start in range(0, len(r), 256):
                        batch = pad_rows(r[start : start + 256])
                        m._session.run(["probabilities"], {"ids": batch.ids, "counts": batch.counts})

                def sklearn_only(t: TrainedModel = trained, r: list[Any] = rows) -> None:
                    x = _tfidf(r, t.remap_table(), t.idf, t.sublinear_tf)
                    t.estimator.predict_proba(x)

                graph_s, sk_s = best_of(graph_only), best_of(sklearn_only)
                print(
                    f"  {'  after featurisation':<28} onnxruntime {len(texts) / graph_s:8.0f} texts/s   "
                    f"source model (scikit-learn) {len(texts) / sk_s:8.0f} texts/s   ratio {sk_s / graph_s:.2f}"
                )
        feature_s = best_of(lambda: model._extractor.rows(texts))
        encode_s = best_of(lambda: encoder.encode(texts))
        print(
            f"  parts: featurisation in Python {len(texts) / feature_s:.0f} texts/s, "
            f"sentence encoder in onnxruntime {len(texts) / encode_s:.0f} texts/s"
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-classifier-") as tmp:
        throughput(args.texts, Path(tmp))
        asyncio.run(latency(args.signals, Path(tmp)))


if __name__ == "__main__":
    main()
