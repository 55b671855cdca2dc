"""Batch inference speed in onnxruntime beside the source model's own predict, and the latency the
classifier stage adds to a signal.

1. Throughput, one core (onnxruntime with one intra-op thread, scikit-learn/BLAS limited to one
   thread), on the same texts in the same run: BANKING77 test texts and the Dutch xSID texts,
   repeated to ``--texts``. Three models, trained on BANKING77's train split: the n-gram
   features alone; the default (n-grams plus the sentence encoder, with the cascade: an n-gram
   head answers the texts it is sure of, only the others are encoded, the threshold chosen on
   held-out training texts); and the same full model without the cascade (every text encoded,
   as bundles were before it). For each:

   * ``onnxruntime``: :meth:`TopicModel.predict_proba`, i.e. Python featurisation (+ the encoder
     session) + the topic graph;
   * ``source model``: :meth:`TrainedModel.predict_proba`, the same featurisation (+ the encoder)
     and scikit-learn's ``LogisticRegression.predict_proba`` on the tf-idf matrix; with the
     cascade, the same cascade in scikit-learn (the n-gram head's ``predict_proba`` on every
     text, the encoder and the full model on the texts below the threshold only).

   The cascade row also prints how many texts skipped the encoder. Each end-to-end row is
   followed by the same per CPU second of the process (``time.process_time``), which leaves out
   the time it waited for a core while other work ran on the shared machine.

   Both share one feature extractor (with its word cache) per process, so the end-to-end row
   compares like with like; the row "after featurisation" times only what differs: the graph as
   serving runs it (:meth:`TopicModel.proba_from_features`: sorted, chunked, padded) against the
   tf-idf matrix plus scikit-learn's ``predict_proba``, on the same feature rows (and embeddings).
   Both rows also check the two agree: same label share and the largest probability difference.

   The "parts" line times featurisation alone and the sentence encoder alone, the encoder as
   :meth:`SentenceEncoder.encode` runs it (texts sorted by length, batches of 128) beside the
   way it ran before (input order, batches of 256), on the same session; then the encoder with its
   graph rewritten as it is served (:mod:`civicsignals.classifier.model.encoder_graph`) beside
   the file as shipped.

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
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from civicsignals.classifier.data import LabelledData, read_labelled
from civicsignals.classifier.model import (
    TRAINED_FEATURE_CONFIG,
    TopicModel,
    TrainedModel,
    export_bundle,
    train,
)
from civicsignals.classifier.model.encoder import SentenceEncoder
from civicsignals.classifier.model.features import shared_extractor
from civicsignals.classifier.model.training import with_cascade
from civicsignals.classifier.pipeline import (
    TrainOptions,
    _cascade_on_heldout,
    _class_names,
    _fit,
    _holdout_split,
    _predict_trained,
)

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
    machine then falls on both columns alike instead of on whichever happened to run during it.

    Wall-clock seconds are returned; the best CPU seconds of the process for each (which leave out
    the time the process waited for a core while others ran) are kept in :data:`LAST_CPU`."""
    first()
    second()
    a, b, a_cpu, b_cpu = [], [], [], []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        first()
        a.append(time.perf_counter() - started)
        a_cpu.append(time.process_time() - cpu)
        started, cpu = time.perf_counter(), time.process_time()
        second()
        b.append(time.perf_counter() - started)
        b_cpu.append(time.process_time() - cpu)
    LAST_CPU[:] = [min(a_cpu), min(b_cpu)]
    return min(a), min(b)


#: CPU seconds of the last :func:`best_of_pair` (first, second).
LAST_CPU: list[float] = [0.0, 0.0]


def _row(name: str, n: int, onnx_s: float, source_s: float, extra: str = "") -> str:
    return (
        f"  {name:<28} onnxruntime {n / onnx_s:8.0f} texts/s   source model (scikit-learn) "
        f"{n / source_s:8.0f} texts/s   ratio {source_s / onnx_s:.2f}{extra}"
    )


def compare(
    name: str, model: TopicModel, trained: TrainedModel, texts: list[str], encoder: SentenceEncoder | None
) -> list[str]:
    """The two rows of one model: end to end, and after featurisation (and encoding).

    With a cascade, both columns run it: the n-gram head first, the encoder and the full model
    only for the texts the head is not sure of (scikit-learn: :meth:`TrainedModel.predict_proba`
    with ``encode``, which embeds exactly those texts in one call, as serving does)."""
    n = len(texts)

    def encode(batch: list[str]) -> npt.NDArray[np.float32] | None:
        return None if encoder is None else encoder.encode(batch)

    # End to end: text in, probabilities out; both share featurisation (and the encoder session).
    if trained.cascade is not None:
        onnx_s, source_s = best_of_pair(
            lambda: model.predict_proba(texts),
            lambda: trained.predict_proba(texts, encode=encoder_of(encoder)),
        )
    else:
        onnx_s, source_s = best_of_pair(
            lambda: model.predict_proba(texts), lambda: trained.predict_proba(texts, encode(texts))
        )
    onnx_cpu, source_cpu = LAST_CPU
    sample = texts[:2000]
    ours = model.predict_proba(sample)
    theirs = trained.predict_proba(sample, encode=encoder_of(encoder))
    agree = float(np.mean(ours.argmax(1) == theirs.argmax(1)))
    diff = float(np.abs(ours - theirs).max())
    extra = f"   same label {agree:.4f}   max |dp| {diff:.1e}"
    if trained.cascade is not None:
        _, used = model.predict_proba_routed(texts)
        extra += (
            f"   skipped the encoder {int((~used).sum())}/{n} ({float((~used).mean()):.1%}; "
            f"cascade threshold {trained.cascade.threshold:.4f})"
        )
    lines = [_row(name, n, onnx_s, source_s, extra)]
    # The same per CPU second of this process: the time it waited for a core left out.
    lines.append(_row("  per CPU second", n, onnx_cpu, source_cpu))
    # The part that differs between the two: everything after featurisation (and encoding).
    # onnxruntime as serving runs it (sorted by length, chunked, padded, one run per chunk);
    # scikit-learn: the tf-idf matrix and LogisticRegression.predict_proba (the cascade: the
    # n-gram head on all texts, the full model on the rest), on the same embeddings.
    features = model._extractor.rows(texts)
    text_emb = encode(texts)
    if trained.cascade is not None:
        graph_s, sk_s = best_of_pair(
            lambda: model.proba_from_features(features, embeddings=text_emb),
            lambda: trained.cascade_proba_from_features(features, embeddings=text_emb),
        )
    else:
        graph_s, sk_s = best_of_pair(
            lambda: model.proba_from_features(features, embeddings=text_emb),
            lambda: trained.estimator.predict_proba(trained.transform_features(features, text_emb)),
        )
    lines.append(_row("  after featurisation", n, graph_s, sk_s))
    return lines


def encoder_of(encoder: SentenceEncoder | None) -> Callable[[list[str]], npt.NDArray[np.float32]] | None:
    return None if encoder is None else encoder.encode


def cascade_model(
    data: LabelledData, encoder: SentenceEncoder, embeddings: npt.NDArray[np.float32]
) -> tuple[TrainedModel, TrainedModel, dict[str, object]]:
    """The default model as ``train`` builds it on BANKING77's train split, with its cascade: the
    full model and the n-gram head fitted on the same 90% as ``train`` (its held-out split, C = 10,
    the C ``train`` picks there), the cascade threshold chosen on the other 10% by the same rule, so
    it is the threshold of the bundle ``train`` writes. The bench skips ``train``'s refit on all
    the data (minutes, and no change in speed). Returns ``(with cascade, without, card block)``:
    the same full model, once with the cascade and once without."""
    options = TrainOptions()
    classes = _class_names(data.labels)
    train_idx, held_idx, _ = _holdout_split(data, options.holdout, options.seed)
    fit_texts = [data.texts[i] for i in train_idx]
    fit_classes = [classes[i] for i in train_idx]
    held_texts = [data.texts[i] for i in held_idx]
    full = _fit(fit_texts, fit_classes, embeddings[train_idx], encoder, options, 10.0)
    head = _fit(fit_texts, fit_classes, None, None, options, 10.0)
    full_guess, full_conf = _predict_trained(full, held_texts, embeddings[held_idx])
    head_guess, head_conf = _predict_trained(head, held_texts, None)
    block, _, _ = _cascade_on_heldout(
        [classes[i] for i in held_idx], full_guess, full_conf, head_guess, head_conf
    )
    if block["threshold"] is None:
        raise SystemExit("no cascade threshold qualified on the held-out texts")
    return with_cascade(full, head, float(block["threshold"])), full, block


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
        # N-grams alone (as `train --no-encoder` fits them: no class weighting, newton-cg).
        trained = train(train_texts, labels, class_weight=None, solver="newton-cg", max_iter=2000)
        model = TopicModel(export_bundle(trained, work / "ngrams"), intra_op_threads=1)
        for line in compare("n-grams alone", model, trained, texts, None):
            print(line)
        # The default (`train`): n-grams + sentence encoder with the cascade; and the same full
        # model without a cascade (every text encoded), as bundles were before it.
        banking = read_labelled(
            data / "banking77.csv",
            text_column="text",
            topic_column="label",
            split_column="split",
            split="train",
        )
        cascaded, plain, block = cascade_model(banking, encoder, encoder.encode(banking.texts))
        print(
            f"  (cascade threshold {block['threshold']:.4f}, chosen as `train` chooses it: on its held-out "
            f"{block['heldout_n']} texts {block['skipped_encoder']:.1%} skip the encoder, accuracy "
            f"{block['accuracy']:.4f} with the cascade, {block['full_accuracy']:.4f} without)"
        )
        for name, trained in (
            ("default: + encoder, cascade", cascaded),
            ("+ encoder, no cascade", plain),
        ):
            # Labels as `train` writes them (its class names are JSON [topic, subtopic] pairs).
            labels_of = [tuple(json.loads(c)) for c in trained.classes]
            folder = work / name.replace(" ", "-").replace(":", "").replace(",", "")
            bundle = export_bundle(trained, folder, labels=[(str(t), s) for t, s in labels_of])
            model = TopicModel(bundle, encoder=encoder, intra_op_threads=1)
            for line in compare(name, model, trained, texts, encoder):
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
        shipped = SentenceEncoder(intra_op_threads=1, rewrite_graph=False)
        encode_s, shipped_s = best_of_pair(lambda: encoder.encode(texts), lambda: shipped.encode(texts))
        agreement = float(np.min(np.sum(encoder.encode(texts[:500]) * shipped.encode(texts[:500]), axis=1)))
        print(
            f"  sentence encoder with its graph rewritten ({encoder.rewrites}) {n / encode_s:.0f} texts/s, "
            f"as shipped {n / shipped_s:.0f} texts/s, ratio {shipped_s / encode_s:.2f} "
            f"(lowest cosine between the two embeddings of a text, first 500 texts: {agreement:.4f})"
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
