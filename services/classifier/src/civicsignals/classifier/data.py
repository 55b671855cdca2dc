"""Labelled CSV files: what ``train``, ``evaluate``, ``predict`` and ``retrain`` read and write.

A municipality's export (Signalen, Fixi and the like) is a CSV with a header: one column with
the report's text, one with its category, often one with a sub-category, and more (department,
date) that the classifier ignores. Files are read as UTF-8 (a byte-order mark is allowed),
RFC 4180 (quoted fields may hold commas, quotes and newlines), with Python's :mod:`csv`.

Rules, the same for every command:

* a column that is asked for but missing is an error that names it and lists the columns there are;
* a row whose text is empty (or only whitespace) is skipped and counted (``skipped_empty``);
* a row with a text but an empty topic is skipped and counted too (``skipped_unlabelled``) when
  labels are needed;
* the subtopic column is optional: without it (or when it is empty in a row) a label is the topic
  alone, and a model trained on such data predicts topics only;
* ``split_column``/``split`` keep only the rows whose split column has that value, so one file
  with a ``split`` column (``train``/``test``) serves both commands; how many rows the filter
  dropped, and which values the column has, are kept so that a typo (``--split tst``) can be
  told apart from a file without usable rows;
* a date column (for a held-out part of the newest rows) must hold a date in every row used:
  ISO 8601 or the Dutch ``dd-mm-yyyy [HH:MM[:SS]]`` of Signalen/Fixi exports (see
  :func:`parse_date`); anything else is an error naming the row and the column, because sorting
  such values as text would silently hold out the wrong rows.
"""

from __future__ import annotations

import csv
import hashlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "DATE_FORMATS_HELP",
    "DEFAULT_SUBTOPIC_COLUMN",
    "CsvError",
    "Label",
    "LabelledData",
    "TextRows",
    "label_name",
    "parse_date",
    "read_labelled",
    "read_texts",
]

#: The subtopic column used when the file has it and no other was named (it is optional).
DEFAULT_SUBTOPIC_COLUMN = "subtopic"

#: Day-first forms of Dutch exports (Signalen, Fixi), tried after ISO 8601. Never month-first:
#: ``01/03/2025`` is the first of March here.
_DUTCH_DATE_FORMATS = (
    "%d-%m-%Y",
    "%d-%m-%Y %H:%M",
    "%d-%m-%Y %H:%M:%S",
    "%d/%m/%Y",
    "%d/%m/%Y %H:%M",
    "%d/%m/%Y %H:%M:%S",
)

#: What :func:`parse_date` accepts, for error messages.
DATE_FORMATS_HELP = "ISO 8601 (2025-03-01, 2025-03-01T14:30:00+01:00) or dd-mm-yyyy [HH:MM] (also with '/')"

#: At most this many distinct values of a split column are remembered (to name them in an error).
_SPLIT_VALUES_KEPT = 20

#: A class: ``(topic, subtopic)``; subtopic None when the data has topics only.
Label = tuple[str, str | None]


class CsvError(ValueError):
    """A CSV cannot be used: unreadable, no header, a missing column or a bad date (named in the message)."""


def parse_date(value: str) -> datetime:
    """A date or date-time as an aware UTC :class:`~datetime.datetime`; ``ValueError`` if it is none.

    ISO 8601 first (``2025-03-01``, ``2025-03-01 14:30``, ``2025-03-01T14:30:00Z``,
    ``...+01:00``), then the day-first Dutch forms ``dd-mm-yyyy`` and ``dd/mm/yyyy``, optionally
    with ``HH:MM`` or ``HH:MM:SS``. A value without a time zone is taken as UTC (an export is in
    one zone throughout, so the order of its rows is kept); one with a zone is converted to UTC,
    so that rows from different sources compare by the moment they describe.
    """
    text = value.strip()
    if not text:
        raise ValueError("empty")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        for form in _DUTCH_DATE_FORMATS:
            try:
                moment = datetime.strptime(text, form)
                break
            except ValueError:
                continue
        else:
            raise ValueError(f"{value!r} is not a date") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def label_name(label: Label) -> str:
    """``topic/subtopic``, or ``topic`` alone: how a class is shown in reports and cards."""
    topic, subtopic = label
    return topic if subtopic is None else f"{topic}/{subtopic}"


@dataclass
class TextRows:
    """The rows of a CSV that have a text, with everything needed to write them back out."""

    path: Path
    fieldnames: list[str]
    rows: list[dict[str, str]]
    #: Indices into :attr:`rows` whose text is not empty, and those texts.
    kept: list[int]
    texts: list[str]
    skipped_empty: int
    sha256: str
    size: int
    #: Rows left out by the split filter, and the distinct values its column has (a few).
    dropped_by_split: int = 0
    split_values: list[str] = field(default_factory=list)


@dataclass
class LabelledData:
    """Texts with their labels, read from a CSV."""

    texts: list[str]
    labels: list[Label]
    #: The date per text (ISO 8601, UTC, from :func:`parse_date`), when a date column was named:
    #: the held-out part is then the newest texts.
    dates: list[str] | None = None
    skipped_empty: int = 0
    skipped_unlabelled: int = 0
    rows: int = 0
    sha256: str = ""
    size: int = 0
    source: str = ""
    has_subtopics: bool = False
    extra: dict[str, object] = field(default_factory=dict)
    #: Per text, True for an example that is not a report (a taxonomy's cold-start examples, added
    #: by ``retrain``): always trained on and never held out, since how well a model recognises a
    #: definition says nothing about how well it classifies reports. None: every text is a report.
    train_only: list[bool] | None = None
    #: Rows left out by the split filter, and the distinct values its column has (a few).
    dropped_by_split: int = 0
    split_values: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def summary(self) -> dict[str, object]:
        """What the model card records about the data: file hash and size, rows, skips."""
        return {
            "file": Path(self.source).name if self.source else None,
            "sha256": self.sha256,
            "bytes": self.size,
            "rows": self.rows,
            "examples": len(self.texts),
            "skipped_empty": self.skipped_empty,
            "skipped_unlabelled": self.skipped_unlabelled,
            **self.extra,
        }


def _file_digest(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _open_rows(path: Path) -> tuple[list[str], Iterator[dict[str, str]], object]:
    # Some exports hold whole e-mails in one field: lift the csv module's 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise CsvError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    reader = csv.DictReader(handle, strict=False)
    try:
        fieldnames = [name.strip() for name in (reader.fieldnames or [])]
    except (UnicodeDecodeError, csv.Error) as exc:
        handle.close()
        raise CsvError(f"{path}: not a readable UTF-8 CSV: {exc}") from exc
    if not fieldnames:
        handle.close()
        raise CsvError(f"{path}: the file is empty or has no header row")
    reader.fieldnames = fieldnames
    return fieldnames, reader, handle


def _require(path: Path, fieldnames: Sequence[str], columns: Sequence[tuple[str, str]]) -> None:
    for what, column in columns:
        if column not in fieldnames:
            raise CsvError(
                f"{path}: the {what} column {column!r} is missing; the columns are {', '.join(fieldnames)}"
            )


def _rows(path: Path, reader: Iterator[dict[str, str]]) -> Iterator[dict[str, str]]:
    try:
        for row in reader:
            # A row with more fields than the header keeps the extras under the key None: drop them.
            yield {k: (v if v is not None else "") for k, v in row.items() if k is not None}
    except UnicodeDecodeError as exc:
        raise CsvError(f"{path}: not valid UTF-8: {exc}") from exc
    except csv.Error as exc:
        raise CsvError(f"{path}: not a valid CSV: {exc}") from exc


def _split_ok(row: dict[str, str], split_column: str | None, split: str | None) -> bool:
    return split_column is None or split is None or row.get(split_column, "").strip() == split


def _note_split_value(seen: list[str], row: dict[str, str], split_column: str | None) -> None:
    """Remember a few distinct values of the split column, to name them when none matched."""
    if split_column is None or len(seen) >= _SPLIT_VALUES_KEPT:
        return
    value = row.get(split_column, "").strip()
    if value not in seen:
        seen.append(value)


def read_labelled(
    path: Path,
    *,
    text_column: str = "text",
    topic_column: str = "topic",
    subtopic_column: str | None = "subtopic",
    split_column: str | None = None,
    split: str | None = None,
    date_column: str | None = None,
    subtopic_required: bool = False,
) -> LabelledData:
    """Read texts and labels. ``subtopic_column`` is used when the file has it (or when
    ``subtopic_required``, in which case its absence is an error: a column the user named is
    never ignored because of a typo). ``date_column`` values are checked and stored as UTC
    ISO 8601 (:func:`parse_date`); a row without a valid date is an error naming it."""
    path = Path(path)
    sha256, size = _file_digest(path)
    fieldnames, reader, handle = _open_rows(path)
    try:
        required = [("text", text_column), ("topic", topic_column)]
        if split_column is not None:
            required.append(("split", split_column))
        if date_column is not None:
            required.append(("date", date_column))
        if subtopic_column is not None and subtopic_required:
            required.append(("subtopic", subtopic_column))
        _require(path, fieldnames, required)
        use_subtopic = subtopic_column is not None and subtopic_column in fieldnames
        data = LabelledData(texts=[], labels=[], dates=[] if date_column else None, sha256=sha256, size=size)
        data.source = str(path)
        # Row numbers as a spreadsheet shows them: the header is row 1.
        for row_number, row in enumerate(_rows(path, reader), start=2):
            _note_split_value(data.split_values, row, split_column)
            if not _split_ok(row, split_column, split):
                data.dropped_by_split += 1
                continue
            data.rows += 1
            text = row[text_column].strip()
            if not text:
                data.skipped_empty += 1
                continue
            topic = row[topic_column].strip()
            if not topic:
                data.skipped_unlabelled += 1
                continue
            subtopic = row[subtopic_column].strip() if use_subtopic and subtopic_column else ""
            data.texts.append(text)
            data.labels.append((topic, subtopic or None))
            if data.dates is not None and date_column is not None:
                data.dates.append(_row_date(path, row_number, date_column, row[date_column]))
        data.has_subtopics = any(sub is not None for _, sub in data.labels)
        return data
    finally:
        handle.close()  # type: ignore[attr-defined]


def _row_date(path: Path, row_number: int, column: str, value: str) -> str:
    try:
        return parse_date(value).isoformat()
    except ValueError:
        shown = f"{value.strip()!r}, not a date" if value.strip() else "no date"
        raise CsvError(
            f"{path}: row {row_number} (the header is row 1): the date column {column!r} has {shown}; "
            f"use {DATE_FORMATS_HELP}"
        ) from None


def read_texts(
    path: Path,
    *,
    text_column: str = "text",
    split_column: str | None = None,
    split: str | None = None,
) -> TextRows:
    """Read every row (to write them back with predictions) and the non-empty texts among them."""
    path = Path(path)
    sha256, size = _file_digest(path)
    fieldnames, reader, handle = _open_rows(path)
    try:
        required = [("text", text_column)]
        if split_column is not None:
            required.append(("split", split_column))
        _require(path, fieldnames, required)
        out = TextRows(path, fieldnames, [], [], [], 0, sha256, size)
        for row in _rows(path, reader):
            _note_split_value(out.split_values, row, split_column)
            if not _split_ok(row, split_column, split):
                out.dropped_by_split += 1
                continue
            out.rows.append(row)
            text = row[text_column].strip()
            if text:
                out.kept.append(len(out.rows) - 1)
                out.texts.append(text)
            else:
                out.skipped_empty += 1
        return out
    finally:
        handle.close()  # type: ignore[attr-defined]
