"""Fixtures of the classifier's tests: one cold-start bundle per session, small labelled CSVs."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from civicsignals.classifier.model.coldstart import build_default_bundle
from civicsignals.classifier.registry import COLDSTART_DIR, DEFAULT_COLDSTART

#: The shared data sets (BANKING77, CLINC150, xSID, Amsterdam's categories) live beside the repository,
#: in ``<repo>/../shared/data``, not in it; ``CIVIC_SHARED_DATA`` points elsewhere (e.g. in CI).
SHARED_DATA = Path(
    os.environ.get("CIVIC_SHARED_DATA") or Path(__file__).resolve().parents[3].parent / "shared" / "data"
)


@pytest.fixture(scope="session")
def shared_data_file() -> Callable[[str], Path]:
    """``shared_data_file(name)``: the path of a shared data file, or skip the test (with where it
    was looked for) when it is absent, so the suite runs on a checkout without the data."""

    def find(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.is_file():
            pytest.skip(f"shared data file {path} is absent (set CIVIC_SHARED_DATA to its folder)")
        return path

    return find


@pytest.fixture(scope="session")
def shared_coldstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default taxonomy's cold-start bundle, built once (a few seconds) for every test."""
    return build_default_bundle(tmp_path_factory.mktemp("coldstart") / "bundle")


@pytest.fixture
def models_dir(tmp_path: Path, shared_coldstart: Path) -> Path:
    """A registry folder whose default cold start is the shared bundle (linked, not rebuilt)."""
    root = tmp_path / "models"
    (root / COLDSTART_DIR).mkdir(parents=True)
    (root / COLDSTART_DIR / DEFAULT_COLDSTART).symlink_to(shared_coldstart, target_is_directory=True)
    return root


def _reports() -> list[dict[str, str]]:
    """Short Dutch municipal reports: 3 topics x 2 subtopics x 8 phrasings x 4 frames (made up)."""
    phrasings = {
        ("afval", "container"): [
            "de container is vol",
            "container zit propvol met vuilniszakken",
            "afvalcontainer niet geleegd",
            "volle container in de straat",
            "de ondergrondse container klemt",
            "container voor restafval stinkt en is vol",
            "glasbak container is overvol",
            "vuilniszakken naast de volle container",
        ],
        ("afval", "grofvuil"): [
            "grofvuil is niet opgehaald",
            "oude bank en matras op straat gezet",
            "grofvuil ophalen afspraak gemist",
            "kast en stoelen bij het grofvuil",
            "bankstel staat al dagen buiten",
            "matras naast de stoep gedumpt",
            "grof huisvuil niet meegenomen",
            "koelkast bij het grofvuil gezet",
        ],
        ("verlichting", "lantaarnpaal"): [
            "lantaarnpaal is kapot",
            "straatlantaarn brandt niet meer",
            "de lamp van de lantaarnpaal knippert",
            "lantaarnpaal staat scheef na aanrijding",
            "straatverlichting doet het niet",
            "lantaarn in het park is donker",
            "kapotte straatlamp op de hoek",
            "lantaarnpaal brandt overdag",
        ],
        ("verlichting", "verkeerslicht"): [
            "verkeerslicht staat altijd op rood",
            "stoplicht werkt niet op de kruising",
            "het verkeerslicht voor fietsers is kapot",
            "stoplicht knippert oranje",
            "verkeerslichten zijn uitgevallen",
            "voetgangerslicht blijft rood",
            "verkeerslicht defect bij de school",
            "stoplicht springt te snel op rood",
        ],
        ("groen", "boom"): [
            "boom dreigt om te vallen",
            "grote tak afgebroken van de boom",
            "boom moet gesnoeid worden",
            "boomwortels drukken de stoep omhoog",
            "dode boom in de straat",
            "boom hangt over de weg",
            "omgewaaide boom na de storm",
            "boom zit vol rupsen",
        ],
        ("groen", "gras"): [
            "gras moet gemaaid worden",
            "het gras in het park is te hoog",
            "grasveld staat vol onkruid",
            "maaien van de berm vergeten",
            "gras bij de speeltuin is niet gemaaid",
            "grasstrook langs de weg te lang",
            "het plantsoen is verwilderd",
            "graszoden zijn kapotgereden",
        ],
    }
    frames = ["{}", "Hallo, {} in onze straat.", "Melding: {}", "{}, graag snel oplossen!"]
    rows = []
    for (topic, subtopic), texts in phrasings.items():
        for index, text in enumerate(texts):
            for number, frame in enumerate(frames):
                rows.append(
                    {
                        "text": frame.format(text),
                        "topic": topic,
                        "subtopic": subtopic,
                        "split": "test" if index >= 6 else "train",
                        "datum": f"2025-{1 + (index + number) % 12:02d}-{10 + index:02d}",
                    }
                )
    return rows


def write_csv(path: Path, rows: list[dict[str, str]], fieldnames: list[str] | None = None) -> Path:
    fieldnames = fieldnames or list(rows[0])
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


WriteCsv = Callable[..., Path]


@pytest.fixture(name="write_csv")
def write_csv_fixture() -> WriteCsv:
    """``write_csv(path, rows, fieldnames=None)``: a UTF-8 CSV with a header, as exports are."""
    return write_csv


@pytest.fixture
def reports_rows() -> list[dict[str, str]]:
    return _reports()


@pytest.fixture
def reports_csv(tmp_path: Path) -> Path:
    """The reports, plus one row with an empty text and one whose text spans two lines."""
    rows = _reports()
    rows.append(
        {"text": "  ", "topic": "afval", "subtopic": "container", "split": "train", "datum": "2025-01-01"}
    )
    rows.append(
        {
            "text": 'De container is vol.\nEr staan ook zakken naast, met "glas", en karton',
            "topic": "afval",
            "subtopic": "container",
            "split": "train",
            "datum": "2025-01-02",
        }
    )
    return write_csv(tmp_path / "reports.csv", rows)
