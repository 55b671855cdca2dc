"""Plain functions on a database session: the model registry's rows, the corrections and erasures.

No HTTP, no bus: :mod:`.flows`, :mod:`.views` and :mod:`.cli` call these inside their own
transactions.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, exists, func, text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from civicsignals.classifier.data import LabelledData
from civicsignals.classifier.model.inference import read_card
from civicsignals.classifier.models import (
    VERSION_PATTERN,
    Correction,
    ErasedSignal,
    ModelActivation,
    ModelVersion,
)
from civicsignals.common.events import SignalErased, SignalReclassified

_VERSION = re.compile(VERSION_PATTERN)


#: ``rollback(expected=...)``'s default: roll back to whatever the history says.
ANY_TARGET: object = object()


class RegistryError(ValueError):
    """A registry operation that cannot be done (unknown version, nothing to roll back to ...)."""


def check_version(version: str) -> str:
    if not _VERSION.fullmatch(version):
        raise RegistryError(f"{version!r} is not a valid model version ([A-Za-z0-9._-], at most 128)")
    return version


def tenant_dir(models_dir: Path, tenant: str) -> Path:
    return Path(models_dir) / tenant


def version_dir(models_dir: Path, tenant: str, version: str) -> Path:
    return tenant_dir(models_dir, tenant) / check_version(version)


def _parse_time(value: Any) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return datetime.now(UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def install_bundle(models_dir: Path, tenant: str, source: Path) -> tuple[str, Path]:
    """Copy a bundle folder into ``<models_dir>/<tenant>/<version>/`` (staging + rename).

    Returns ``(version, target)``. A version already installed with identical files is reused; a
    different bundle under the same version is refused, so a version always means one model.
    """
    card = read_card(source)
    version = check_version(str(card["version"]))
    target = version_dir(models_dir, tenant, version)
    if target.exists():
        existing = read_card(target)
        if existing.get("onnx", {}).get("sha256") != card.get("onnx", {}).get("sha256"):
            raise RegistryError(f"version {version} is already registered with a different model")
        return version, target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{version}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    staging.rename(target)
    return version, target


def version_row(tenant: str, card: dict[str, Any], *, kind: str, actor: str) -> ModelVersion:
    heldout = card.get("heldout") or {}
    return ModelVersion(
        tenant=tenant,
        version=check_version(str(card["version"])),
        kind=kind,
        created_at=_parse_time(card.get("created_at")),
        registered_by=actor,
        labels=int(card.get("labels", 0)),
        threshold=float(card["threshold"]),
        examples=int((card.get("training_data") or {}).get("examples", 0)),
        accuracy=heldout.get("accuracy"),
        macro_f1=heldout.get("macro_f1"),
        encoder=(card.get("encoder") or {}).get("name"),
    )


async def register(
    session: AsyncSession, tenant: str, card: dict[str, Any], *, kind: str, actor: str
) -> ModelVersion:
    """Record a bundle (already installed) as a version of ``tenant``; idempotent per version."""
    existing = await get_version(session, tenant, str(card["version"]))
    if existing is not None:
        return existing
    row = version_row(tenant, card, kind=kind, actor=actor)
    session.add(row)
    await session.flush()
    return row


async def get_version(session: AsyncSession, tenant: str, version: str) -> ModelVersion | None:
    result = await session.exec(
        select(ModelVersion).where(ModelVersion.tenant == tenant, ModelVersion.version == version)
    )
    return result.first()


async def list_versions(session: AsyncSession, tenant: str) -> Sequence[ModelVersion]:
    result = await session.exec(
        select(ModelVersion)
        .where(ModelVersion.tenant == tenant)
        .order_by(col(ModelVersion.registered_at).desc(), col(ModelVersion.id).desc())
    )
    return result.all()


async def activation_history(
    session: AsyncSession, tenant: str, limit: int | None = 2
) -> Sequence[ModelActivation]:
    """The newest activations of ``tenant`` (all of them when ``limit`` is None), newest first."""
    query = (
        select(ModelActivation)
        .where(ModelActivation.tenant == tenant)
        .order_by(col(ModelActivation.id).desc())
    )
    result = await session.exec(query if limit is None else query.limit(limit))
    return result.all()


def rollback_stack(history: Sequence[ModelActivation]) -> list[str | None]:
    """The versions a rollback may go back to, oldest first; the last one is in force.

    ``history`` is oldest first. An activation puts its version on top (a version activated while
    it is in force changes nothing). A rollback takes the top off, and every other place of that
    version too: it was rolled back from, so no later rollback brings it back (only activating it
    again does). The cold start lies under the stack. A rollback row that names another version
    than the stack gives (rows written before rollbacks walked back, or two rollbacks at the same
    moment) is trusted as written: that version is then on top.
    """
    stack: list[str | None] = []
    for row in history:
        if row.action == "rollback":
            if stack:
                left = stack.pop()
                stack = [version for version in stack if version != left]
            if (stack[-1] if stack else None) != row.version:
                stack = [version for version in stack if version != row.version]
                stack.append(row.version)
        elif not stack or stack[-1] != row.version:
            stack.append(row.version)
    return stack


async def rollback_target(session: AsyncSession, tenant: str) -> str | None:
    """The version a rollback would make active now (None: the cold start).

    Raises :class:`RegistryError` when there is nothing to roll back to: no version was ever
    activated, or every earlier one was rolled back from already and the cold start serves.
    """
    history = list(reversed(await activation_history(session, tenant, None)))
    if not history:
        raise RegistryError("nothing to roll back: no version was ever activated for this municipality")
    stack = rollback_stack(history)
    if not stack or (stack == [None]):
        raise RegistryError(
            "nothing left to roll back to: the cold-start model serves, and every version activated "
            "before was rolled back from already (activate a version to serve it again)"
        )
    stack.pop()
    return stack[-1] if stack else None


async def active_version(session: AsyncSession, tenant: str) -> str | None:
    """The version in force for ``tenant``; None when its cold-start model serves."""
    history = await activation_history(session, tenant, 1)
    return history[0].version if history else None


async def active_versions(session: AsyncSession) -> dict[str, str | None]:
    """The version in force for every tenant that ever activated one (None: back to cold start)."""
    newest = select(ModelActivation.tenant, func.max(ModelActivation.id).label("id")).group_by(
        col(ModelActivation.tenant)
    )
    ids = [row[1] for row in (await session.exec(newest)).all()]
    if not ids:
        return {}
    rows = await session.exec(select(ModelActivation).where(col(ModelActivation.id).in_(ids)))
    return {row.tenant: row.version for row in rows.all()}


async def activate(session: AsyncSession, tenant: str, version: str | None, *, actor: str) -> ModelActivation:
    """Make ``version`` (None: the cold start) the one in force; it must be registered."""
    if version is not None and await get_version(session, tenant, version) is None:
        raise RegistryError(f"model version {version!r} is not registered for this municipality")
    row = ModelActivation(tenant=tenant, version=version, action="activate", actor=actor)
    session.add(row)
    await session.flush()
    return row


async def rollback(
    session: AsyncSession, tenant: str, *, actor: str, expected: object = ANY_TARGET
) -> ModelActivation:
    """Go back one step along the activation history (:func:`rollback_target`): A, B, C activated,
    a rollback serves B, the next one A, the next the cold start, and then there is nothing left.

    ``expected``: the target the caller prepared for (loaded); a :class:`RegistryError` when the
    history changed meanwhile and the target is another one.
    """
    target = await rollback_target(session, tenant)
    if expected is not ANY_TARGET and expected != target:
        raise RegistryError(
            "the model history changed while rolling back (another activation or rollback); try again"
        )
    row = ModelActivation(tenant=tenant, version=target, action="rollback", actor=actor)
    session.add(row)
    await session.flush()
    return row


async def hold_signal(session: AsyncSession, tenant: str, signal_id: str) -> None:
    """Serialise the transactions that store a correction of one signal or erase it.

    Without this, on PostgreSQL a first correction and the erasure of the same signal, committed
    at the same moment by two consumers (or replicas), would each miss the other's uncommitted row:
    the correction would be stored with its text after the erasure deleted nothing. A transaction
    level advisory lock on the signal makes the second wait for the first and then see its rows.
    SQLite has one writer: there :func:`store_correction` checks for an erasure after its write,
    which holds the write lock until the commit, so nothing is needed here.
    """
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        await connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"classifier:signal:{tenant}:{signal_id}"},
        )


async def is_erased(session: AsyncSession, tenant: str, signal_id: str) -> bool:
    result = await session.exec(
        select(ErasedSignal.signal_id).where(
            ErasedSignal.tenant == tenant, ErasedSignal.signal_id == signal_id
        )
    )
    return result.first() is not None


async def store_correction(
    session: AsyncSession, tenant: str, event_id: str, at: datetime, data: SignalReclassified
) -> Correction | None:
    """Store or update the correction of one signal (the newer correction wins).

    None, and nothing kept, when the person's data of the signal was erased: a correction made or
    delivered after the erasure must not bring its text back into the training data.
    """
    await hold_signal(session, tenant, data.signal_id)
    result = await session.exec(
        select(Correction).where(Correction.tenant == tenant, Correction.signal_id == data.signal_id)
    )
    row = result.first()
    if row is not None and row.corrected_at > at:
        return row  # an older correction delivered late: the newer one stays
    if row is None:
        row = Correction(
            tenant=tenant, signal_id=data.signal_id, topic=data.topic, event_id=event_id, corrected_at=at
        )
    row.topic = data.topic
    row.subtopic = data.subtopic
    row.previous_topic = data.previous_topic
    row.previous_subtopic = data.previous_subtopic
    row.text = data.text if data.text and data.text.strip() else row.text
    row.event_id = event_id
    row.corrected_at = at
    session.add(row)
    # Written first, checked after: on SQLite the write holds the one write lock until the commit,
    # so an erasure either committed before this check (and is seen) or runs after the commit (and
    # deletes the row).
    await session.flush()
    if await is_erased(session, tenant, data.signal_id):
        await session.delete(row)
        await session.flush()
        return None
    return row


async def erase_signal(session: AsyncSession, tenant: str, event_id: str, data: SignalErased) -> int:
    """Forget what the classifier keeps of an erased signal: its corrections (their text is
    training data); remember the signal as erased, so that a later correction is not stored.

    Idempotent: a second erasure of the same signal finds nothing to delete and keeps the first
    record. Returns how many corrections were deleted.
    """
    await hold_signal(session, tenant, data.signal_id)
    if not await is_erased(session, tenant, data.signal_id):
        session.add(
            ErasedSignal(tenant=tenant, signal_id=data.signal_id, erased_at=data.erased_at, event_id=event_id)
        )
        await session.flush()
    connection = await session.connection()
    table = Correction.__table__  # type: ignore[attr-defined]
    result = await connection.execute(
        delete(table).where(table.c.tenant == tenant, table.c.signal_id == data.signal_id)
    )
    return int(result.rowcount or 0)


async def corrections(session: AsyncSession, tenant: str) -> Sequence[Correction]:
    """The tenant's corrections, oldest first: what ``retrain`` trains on.

    Those of erased signals are left out even if a row survived (written by a replica of a version
    from before erasure was propagated, during a rolling update): their text must not be trained on.
    """
    erased = exists().where(
        col(ErasedSignal.tenant) == col(Correction.tenant),
        col(ErasedSignal.signal_id) == col(Correction.signal_id),
    )
    result = await session.exec(
        select(Correction)
        .where(Correction.tenant == tenant, ~erased)
        .order_by(col(Correction.corrected_at), col(Correction.id))
    )
    return result.all()


def corrections_as_data(rows: Sequence[Correction]) -> LabelledData:
    """Corrections with a text as training data (``topic``/``subtopic`` as staff set them)."""
    data = LabelledData(texts=[], labels=[], dates=[], source="corrections")
    for row in rows:
        data.rows += 1
        if not row.text or not row.text.strip():
            data.skipped_empty += 1
            continue
        data.texts.append(row.text.strip())
        data.labels.append((row.topic, row.subtopic or None))
        assert data.dates is not None
        data.dates.append(row.corrected_at.isoformat())
    data.has_subtopics = any(sub is not None for _, sub in data.labels)
    return data
