"""The train / evaluate / predict commands, their bundle, and the sentence-encoder path of the model."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from civicsignals.classifier.cli import main
from civicsignals.classifier.data import CsvError, parse_date, read_labelled
from civicsignals.classifier.model import BundleError, TopicModel, export_bundle, train
from civicsignals.classifier.model.encoder import SentenceEncoder, default_encoder
from civicsignals.classifier.pipeline import (
    TrainOptions,
    choose_threshold,
    conformal_threshold,
    measure,
    measure_classes,
    train_bundle,
)

FAST = ["--no-encoder", "--no-learning-curve"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_train_writes_a_bundle_with_its_card(
    tmp_path: Path, reports_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model"
    code, _, err = run(["train", "--data", str(reports_csv), "--out", str(out), *FAST], capsys)
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"model.onnx", "vocabulary.npy", "labels.json", "card.json"}
    card = json.loads((out / "card.json").read_text())
    data = card["data"]
    assert data["sha256"] == hashlib.sha256(reports_csv.read_bytes()).hexdigest()
    assert data["bytes"] == reports_csv.stat().st_size
    assert data["skipped_empty"] == 1  # the row with only spaces
    assert data["examples"] == card["training_data"]["examples"] == 193
    assert card["class_counts"]["afval/container"] == 33  # 32 + the two-line text
    assert card["created_at"].endswith("Z") and card["version"]
    held = card["heldout"]
    assert held["n"] >= 18 and 0 <= held["accuracy"] <= 1 and "macro_f1" in held and held["per_class"]
    assert held["at_threshold"]["threshold"] == card["threshold"]
    assert "split-conformal" in card["threshold_rationale"]
    assert card["training_options"]["review_share"] == 0.05
    assert card["encoder"] is None and card["topics_only"] is False
    labels = json.loads((out / "labels.json").read_text())
    assert {"topic": "groen", "subtopic": "gras"} in labels


def test_evaluate_prints_one_json_object_and_writes_a_report(
    tmp_path: Path, reports_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    split = ["--split-column", "split"]
    assert (
        run(
            [
                "train",
                "--data",
                str(reports_csv),
                "--out",
                str(model),
                *split,
                "--split",
                "train",
                "--no-encoder",
            ],
            capsys,
        )[0]
        == 0
    )
    code, out, err = run(
        ["evaluate", "--model", str(model), "--data", str(reports_csv), *split, "--split", "test"], capsys
    )
    assert code == 0, err
    result = json.loads(out)  # the whole of stdout is one JSON object
    assert set(result) >= {"accuracy", "macro_f1", "n", "per_class"}
    # The headline figures count topics (the categories); the subtopic block counts full labels.
    assert result["n"] == 48 and result["level"] == "topic"
    assert result["accuracy"] >= 0.7, result  # unseen phrasings of six easy classes
    figures = {"precision", "recall", "f1", "support"}
    assert "groen" in result["per_class"] and set(result["per_class"]["groen"]) == figures
    assert not any("/" in name for name in result["per_class"])
    by_label = result["subtopic"]
    assert by_label["n"] == 48 and set(by_label["per_class"]["groen/boom"]) == figures
    assert result["accuracy"] >= by_label["accuracy"]  # a right label has its right topic
    report = model / "report" / "report.md"
    text = report.read_text()
    assert "Confusion matrix" in text and "Learning curve" in text and "groen/boom" in text
    assert "## Per topic\n" in text and "## Per topic and subtopic" in text
    assert (model / "report" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (model / "report" / "learning_curve.png").exists()

    other = tmp_path / "elsewhere"
    code, out, _ = run(
        ["evaluate", "--model", str(model), "--data", str(reports_csv), "--report", str(other)], capsys
    )
    assert code == 0 and (other / "confusion.png").exists() and json.loads(out)["n"] == 193


def test_predict_adds_the_four_columns(
    tmp_path: Path, reports_csv: Path, write_csv: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    assert run(["train", "--data", str(reports_csv), "--out", str(model), *FAST], capsys)[0] == 0
    unlabelled = write_csv(
        tmp_path / "new.csv",
        [
            {"id": "1", "text": "De lantaarnpaal bij ons voor de deur is kapot"},
            {"id": "2", "text": ""},
            {"id": "3", "text": "Het gras in het park\nmoet gemaaid worden"},
        ],
    )
    out = tmp_path / "out.csv"
    code, _, err = run(
        ["predict", "--model", str(model), "--data", str(unlabelled), "--out", str(out)], capsys
    )
    assert code == 0, err
    assert "1 rows with an empty text skipped" in err
    with out.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == ["1", "2", "3"]
    assert list(rows[0]) == ["id", "text", "topic", "subtopic", "confidence", "needs_review"]
    assert (rows[0]["topic"], rows[0]["subtopic"]) == ("verlichting", "lantaarnpaal")
    assert (rows[2]["topic"], rows[2]["subtopic"]) == ("groen", "gras")
    assert rows[2]["text"] == "Het gras in het park\nmoet gemaaid worden"
    assert rows[1]["topic"] == rows[1]["confidence"] == ""
    assert 0 < float(rows[0]["confidence"]) <= 1 and rows[0]["needs_review"] in ("true", "false")


def test_a_missing_column_is_an_error_that_names_it(
    tmp_path: Path, reports_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        ["train", "--data", str(reports_csv), "--out", str(tmp_path / "m"), "--topic-column", "categorie"],
        capsys,
    )
    assert code == 1 and out == ""
    assert "'categorie' is missing" in err and "text, topic, subtopic" in err
    assert not (tmp_path / "m").exists()
    code, _, err = run(
        ["predict", "--model", str(tmp_path / "m"), "--data", str(reports_csv), "--out", "x.csv"], capsys
    )
    assert code == 1 and "card.json" in err


def test_an_export_with_one_category_column_trains_a_topic_model(
    tmp_path: Path,
    reports_rows: list[dict[str, str]],
    write_csv: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    export = write_csv(tmp_path / "export.csv", reports_rows, ["datum", "text", "topic"])
    model = tmp_path / "model"
    code, _, err = run(
        ["train", "--data", str(export), "--out", str(model), "--date-column", "datum", *FAST], capsys
    )
    assert code == 0, err
    card = json.loads((model / "card.json").read_text())
    assert card["topics_only"] is True and card["heldout"]["how"].startswith("newest")
    assert json.loads((model / "labels.json").read_text())[0]["subtopic"] is None
    [prediction] = TopicModel(model).predict(["de container is vol"])
    assert prediction.topic == "afval" and prediction.subtopic is None


def test_console_script_is_installed_and_prints_only_json(
    tmp_path: Path, reports_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    assert run(["train", "--data", str(reports_csv), "--out", str(model), *FAST], capsys)[0] == 0
    script = Path(sys.executable).with_name("civicsignals-classifier")
    assert script.exists()
    done = subprocess.run(
        [str(script), "evaluate", "--model", str(model), "--data", str(reports_csv)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n"] == 193


def test_reading_csv_rules(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes('\ufefftext,topic\n"a, ""quoted""\ntext",t1\n,t1\nb,\nc,t2\n'.encode())
    data = read_labelled(path)
    assert data.texts == ['a, "quoted"\ntext', "c"]
    assert (data.skipped_empty, data.skipped_unlabelled, data.has_subtopics) == (1, 1, False)
    with pytest.raises(CsvError, match="'label' is missing"):
        read_labelled(path, topic_column="label")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CsvError, match="no header"):
        read_labelled(tmp_path / "empty.csv")
    (tmp_path / "latin1.csv").write_bytes("text,topic\ncaf\xe9,t\n".encode("latin-1"))
    with pytest.raises(CsvError, match="UTF-8"):
        read_labelled(tmp_path / "latin1.csv")


def test_threshold_and_metrics() -> None:
    confidence = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([True, True, True, False, False])
    assert choose_threshold(confidence, correct, 1.0) == 0.7
    assert choose_threshold(confidence, correct, 0.75) == 0.6  # 3 of 4 right at >= 0.6
    assert choose_threshold(confidence, np.zeros(5, dtype=bool), 0.9) == 0.9
    # Split-conformal: 39 right predictions with confidences 0.01005..0.39005 (wrong ones are ignored);
    # share 0.05 -> k = floor(0.05 * 40) = 2, the second lowest right confidence.
    right = np.arange(1, 40) / 100 + 0.00005
    conf = np.concatenate([right, [0.001, 0.95]])
    ok = np.concatenate([np.ones(39, dtype=bool), [False, False]])
    assert conformal_threshold(conf, ok, 0.05) == (0.02, 2, 39)
    assert conformal_threshold(conf, ok, 0.10) == (0.04, 4, 39)
    # Few right predictions: at least the lowest one; none: the fallback.
    assert conformal_threshold(np.array([0.7, 0.9]), np.array([True, True]), 0.05) == (0.7, 1, 2)
    assert conformal_threshold(np.array([0.7]), np.array([False]), 0.05)[0] == 0.5
    # Rounded down, so the k-th right prediction itself passes.
    assert conformal_threshold(np.array([0.123456] * 30), np.ones(30, dtype=bool), 0.05)[0] == 0.1234
    metrics = measure(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    assert metrics.accuracy == 0.75 and metrics.n == 4
    assert metrics.per_class["a"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert metrics.confusion.tolist() == [[1, 1], [0, 2]]


def test_metrics_count_topics_and_labels_apart() -> None:
    """A wrong subtopic under the right topic is right per topic and wrong per label."""
    truth = ['["afval", "container"]', '["afval", "grofvuil"]', '["groen", "boom"]']
    guess = ['["afval", "grofvuil"]', '["afval", "grofvuil"]', '["afval", "container"]']
    per_topic, by_label = measure_classes(truth, guess, by_subtopic=True)
    assert (per_topic.accuracy, per_topic.labels) == (2 / 3, ["afval", "groen"])
    assert by_label is not None and by_label.accuracy == 1 / 3
    assert by_label.per_class["afval/grofvuil"]["precision"] == 0.5  # guessed twice, right once
    assert measure_classes(truth, guess, by_subtopic=False)[1] is None


# ------------------------------------------------------------------------------- sentence encoder


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return default_encoder()


def test_encoder_embeds_dutch_and_english_alike(encoder: SentenceEncoder) -> None:
    vectors = encoder.encode(
        ["De lantaarnpaal is kapot", "The streetlight is broken", "Mijn paspoort verlopen"]
    )
    assert vectors.shape == (3, 512) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2  # a translation is closer than a topic
    assert len(encoder.sha256) == 64


def test_onnx_with_embeddings_equals_sklearn(
    tmp_path: Path, encoder: SentenceEncoder, reports_rows: list[dict[str, str]]
) -> None:
    texts = [r["text"] for r in reports_rows]
    labels = [f"{r['topic']}/{r['subtopic']}" for r in reports_rows]
    embeddings = encoder.encode(texts)
    trained = train(texts, labels, embeddings=embeddings, encoder=encoder.describe(), solver="lbfgs")
    bundle = export_bundle(trained, tmp_path / "b")
    model = TopicModel(bundle, encoder=encoder)
    probe = ["de container is vol", "verkeerslicht kapot", "boom omgewaaid", "zomaar iets anders"]
    expected = trained.predict_proba(probe, encoder.encode(probe))
    assert np.abs(model.predict_proba(probe) - expected).max() < 1e-5
    card = json.loads((bundle / "card.json").read_text())
    assert card["encoder"]["sha256"] == encoder.sha256 and "embeddings" in card["onnx"]["inputs"]


def test_a_bundle_from_another_encoder_is_refused(
    tmp_path: Path, encoder: SentenceEncoder, reports_rows: list[dict[str, str]]
) -> None:
    texts = [r["text"] for r in reports_rows][::4]
    labels = [r["topic"] + "/x" for r in reports_rows][::4]
    fake = {**encoder.describe(), "sha256": "0" * 64}
    trained = train(texts, labels, embeddings=encoder.encode(texts), encoder=fake, solver="lbfgs")
    bundle = export_bundle(trained, tmp_path / "b")
    with pytest.raises(BundleError, match="trained with encoder"):
        TopicModel(bundle, encoder=encoder)


def test_train_bundle_with_encoder_and_learning_curve(
    tmp_path: Path, reports_csv: Path, encoder: SentenceEncoder
) -> None:
    data = read_labelled(reports_csv)
    messages: list[str] = []
    card = train_bundle(data, tmp_path / "m", options=TrainOptions(C_grid=(10.0,)), progress=messages.append)
    assert card["encoder"]["name"] == encoder.name
    curve = card["learning_curve"]
    assert [p["examples"] for p in curve] == [100, 193 - card["heldout"]["n"]]
    assert all(p["accuracy"] >= p["subtopic_accuracy"] for p in curve)  # per topic, then per label
    assert card["heldout"]["accuracy"] >= card["heldout"]["subtopic"]["accuracy"]
    assert any("learning curve" in m for m in messages)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "m", copy)
    assert TopicModel(copy).predict(["lantaarnpaal kapot"])[0].topic == "verlichting"


# ------------------------------------------------------------------ options that must not be ignored


def test_a_named_subtopic_or_split_column_must_be_there(
    tmp_path: Path, reports_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in a column option is an error naming the column, never a silently different model."""
    model = tmp_path / "model"
    code, out, err = run(
        ["train", "--data", str(reports_csv), "--out", str(model), "--subtopic-column", "sub", *FAST], capsys
    )
    assert code == 1 and out == "" and not model.exists()
    assert "the subtopic column 'sub' is missing" in err and "text, topic, subtopic" in err
    assert run(["train", "--data", str(reports_csv), "--out", str(model), *FAST], capsys)[0] == 0
    code, out, err = run(
        ["evaluate", "--model", str(model), "--data", str(reports_csv), "--subtopic-column", "sub"], capsys
    )
    assert code == 1 and out == "" and "'sub' is missing" in err
    assert not (model / "report").exists()
    # --split alone (or --split-column alone) would filter nothing.
    only = ["--split-column", "split"]
    code, _, err = run(
        ["evaluate", "--model", str(model), "--data", str(reports_csv), "--split", "test"], capsys
    )
    assert code == 1 and "--split needs --split-column" in err
    code, _, err = run(
        [
            "predict",
            "--model",
            str(model),
            "--data",
            str(reports_csv),
            "--out",
            str(tmp_path / "p.csv"),
            *only,
        ],
        capsys,
    )
    assert code == 1 and "--split-column needs --split" in err and not (tmp_path / "p.csv").exists()


def test_no_usable_row_is_an_error_not_a_score_of_zero(
    tmp_path: Path, reports_csv: Path, write_csv: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "model"
    assert run(["train", "--data", str(reports_csv), "--out", str(model), *FAST], capsys)[0] == 0
    typo = ["--split-column", "split", "--split", "tst"]
    code, out, err = run(["evaluate", "--model", str(model), "--data", str(reports_csv), *typo], capsys)
    assert code == 1 and out == ""  # no accuracy 0.0 for an outside tool to record
    assert "no usable row to evaluate" in err and "kept 0 of its 194 rows" in err
    assert "'train', 'test'" in err  # the values there are, so the typo shows
    assert not (model / "report").exists()
    predictions = tmp_path / "out.csv"
    code, _, err = run(
        ["predict", "--model", str(model), "--data", str(reports_csv), "--out", str(predictions), *typo],
        capsys,
    )
    assert code == 1 and "no usable row to predict" in err and not predictions.exists()
    code, _, err = run(
        ["train", "--data", str(reports_csv), "--out", str(tmp_path / "m2"), *typo, *FAST], capsys
    )
    assert code == 1 and "no usable row to train on" in err and not (tmp_path / "m2").exists()

    blank = write_csv(
        tmp_path / "blank.csv",
        [{"text": " ", "topic": "afval"}, {"text": "de container is vol", "topic": ""}],
    )
    code, out, err = run(["evaluate", "--model", str(model), "--data", str(blank)], capsys)
    assert code == 1 and out == ""
    assert "it has 2 rows, 1 with an empty text and 1 with a text but no topic" in err
    # predict keeps rows with an empty text, blank (documented): a file of only such rows is written.
    empty = write_csv(tmp_path / "empty.csv", [{"id": "1", "text": ""}, {"id": "2", "text": "  "}])
    code, _, err = run(
        ["predict", "--model", str(model), "--data", str(empty), "--out", str(predictions)], capsys
    )
    assert code == 0, err
    with predictions.open(encoding="utf-8", newline="") as handle:
        assert [(row["id"], row["topic"]) for row in csv.DictReader(handle)] == [("1", ""), ("2", "")]


# ----------------------------------------------------------------------------- dates


def test_parse_date_accepts_iso_and_dutch_forms() -> None:
    utc = datetime(2025, 1, 31, 13, 30, tzinfo=UTC)
    assert parse_date("2025-01-31T13:30:00Z") == utc
    assert parse_date("2025-01-31T14:30:00+01:00") == utc  # converted to UTC
    assert parse_date("2025-01-31 13:30") == utc  # naive: taken as UTC
    assert parse_date("31-01-2025 13:30") == utc == parse_date("31/01/2025 13:30:00")
    assert parse_date(" 31-01-2025 ") == datetime(2025, 1, 31, tzinfo=UTC) == parse_date("2025-01-31")
    assert parse_date("01/03/2025").month == 3  # day first, as in Dutch exports
    for bad in ("", "volgende week", "31-13-2025", "2025/01/31"):
        with pytest.raises(ValueError):
            parse_date(bad)


def test_date_column_holds_out_the_newest_rows_by_time_not_by_text(
    tmp_path: Path,
    reports_rows: list[dict[str, str]],
    write_csv: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With dd-mm-yyyy dates, "28-03-2025" sorts after "20-12-2025" as text: the held-out part
    must be the December rows, which are newer, not the rows of the 28th of any month."""
    rows = []
    december = 0
    for index, row in enumerate(reports_rows):
        if (row["topic"], row["subtopic"]) == ("groen", "gras") and december < 20:
            december += 1
            datum = f"{december:02d}-12-2025 09:15"  # the 20 newest rows
        elif index % 5 == 0:
            datum = f"2025-{1 + index % 11:02d}-{21 + index % 8:02d}T10:00:00+01:00"  # ISO, with a zone
        else:
            datum = f"{21 + index % 8:02d}/{1 + index % 11:02d}/2025"
        rows.append({**row, "datum": datum})
    export = write_csv(tmp_path / "export.csv", rows, ["datum", "text", "topic", "subtopic"])
    model = tmp_path / "model"
    code, _, err = run(
        ["train", "--data", str(export), "--out", str(model), "--date-column", "datum", *FAST], capsys
    )
    assert code == 0, err
    held = json.loads((model / "card.json").read_text())["heldout"]
    assert held["how"].startswith("newest") and held["n"] == 20
    support = {label: figures["support"] for label, figures in held["subtopic"]["per_class"].items()}
    assert support["groen/gras"] == 20 and sum(support.values()) == 20

    rows[7]["datum"] = "zo snel mogelijk"
    bad = write_csv(tmp_path / "bad.csv", rows, ["datum", "text", "topic", "subtopic"])
    code, out, err = run(
        ["train", "--data", str(bad), "--out", str(tmp_path / "m2"), "--date-column", "datum", *FAST], capsys
    )
    assert code == 1 and out == "" and not (tmp_path / "m2").exists()
    assert "row 9 (the header is row 1)" in err and "date column 'datum'" in err and "zo snel mogelijk" in err
    assert len(err.strip().splitlines()) == 1
