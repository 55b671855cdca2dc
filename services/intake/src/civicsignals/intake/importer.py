"""``civicsignals-intake import FILE``: a municipality's history, loaded once and exactly once.

Reads a CSV (header row) or JSONL export with, per row:

| field | required | meaning |
|---|---|---|
| ``text`` | yes | what the resident wrote |
| ``created`` | yes | when it was received; ISO 8601 (a time without zone is the tenant's ``timezone``) |
| ``channel`` | yes | one of the channels of DESIGN §2 (``web``, ``phone`` …) |
| ``external_id`` | no | the id in the old system; without it, a hash of created + channel + text |
| ``category`` | no | the old system's category: kept as a hint beside the classification |
| ``kind`` | no | report (default), complaint, question, feedback, idea, compliment |
| ``lat``, ``lon`` | no | WGS84, inside the tenant's bounding box (JSONL may nest them in ``location``) |
| ``status`` | no | the case status in the old system (default ``closed``) |

Each row becomes a signal (``imported``: it is classified and counted, and no case is opened for
it) with its ``signal.received`` event in the outbox, published by the running intake service.
Idempotent on (tenant, external id): running the same file again imports nothing new. Rows are
written in batches of :data:`BATCH_SIZE`, one transaction and one multi-row insert per table
each; a row that cannot be imported is skipped, and the summary says how many were skipped for
which reason, with the first line numbers of each.
Imports carry no contact data, so nothing here is sealed.

A CSV file's delimiter is read from its header line (:func:`detect_delimiter`): a comma, or the
semicolon that Excel writes where the decimal separator is a comma (Dutch settings), a tab or a
pipe; ``--delimiter`` overrides it, and the summary says which one was used. A UTF-8 byte order
mark (Excel's "CSV UTF-8") is skipped.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import secrets
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, col, select

from civicsignals.common.db import SessionFactory
from civicsignals.common.events import (
    CASE_STATUSES,
    CHANNELS,
    KINDS,
    SignalReceived,
    make_event,
)
from civicsignals.common.ids import _TRACKING_ALPHABET as _ALPHABET
from civicsignals.common.ids import TRACKING_CODE_GROUP_LEN, TRACKING_CODE_GROUPS, new_id
from civicsignals.common.language import guess_language
from civicsignals.common.outbox import OutboxMessage  # noqa: F401  (registers the outbox table)
from civicsignals.common.redaction import redact
from civicsignals.common.tenants import Tenant
from civicsignals.intake import service
from civicsignals.intake.models import MAX_TEXT, Signal
from civicsignals.intake.tenantconfig import AreaIndex, bounding_box

BATCH_SIZE = 1000
EXAMPLES_PER_REASON = 5
REQUIRED_COLUMNS = ("text", "created", "channel")

#: The delimiters a CSV export may use, by name (``--delimiter`` takes the name or the character).
DELIMITERS: dict[str, str] = {"comma": ",", "semicolon": ";", "tab": "\t", "pipe": "|"}
_DELIMITER_NAMES = {char: name for name, char in DELIMITERS.items()}
_BOM = "\ufeff"


def parse_delimiter(value: str) -> str:
    """``--delimiter``: a name (``semicolon``), the character itself (``;``), or ``\\t`` for tab."""
    candidate = value.strip().lower() or value  # a tab typed as itself is all whitespace
    if candidate in DELIMITERS:
        return DELIMITERS[candidate]
    if candidate in ("\\t", "\t"):
        return "\t"
    if candidate in _DELIMITER_NAMES:
        return candidate
    names = ", ".join(f"{name} ({char!r})" for name, char in DELIMITERS.items())
    raise ValueError(f"unknown delimiter {value!r}: use one of {names}")


def detect_delimiter(header: str) -> str:
    """The delimiter of a CSV file, read from its header line.

    :class:`csv.Sniffer`, limited to :data:`DELIMITERS`, decides; where it cannot (a header of
    one column, or one it finds ambiguous), the delimiter that occurs most often in the header
    does, and a comma when none occurs. Only the header is read: the rows' free text is full of
    commas and semicolons, the column names never hold one.
    """
    header = header.removeprefix(_BOM).rstrip("\r\n")
    try:
        return csv.Sniffer().sniff(header, delimiters="".join(DELIMITERS.values())).delimiter
    except csv.Error:
        counts = {char: header.count(char) for char in DELIMITERS.values()}
        best = max(counts, key=lambda char: counts[char])  # a tie goes to the first: the comma
        return best if counts[best] else ","


def describe_delimiter(delimiter: str) -> str:
    """``semicolon (;)``, ``tab (\\t)``: how the summary names a delimiter."""
    name = _DELIMITER_NAMES.get(delimiter)
    shown = "\\t" if delimiter == "\t" else delimiter
    return f"{name} ({shown})" if name else repr(delimiter)


@dataclass
class ImportSummary:
    rows: int = 0
    imported: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)
    delimiter: str | None = None
    """The CSV delimiter used (None for JSONL)."""
    delimiter_given: bool = False
    """Whether ``--delimiter`` chose it (else it was detected from the header)."""
    missing_columns: tuple[str, ...] = ()
    """Required columns the CSV header lacks (usually a sign of the wrong delimiter)."""

    def skip(self, line: int, reason: str) -> None:
        self.skipped[reason] += 1
        lines = self.examples.setdefault(reason, [])
        if len(lines) < EXAMPLES_PER_REASON:
            lines.append(line)

    def render(self) -> str:
        out = []
        if self.delimiter is not None:
            how = "given with --delimiter" if self.delimiter_given else "detected from the header"
            out.append(f"delimiter: {describe_delimiter(self.delimiter)}, {how}")
        if self.missing_columns:
            out.append(
                f"the header has no column {', '.join(self.missing_columns)}: "
                "is the delimiter right? (--delimiter overrides it)"
            )
        out += [
            f"rows read: {self.rows}",
            f"imported:  {self.imported}",
            f"skipped:   {sum(self.skipped.values())}",
        ]
        for reason, count in self.skipped.most_common():
            lines = ", ".join(str(n) for n in self.examples.get(reason, []))
            out.append(f"  {count:>8}  {reason} (e.g. line {lines})")
        return "\n".join(out)


class RowError(ValueError):
    """Why one row cannot be imported (the summary's reason)."""


class Rows(Iterator[tuple[int, dict[str, Any]]]):
    """The rows of an export as (line number, row), with how a CSV file was read: its
    ``delimiter`` (None for JSONL), whether it was ``delimiter_given``, and its ``columns``."""

    def __init__(
        self,
        rows: Iterator[tuple[int, dict[str, Any]]],
        *,
        delimiter: str | None = None,
        delimiter_given: bool = False,
        columns: tuple[str, ...] = (),
    ) -> None:
        self._rows = rows
        self.delimiter = delimiter
        self.delimiter_given = delimiter_given
        self.columns = columns

    def __next__(self) -> tuple[int, dict[str, Any]]:
        return next(self._rows)


def read_rows(handle: TextIO, fmt: str, delimiter: str | None = None) -> Rows:
    """(line number, row) for each data row; a broken JSON line is yielded as an error marker.

    For CSV, the header line is read at once: the delimiter is ``delimiter`` when given, else
    detected from it (:func:`detect_delimiter`). Open the file with ``newline=""`` (quoted fields
    may hold line breaks) and ``encoding="utf-8-sig"``; a byte order mark is skipped either way.
    """
    if fmt == "csv":
        header = handle.readline().removeprefix(_BOM)
        chosen = delimiter if delimiter is not None else detect_delimiter(header)
        reader = csv.DictReader(itertools.chain([header], handle), delimiter=chosen)
        columns = tuple(reader.fieldnames or ())
        return Rows(
            ((reader.line_num, dict(row)) for row in reader),
            delimiter=chosen,
            delimiter_given=delimiter is not None,
            columns=columns,
        )
    return Rows(_jsonl_rows(handle))


def _jsonl_rows(handle: TextIO) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            yield number, {"__error__": "not valid JSON"}
            continue
        yield number, value if isinstance(value, dict) else {"__error__": "not a JSON object"}


def _text(row: dict[str, Any], name: str) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _float(value: Any, name: str) -> float:
    if isinstance(value, str) and value.count(",") == 1 and "." not in value:
        value = value.replace(",", ".")  # a decimal comma, as Excel writes "52,0116" in Dutch
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RowError(f"{name} is not a number") from None


class RowReader:
    """Turns one export row into signal columns, or raises :class:`RowError` with the reason."""

    def __init__(self, tenant: Tenant, areas: AreaIndex | None) -> None:
        self.tenant = tenant
        self.box = bounding_box(tenant)
        self.areas = areas
        try:
            self.zone: Any = ZoneInfo(str(tenant.settings.get("timezone") or "Europe/Amsterdam"))
        except (ZoneInfoNotFoundError, ValueError):
            self.zone = UTC

    def created(self, row: dict[str, Any]) -> datetime:
        raw = _text(row, "created")
        if raw is None:
            raise RowError("created is missing")
        try:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise RowError("created is not an ISO 8601 time") from None
        if value.tzinfo is None:
            value = value.replace(tzinfo=self.zone)
        return value.astimezone(UTC)

    def location(self, row: dict[str, Any]) -> tuple[float | None, float | None]:
        raw_nested = row.get("location")
        nested: dict[str, Any] = raw_nested if isinstance(raw_nested, dict) else {}
        lat_raw = row.get("lat", nested.get("lat"))
        lon_raw = row.get("lon", nested.get("lon"))
        if lat_raw in (None, "") and lon_raw in (None, ""):
            return None, None
        if lat_raw in (None, "") or lon_raw in (None, ""):
            raise RowError("lat and lon must be given together")
        lat, lon = _float(lat_raw, "lat"), _float(lon_raw, "lon")
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise RowError("lat/lon are not WGS84 coordinates")
        if self.box is not None and not self.box.contains(lat, lon):
            raise RowError("location outside the municipality's bounding box")
        return lat, lon

    def signal_row(self, row: dict[str, Any]) -> dict[str, Any]:
        if "__error__" in row:
            raise RowError(str(row["__error__"]))
        text = _text(row, "text")
        if text is None:
            raise RowError("text is missing")
        if len(text) > MAX_TEXT:
            raise RowError(f"text is longer than {MAX_TEXT} characters")
        channel = (_text(row, "channel") or "").lower()
        if not channel:
            raise RowError("channel is missing")
        if channel not in CHANNELS:
            raise RowError("unknown channel")
        kind = (_text(row, "kind") or "report").lower()
        if kind not in KINDS:
            raise RowError("unknown kind")
        status = (_text(row, "status") or "closed").lower()
        if status not in CASE_STATUSES:
            raise RowError("unknown status")
        created = self.created(row)
        lat, lon = self.location(row)
        external_id = _text(row, "external_id") or (
            "sha256:" + hashlib.sha256(f"{created.isoformat()}|{channel}|{text}".encode()).hexdigest()[:32]
        )
        if len(external_id) > 200:
            raise RowError("external_id is longer than 200 characters")
        area = (
            self.areas.locate(lat, lon)
            if self.areas is not None and lat is not None and lon is not None
            else None
        )
        return {
            "id": new_id(),
            "tenant": self.tenant.code,
            "tracking_code": _tracking_code(),
            "kind": kind,
            "channel": channel,
            "text": text,
            "text_redacted": redact(text),
            "language": guess_language(text),
            "occurred_at": None,
            "received_at": created,
            "lat": lat,
            "lon": lon,
            "address": None,
            "metadata": {"import": {"category": _text(row, "category")}} if _text(row, "category") else {},
            "source": "import",
            "has_contact": False,
            "status": status,
            "status_sequence": 0,
            "area": area.code if area else None,
            "district": area.district if area else None,
            "attachments": 0,
            "external_id": external_id,
            "imported": True,
            "service_code": _text(row, "category"),
            "partners": [],
            "status_updated_at": created,
        }


async def import_rows(
    sessions: SessionFactory,
    tenant: Tenant,
    areas: AreaIndex | None,
    rows: Iterable[tuple[int, dict[str, Any]]],
    *,
    batch_size: int = BATCH_SIZE,
    progress: Any = None,
) -> ImportSummary:
    """Import rows in batches; ``progress`` (a tqdm bar, or None) is advanced per row. Rows from
    :func:`read_rows` also put the CSV delimiter (and any missing column) in the summary."""
    reader = RowReader(tenant, areas)
    summary = ImportSummary()
    if isinstance(rows, Rows) and rows.delimiter is not None:
        summary.delimiter, summary.delimiter_given = rows.delimiter, rows.delimiter_given
        summary.missing_columns = tuple(name for name in REQUIRED_COLUMNS if name not in rows.columns)
    seen: set[str] = set()
    batch: list[tuple[int, dict[str, Any]]] = []
    for number, row in rows:
        summary.rows += 1
        try:
            values = reader.signal_row(row)
        except RowError as exc:
            summary.skip(number, str(exc))
        else:
            if values["external_id"] in seen:
                summary.skip(number, "duplicate external_id in the file")
            else:
                seen.add(values["external_id"])
                batch.append((number, values))
        if progress is not None:
            progress.update(1)
        if len(batch) >= batch_size:
            await _write_batch(sessions, tenant.code, batch, summary)
            batch = []
    if batch:
        await _write_batch(sessions, tenant.code, batch, summary)
    return summary


async def _existing_ids(sessions: SessionFactory, tenant: str, external_ids: list[str]) -> set[str]:
    async with sessions() as session:
        rows = await session.exec(
            select(Signal.external_id).where(
                col(Signal.tenant) == tenant, col(Signal.external_id).in_(external_ids)
            )
        )
        return {value for value in rows.all() if value is not None}


async def _write_batch(
    sessions: SessionFactory, tenant: str, batch: list[tuple[int, dict[str, Any]]], summary: ImportSummary
) -> None:
    """Insert the rows not imported before, with their first status and their events, at once."""
    tables = SQLModel.metadata.tables
    for _attempt in range(3):
        existing = await _existing_ids(sessions, tenant, [values["external_id"] for _, values in batch])
        fresh = [values for _, values in batch if values["external_id"] not in existing]
        if fresh:
            statuses = [
                {
                    "signal_id": v["id"],
                    "sequence": 0,
                    "status": v["status"],
                    "at": v["received_at"],
                    "note": None,
                }
                for v in fresh
            ]
            outbox = []
            for values in fresh:
                event = make_event(
                    tenant=tenant, service="intake", data=service.signal_received_from_row(values)
                )
                outbox.append(
                    {
                        "id": event.id,
                        "subject": SignalReceived.bus_subject(tenant),
                        "payload": event.model_dump_json(),
                        "headers": "{}",
                        "created_at": event.time,
                        "published_at": None,
                        "attempts": 0,
                    }
                )
            rows = fresh
            try:
                async with sessions() as session, session.begin():
                    connection = await session.connection()
                    await connection.execute(tables["signal"].insert(), rows)
                    await connection.execute(tables["status_entry"].insert(), statuses)
                    await connection.execute(tables["outbox"].insert(), outbox)
            except IntegrityError:
                continue  # another import (or run) wrote one of these ids meanwhile: look again
        summary.imported += len(fresh)
        for number, values in batch:
            if values["external_id"] in existing:
                summary.skip(number, "already imported (same external_id)")
        return
    raise RuntimeError("a batch kept conflicting with concurrent writes; run the import again")


def _tracking_code() -> str:
    """The same codes as :func:`civicsignals.common.ids.new_tracking_code` (60 random bits in its
    alphabet), drawn with one call to the OS's generator instead of twelve."""
    bits = secrets.randbits(TRACKING_CODE_GROUPS * TRACKING_CODE_GROUP_LEN * 5)
    symbols = "".join(
        _ALPHABET[(bits >> (5 * i)) & 31] for i in range(TRACKING_CODE_GROUPS * TRACKING_CODE_GROUP_LEN)
    )
    return "-".join(
        symbols[i : i + TRACKING_CODE_GROUP_LEN] for i in range(0, len(symbols), TRACKING_CODE_GROUP_LEN)
    )


def count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)
