"""How well the cold-start model (no training data) classifies residents' reports.

The cold-start model is what a municipality runs on day one: trained on the taxonomy alone
(names, descriptions and the subtopics' examples: ``examples_nl``, ``examples_en``, and
``examples_tr``, ``examples_pl`` and ``examples_ar`` for residents who write in Turkish, Polish or
Arabic). This script builds it with the ``coldstart`` command four times in the same run: from the
shipped taxonomy's descriptions only (every example removed), with its Dutch examples only, with
the Dutch and English ones, and as shipped. Each is measured on five sets of reports as residents
write them, each report labelled with the subtopic triage would choose:

* ``coldstart_reports.csv``: 300 reports, nearly all Dutch (16 in English), every subtopic at
  least once;
* ``coldstart_reports_en.csv``: 150 reports in English, as expats write them;
* ``coldstart_reports_tr.csv``, ``_pl.csv``, ``_ar.csv``: 100 reports each in Turkish, Polish and
  Arabic.

Every set was written separately from the taxonomy's examples, without sight of them (and they
without sight of the sets); nothing in the taxonomy is to be tuned on them.

Printed per model and set: topic and subtopic accuracy and macro-F1 (the ``evaluate`` command's
own figures, checked against the model served in-process), and at the card's review threshold
the share of reports that pass without review and how many of those have the right topic (what
the dashboard and routing act on without a person). Writes ``coldstart.md`` and
``coldstart.png`` (topic accuracy per topic, every model, one panel per set) to ``--out``.
Usage::

    .venv/bin/python bench/classifier/coldstart.py [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

CLI = str(Path(sys.executable).with_name("civicsignals-classifier"))
HERE = Path(__file__).resolve().parent
SETS = {
    "Dutch (and some English)": HERE / "coldstart_reports.csv",
    "English": HERE / "coldstart_reports_en.csv",
    "Turkish": HERE / "coldstart_reports_tr.csv",
    "Polish": HERE / "coldstart_reports_pl.csv",
    "Arabic": HERE / "coldstart_reports_ar.csv",
}
TAXONOMY = HERE.parents[1] / "services/classifier/src/civicsignals/classifier/taxonomy/default.yaml"


def command(*args: str) -> str:
    done = subprocess.run([CLI, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"civicsignals-classifier {args[0]} failed:\n{done.stderr}")
    return done.stdout


def keeping(taxonomy: Path, languages: tuple[str, ...], out: Path) -> Path:
    """The same taxonomy with the examples of ``languages`` only (every other ``examples_<xx>``
    removed from every subtopic)."""
    document = yaml.safe_load(taxonomy.read_text(encoding="utf-8"))
    for topic in document["topics"]:
        for subtopic in topic["subtopics"]:
            for key in [k for k in subtopic if k.startswith("examples_")]:
                if key.removeprefix("examples_") not in languages:
                    del subtopic[key]
    out.write_text(yaml.safe_dump(document, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return out


@dataclass
class Figures:
    name: str
    examples: int
    topic_accuracy: float
    topic_macro_f1: float
    subtopic_accuracy: float
    subtopic_macro_f1: float
    threshold: float
    passed: int
    passed_right_topic: int
    n: int
    per_topic: dict[str, tuple[int, int]]
    """topic code -> (reports with the right topic, reports of that topic)"""

    def line(self) -> str:
        return (
            f"{self.name} ({self.examples} training texts): topic accuracy {self.topic_accuracy:.3f} "
            f"(macro-F1 {self.topic_macro_f1:.3f}), subtopic {self.subtopic_accuracy:.3f} "
            f"(macro-F1 {self.subtopic_macro_f1:.3f}); at threshold {self.threshold:g}: "
            f"{self.passed}/{self.n} pass without review, {self.passed_right_topic} of them the right topic"
        )


def measure(name: str, bundle: Path, reports: Path, work: Path) -> Figures:
    from civicsignals.classifier.model import TopicModel

    official = json.loads(
        command("evaluate", "--model", str(bundle), "--data", str(reports), "--report", str(work))
    )
    card = json.loads((bundle / "card.json").read_text(encoding="utf-8"))
    with reports.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    model = TopicModel(bundle)
    predictions = model.predict([row["text"] for row in rows])
    per_topic: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    passed = passed_right = 0
    for row, prediction in zip(rows, predictions, strict=True):
        right = prediction.topic == row["topic"]
        per_topic[row["topic"]][0] += right
        per_topic[row["topic"]][1] += 1
        if not prediction.needs_review:
            passed += 1
            passed_right += right
    served_right = sum(right for right, _ in per_topic.values())
    if abs(served_right / len(rows) - official["accuracy"]) > 5e-5:  # evaluate rounds to 4 places
        sys.exit(
            f"{name}: evaluate says topic accuracy {official['accuracy']}, the served model {served_right}"
        )
    return Figures(
        name=name,
        examples=sum(card["class_counts"].values()),
        topic_accuracy=official["accuracy"],
        topic_macro_f1=official["macro_f1"],
        subtopic_accuracy=official["subtopic"]["accuracy"],
        subtopic_macro_f1=official["subtopic"]["macro_f1"],
        threshold=model.threshold,
        passed=passed,
        passed_right_topic=passed_right,
        n=len(rows),
        per_topic={topic: (right, total) for topic, (right, total) in per_topic.items()},
    )


def plot(results: dict[str, list[Figures]], path: Path) -> None:
    """One panel per set: topic accuracy per topic (most reports first), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(11, 5.5 * len(results)))
    for ax, (set_name, figures) in zip(axes, results.items(), strict=True):
        counts = figures[0].per_topic
        topics = sorted(counts, key=lambda t: -counts[t][1])
        width = 0.8 / len(figures)
        for index, model in enumerate(figures):
            values = [model.per_topic[t][0] / model.per_topic[t][1] for t in topics]
            ax.bar([i + index * width for i in range(len(topics))], values, width, label=model.name)
        ax.set_xticks([i + width * (len(figures) - 1) / 2 for i in range(len(topics))])
        ax.set_xticklabels([f"{t} ({counts[t][1]})" for t in topics], rotation=60, ha="right", fontsize=8)
        ax.set_ylim(0, 1.15)  # room for the legend above the bars
        ax.set_ylabel("share of reports with the right topic")
        ax.set_title(f"Cold-start model on residents' reports, {set_name}: per topic (reports in brackets)")
        ax.legend(loc="upper center", ncol=len(figures), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/classifier-coldstart"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[Figures]] = {set_name: [] for set_name in SETS}
    with tempfile.TemporaryDirectory(prefix="bench-coldstart-") as tmp:
        work = Path(tmp)
        models = {
            "descriptions only": keeping(TAXONOMY, (), work / "plain.yaml"),
            "with examples_nl": keeping(TAXONOMY, ("nl",), work / "dutch.yaml"),
            "with examples_nl and examples_en": keeping(TAXONOMY, ("nl", "en"), work / "dutch-english.yaml"),
            "with the examples of every language (shipped)": TAXONOMY,
        }
        for number, (name, taxonomy) in enumerate(models.items()):
            bundle = work / f"model-{number}"
            command("coldstart", "--out", str(bundle), "--taxonomy", str(taxonomy))
            for set_number, (set_name, reports) in enumerate(SETS.items()):
                report = work / f"model-{number}-set-{set_number}"
                results[set_name].append(measure(name, bundle, reports, report))
    lines = []
    for set_name, figures in results.items():
        lines.append(f"cold start on {figures[0].n} residents' reports, {set_name} ({SETS[set_name].name}):")
        lines += [f"  {model.line()}" for model in figures]
    print("\n".join(lines))
    plot(results, args.out / "coldstart.png")
    (args.out / "coldstart.md").write_text(
        "# Cold-start model on residents' reports\n\n```\n"
        + "\n".join(lines)
        + "\n```\n\n![topic accuracy per topic](coldstart.png)\n",
        encoding="utf-8",
    )
    print(f"report: {args.out / 'coldstart.md'}")


if __name__ == "__main__":
    main()
