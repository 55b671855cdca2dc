"""Accuracy through the commands, as tools outside the project call them.

* BANKING77 (77 English banking intents): ``train`` on the train split, ``evaluate`` on the test
  split; with the default features (n-grams + sentence encoder) and with n-grams only.
* CLINC150 (150 intents + out-of-scope): ``train`` on the in-scope train split (the model never
  sees an out-of-scope text), ``evaluate`` on the in-scope test split, and ``predict`` on the
  out-of-scope test split: out-of-scope recall is the share that gets ``needs_review`` at the
  threshold ``train`` chose on its own held-out in-scope data (split-conformal: about 5% of the
  held-out predictions that were right fall below it, the default ``--review-share 0.05``).

Nothing here is tuned on a test split: every setting is the commands' default. Usage::

    .venv/bin/python bench/classifier/accuracy.py [--data <repo>/../shared/data] [--quick]

``--quick`` skips CLINC150 and the n-gram-only BANKING77 run.

With the encoder, ``train`` adds a cascade (texts the n-gram head is sure of skip the encoder);
for those bundles each line is followed by the same bundle served without its cascade (every
text through the full model, in-process), so the cascade's effect is measured in the same run.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = str(Path(sys.executable).with_name("civicsignals-classifier"))
#: The shared data sets live beside the repository (``<repo>/../shared/data``); ``--data`` overrides.
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def run(*args: str) -> tuple[str, float]:
    started = time.perf_counter()
    done = subprocess.run([CLI, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(args[:1])} failed:\n{done.stderr}")
    return done.stdout, time.perf_counter() - started


def write(path: Path, rows: list[dict[str, str]], fields: list[str]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def without_cascade(model: Path, data: Path, **columns: str | None) -> tuple[float, list[tuple[float, bool]]]:
    """Accuracy, and per text (confidence, right), of ``model`` served without its cascade."""
    from civicsignals.classifier.data import read_labelled
    from civicsignals.classifier.model import TopicModel

    labelled = read_labelled(data, **columns)  # type: ignore[arg-type]
    served = TopicModel(model, cascade=False)
    predictions = served.predict(labelled.texts, top_k=1)
    if served.topics_only or not labelled.has_subtopics:
        right = [p.topic == t for p, (t, _) in zip(predictions, labelled.labels, strict=True)]
    else:
        right = [
            (p.topic, p.subtopic) == label for p, label in zip(predictions, labelled.labels, strict=True)
        ]
    return sum(right) / len(right), [(p.confidence, ok) for p, ok in zip(predictions, right, strict=True)]


def cascade_line(card: dict) -> str | None:
    block = card.get("cascade")
    if not block:
        return None
    return (
        f"  cascade threshold {block['threshold']:.4f} (held-out: {block['skipped_encoder']:.3f} skip the encoder, "
        f"accuracy {block['accuracy']:.4f} with the cascade against {block['full_accuracy']:.4f} without; "
        f"n-gram head alone {block['head_accuracy']:.4f})"
    )


def banking(data: Path, work: Path, extra: list[str], name: str) -> None:
    source = str(data / "banking77.csv")
    columns = ["--text-column", "text", "--topic-column", "label", "--split-column", "split"]
    model = work / f"banking-{name}"
    _, train_s = run("train", "--data", source, "--out", str(model), *columns, "--split", "train", *extra)
    out, eval_s = run("evaluate", "--model", str(model), "--data", source, *columns, "--split", "test")
    result = json.loads(out)
    card = json.loads((model / "card.json").read_text())
    print(
        f"BANKING77 {name:<18} test accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  "
        f"n {result['n']}  (held-out in training {card['heldout']['accuracy']:.4f}, C {card['heldout']['C']}, "
        f"train {train_s:.0f} s, evaluate {eval_s:.1f} s)"
    )
    print(
        f"  at the card's threshold {card['threshold']}: test accepted {result['accepted']:.3f} "
        f"with accuracy {result['accuracy_accepted']}"
    )
    curve = ", ".join(f"{p['examples']}: {p['accuracy']:.3f}" for p in card.get("learning_curve", []))
    if curve:
        print(f"  learning curve (held-out accuracy by training examples): {curve}")
    line = cascade_line(card)
    if line:
        print(line)
        full, scored = without_cascade(
            model, Path(source), text_column="text", topic_column="label", split_column="split", split="test"
        )
        accepted = [ok for conf, ok in scored if conf >= card["threshold"]]
        print(
            f"  same bundle without its cascade: test accuracy {full:.4f}; at the card's threshold accepted "
            f"{len(accepted) / len(scored):.3f} with accuracy {sum(accepted) / max(len(accepted), 1):.4f}"
        )


def clinc(data: Path, work: Path) -> None:
    with (data / "clinc150.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    fields = ["text", "intent"]
    train = write(
        work / "clinc-train.csv", [r for r in rows if r["split"] == "train" and r["intent"] != "oos"], fields
    )
    test_in = write(
        work / "clinc-test-in.csv", [r for r in rows if r["split"] == "test" and r["intent"] != "oos"], fields
    )
    test_oos = write(
        work / "clinc-test-oos.csv",
        [r for r in rows if r["split"] == "test" and r["intent"] == "oos"],
        fields,
    )
    model = work / "clinc"
    columns = ["--text-column", "text", "--topic-column", "intent"]
    _, train_s = run("train", "--data", str(train), "--out", str(model), *columns, "--no-learning-curve")
    out, _ = run("evaluate", "--model", str(model), "--data", str(test_in), *columns)
    result = json.loads(out)
    predicted = work / "clinc-oos-predicted.csv"
    run("predict", "--model", str(model), "--data", str(test_oos), "--out", str(predicted))
    with predicted.open(encoding="utf-8", newline="") as handle:
        flags = [r["needs_review"] == "true" for r in csv.DictReader(handle)]
    card = json.loads((model / "card.json").read_text())
    predicted_in = work / "clinc-in-predicted.csv"
    run("predict", "--model", str(model), "--data", str(test_in), "--out", str(predicted_in))
    with predicted_in.open(encoding="utf-8", newline="") as handle:
        inside = [(float(r["confidence"]), r["topic"] == r["intent"]) for r in csv.DictReader(handle)]
    with predicted.open(encoding="utf-8", newline="") as handle:
        outside = [float(r["confidence"]) for r in csv.DictReader(handle)]
    held = card["heldout"]["at_threshold"]
    print(
        f"CLINC150 in-scope test accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  "
        f"n {result['n']}; threshold {card['threshold']} (chosen on held-out in-scope data: there "
        f"{held.get('right_sent_to_review')} of the right and {held.get('wrong_sent_to_review')} of the "
        f"wrong predictions fall below it): "
        f"in-scope accepted {result['accepted']:.3f} with accuracy {result['accuracy_accepted']}, "
        f"out-of-scope recall {sum(flags) / len(flags):.3f} (n {len(flags)})  (train {train_s:.0f} s)"
    )
    line = cascade_line(card)
    if line:
        print(line)
        full, scored = without_cascade(model, test_in, text_column="text", topic_column="intent")
        _, scored_oos = without_cascade(model, test_oos, text_column="text", topic_column="intent")
        accepted = [ok for conf, ok in scored if conf >= card["threshold"]]
        recall = sum(conf < card["threshold"] for conf, _ in scored_oos) / len(scored_oos)
        print(
            f"  same bundle without its cascade: in-scope accuracy {full:.4f}, in-scope accepted "
            f"{len(accepted) / len(scored):.3f} with accuracy {sum(accepted) / max(len(accepted), 1):.4f}, "
            f"out-of-scope recall {recall:.3f}"
        )
    # The trade-off a municipality chooses from with its own review_threshold (a report, not a tuning).
    print("  threshold  in-scope accepted  accuracy of accepted  out-of-scope recall")
    for threshold in (card["threshold"], 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        accepted = [ok for conf, ok in inside if conf >= threshold]
        recall = sum(conf < threshold for conf in outside) / len(outside)
        share = len(accepted) / len(inside)
        accuracy = sum(accepted) / len(accepted) if accepted else float("nan")
        print(f"  {threshold:9.3f}  {share:17.3f}  {accuracy:20.4f}  {recall:19.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA, help=f"the shared data folder (default {DATA})")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--clinc-only", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-classifier-") as tmp:
        work = Path(tmp)
        if args.clinc_only:
            clinc(args.data, work)
            return
        banking(args.data, work, [], "default (encoder)")
        if not args.quick:
            banking(args.data, work, ["--no-encoder"], "n-grams only")
            clinc(args.data, work)


if __name__ == "__main__":
    main()
