"""``retrain`` and ``register``: corrections from triage become a new version in the tenant's registry."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import SQLModel, select

from civicsignals.classifier import models as tables
from civicsignals.classifier import service
from civicsignals.classifier.cli import main
from civicsignals.common.db import create_engine, create_schema, session_factory
from civicsignals.common.events import SignalReclassified

FAST = ["--no-encoder", "--no-learning-curve"]


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
    # Staff keep moving "zwerfvuil" reports out of "afval": a class the base export does not have.
    corrections = [
        (f"{what} ligt overal op straat {where}", "schoon", "zwerfvuil")
        for what in ("zwerfvuil", "plastic", "blikjes en flesjes", "papier", "peuken")
        for where in ("bij de school", "in het park", "naast het winkelcentrum", "op het plein")
    ]
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
