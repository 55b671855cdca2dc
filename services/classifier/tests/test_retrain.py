"""``retrain`` and ``register``: corrections from triage become a new version in the tenant's registry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import SQLModel, select

from civicsignals.classifier import models as tables
from civicsignals.classifier import service
from civicsignals.classifier.cli import main
from civicsignals.classifier.data import LabelledData
from civicsignals.classifier.model.coldstart import coldstart_examples
from civicsignals.classifier.pipeline import TrainOptions, retraining_data, train_bundle
from civicsignals.classifier.taxonomy import load_taxonomy, parse_taxonomy
from civicsignals.common.db import create_engine, create_schema, session_factory
from civicsignals.common.events import SignalReclassified

FAST = ["--no-encoder", "--no-learning-curve"]

#: Staff keep moving "zwerfvuil" reports out of "afval": 20 corrections of one label.
ZWERFVUIL = [
    (f"{what} ligt overal op straat {where}", "schoon", "zwerfvuil")
    for what in ("zwerfvuil", "plastic", "blikjes en flesjes", "papier", "peuken")
    for where in ("bij de school", "in het park", "naast het winkelcentrum", "op het plein")
]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'classifier.db'}"
    monkeypatch.setenv("CIVIC_CLASSIFIER_DATABASE_URL", url)
    monkeypatch.setenv("CIVIC_CLASSIFIER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CIVIC_CLASSIFIER_MODELS_DIR", str(tmp_path / "models"))
    return url


async def _store(url: str, corrections: list[tuple[str, str, str]]) -> None:
    engine = create_engine(url)
    await create_schema(engine, SQLModel.metadata)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with session_factory(engine)() as session, session.begin():
        for index, (text, topic, subtopic) in enumerate(corrections):
            data = SignalReclassified(
                signal_id=f"s{index}",
                case_id=f"c{index}",
                topic=topic,
                subtopic=subtopic,
                text=text,
                actor="key:x",
            )
            await service.store_correction(
                session, "gouda", f"e{index}", start + timedelta(minutes=index), data
            )
    await engine.dispose()


async def _rows(url: str) -> tuple[list[tables.ModelVersion], list[tables.ModelActivation]]:
    engine = create_engine(url)
    async with session_factory(engine)() as session:
        versions = list((await session.exec(select(tables.ModelVersion))).all())
        activations = list((await session.exec(select(tables.ModelActivation))).all())
    await engine.dispose()
    return versions, activations


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return int(exit_info.value.code or 0), capsys.readouterr().err


def test_retrain_from_corrections_and_a_base_export(
    env: str, tmp_path: Path, reports_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A class the base export does not have.
    corrections = list(ZWERFVUIL)
    corrections.append(("", "afval", "container"))  # a correction without text teaches nothing
    asyncio.run(_store(env, corrections))

    code, err = run(["retrain", "--tenant", "gouda", "--min-examples", "500", *FAST], capsys)
    assert code == 1 and "only 20 examples" in err

    code, err = run(
        ["retrain", "--tenant", "gouda", "--base", str(reports_csv), "--activate", "--version", "r1", *FAST],
        capsys,
    )
    assert code == 0, err
    card = json.loads((tmp_path / "models" / "gouda" / "r1" / "card.json").read_text())
    assert card["retrained"] == {"corrections": 20, "base": 193} and card["tenant"] == "gouda"
    assert card["class_counts"]["schoon/zwerfvuil"] == 20
    versions, activations = asyncio.run(_rows(env))
    assert [(v.version, v.kind, v.examples) for v in versions] == [("r1", "retrained", 213)]
    assert [(a.version, a.action) for a in activations] == [("r1", "activate")]

    from civicsignals.classifier.model import TopicModel

    [prediction] = TopicModel(tmp_path / "models" / "gouda" / "r1").predict(
        ["plastic ligt overal op de stoep"]
    )
    assert (prediction.topic, prediction.subtopic) == ("schoon", "zwerfvuil")


def test_register_a_trained_bundle(env: str, tmp_path: Path, reports_csv: Path, capsys) -> None:
    bundle = tmp_path / "bundle"
    assert (
        run(["train", "--data", str(reports_csv), "--out", str(bundle), "--version", "t1", *FAST], capsys)[0]
        == 0
    )
    assert run(["register", "--tenant", "gouda", "--model", str(bundle)], capsys)[0] == 0
    assert run(["register", "--tenant", "gouda", "--model", str(bundle)], capsys)[0] == 0  # idempotent
    versions, activations = asyncio.run(_rows(env))
    assert [v.version for v in versions] == ["t1"] and activations == []
    code, err = run(["register", "--tenant", "Not A Code", "--model", str(bundle)], capsys)
    assert code == 1 and "tenant" in err


def test_retrain_without_a_base_keeps_every_label_of_the_taxonomy(
    env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Corrections of one label must not replace a model of the whole taxonomy with a one-label model."""
    asyncio.run(_store(env, ZWERFVUIL))
    code, err = run(["retrain", "--tenant", "gouda", "--version", "r2", *FAST], capsys)
    assert code == 0, err
    card = json.loads((tmp_path / "models" / "gouda" / "r2" / "card.json").read_text())
    taxonomy = load_taxonomy()
    coldstart = len(coldstart_examples(taxonomy)[0])
    assert card["labels"] == len(set(taxonomy.labels()) | {("schoon", "zwerfvuil")})
    assert card["retrained"] == {"corrections": 20, "coldstart": coldstart}
    data = card["data"]
    assert data["parts"] == card["retrained"] and data["examples"] == 20 + coldstart
    assert data["taxonomy"]["version"] == taxonomy.version
    # A hash over the rows as trained, not the "" of a file that is not there.
    assert len(data["sha256"]) == 64 and data["sha256"] == card["training_data"]["sha256"]
    assert data["bytes"] == card["training_data"]["bytes"] > 0
    assert card["class_counts"]["schoon/zwerfvuil"] == 20

    from civicsignals.classifier.model import TopicModel

    model = TopicModel(tmp_path / "models" / "gouda" / "r2")
    plastic, passport = model.predict(["plastic ligt overal op de stoep", "mijn paspoort is verlopen"])
    assert (plastic.topic, plastic.subtopic) == ("schoon", "zwerfvuil")
    assert passport.topic == "burgerzaken"  # a topic nobody corrected is still known

    code, err = run(["retrain", "--tenant", "gouda", "--date-column", "datum", *FAST], capsys)
    assert code == 1 and "--date-column applies to the --base file" in err


def test_retrain_reduces_corrections_to_a_topics_only_base(
    env: str,
    tmp_path: Path,
    reports_rows: list[dict[str, str]],
    write_csv: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    asyncio.run(_store(env, ZWERFVUIL))
    base = write_csv(tmp_path / "export.csv", reports_rows, ["text", "topic"])  # one category column
    code, err = run(["retrain", "--tenant", "gouda", "--base", str(base), "--version", "r3", *FAST], capsys)
    assert code == 0, err
    assert "has topics only and 20 of the 20 corrections have a subtopic" in err
    assert "reduced to their topics" in err
    card = json.loads((tmp_path / "models" / "gouda" / "r3" / "card.json").read_text())
    assert card["topics_only"] is True and card["class_counts"]["schoon"] == 20
    assert not any("/" in label for label in card["class_counts"])


def test_only_corrections_are_held_out_when_cold_start_examples_are_added(tmp_path: Path) -> None:
    """The held-out part measures reports (the newest corrections), never taxonomy definitions."""
    taxonomy = parse_taxonomy(
        """
version: "t1"
topics:
  - code: afval
    description_nl: Afval op straat.
    subtopics:
      - {code: container, description_nl: Een volle of kapotte container.}
      - {code: grofvuil, description_nl: Grofvuil dat niet is opgehaald.}
  - code: groen
    subtopics:
      - {code: boom, description_nl: Een boom die om dreigt te vallen.}
  - code: wegen
    subtopics:
      - {code: gat, description_nl: Een gat in de weg.}
"""
    )
    corrections = LabelledData(texts=[], labels=[], dates=[], source="corrections")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for index in range(100):
        label = ("afval", "container") if index % 2 else ("wegen", "gat")
        corrections.texts.append(f"melding {index} over een {label[1]}")
        corrections.labels.append(label)
        assert corrections.dates is not None
        corrections.dates.append((start + timedelta(days=index)).isoformat())
    messages: list[str] = []
    data = retraining_data(corrections, taxonomy=taxonomy, warn=messages.append)
    assert messages == [] and data.train_only is not None and sum(data.train_only) == len(data) - 100
    card = train_bundle(
        data,
        tmp_path / "b",
        options=TrainOptions(encoder=False, learning_curve=False, C_grid=(10.0,)),
        progress=lambda _m: None,
    )
    held = card["heldout"]
    assert held["how"].startswith("newest 20% by date of the 100 reports") and held["n"] == 20
    assert sum(figures["support"] for figures in held["subtopic"]["per_class"].values()) == 20
    assert held["subtopic"]["per_class"].get("groen/boom", {}).get("support", 0) == 0
    assert card["class_counts"]["groen/boom"] >= 1  # learnt, though nobody corrected it

    # A correction without a subtopic beside a taxonomy with subtopics: kept, and said so.
    topic_only = LabelledData(texts=["een gat"], labels=[("wegen", None)], dates=["2026-01-01"])
    assert retraining_data(topic_only, taxonomy=taxonomy, warn=messages.append).labels[0] == ("wegen", None)
    assert len(messages) == 1 and "1 of the 1 corrections name a topic without a subtopic" in messages[0]
