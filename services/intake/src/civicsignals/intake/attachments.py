"""Photos and PDFs attached to a signal: the type is sniffed from the bytes, never believed.

A portal says what it sends (a file name, a Content-Type); an attacker says the same. So the
content decides: the first bytes must be a JPEG, PNG, WebP, HEIC/HEIF or PDF signature (read with
``puremagic``, a maintained pure-Python magic-number library), a file that looks like a script or
markup is refused outright, and when the name or declared type claims another allowed type than
the content has (``photo.jpg`` holding a PNG, or a script), the upload is refused as a mismatch
rather than silently relabelled. The bytes go to ``<attachments_dir>/<tenant>/<signal>/<id>``
(written to a temporary name, then renamed, so a reader never sees half a file); the database keeps
the type, size and SHA-256, never the uploader's file name.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import puremagic

ALLOWED_TYPES: dict[str, str] = {
    "image/jpeg": "jpeg",
    "image/png": "png",
    "image/webp": "webp",
    "image/heic": "heic",
    "image/heif": "heic",
    "application/pdf": "pdf",
}
"""Media type -> the kind it counts as (HEIC and HEIF are one kind)."""

CANONICAL_TYPE = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "heic": "image/heic",
    "pdf": "application/pdf",
}

EXTENSIONS: dict[str, str] = {
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".jpe": "jpeg",
    ".jfif": "jpeg",
    ".png": "png",
    ".webp": "webp",
    ".heic": "heic",
    ".heif": "heic",
    ".pdf": "pdf",
}

# Starts of files that are code or markup, whatever else they may also parse as (polyglots).
_SCRIPT_MARKERS = (b"#!", b"<?php", b"<?", b"<script", b"<html", b"<!doctype", b"<svg", b"mz", b"\x7felf")


class AttachmentRefused(ValueError):
    """The upload is not an allowed type, or claims to be something it is not."""

    def __init__(self, detail: str, *, status: int = 415) -> None:
        super().__init__(detail)
        self.status = status


def sniff(content: bytes) -> str:
    """The kind of ``content`` (jpeg, png, webp, heic, pdf), or raise :class:`AttachmentRefused`."""
    if not content:
        raise AttachmentRefused("the file is empty", status=422)
    head = content[:64].lstrip().lower()
    if head.startswith(_SCRIPT_MARKERS):
        raise AttachmentRefused("the file is a script, program or markup, not a photo or PDF")
    try:
        guesses = puremagic.magic_string(content[:8192])
    except puremagic.PureError:
        guesses = []
    for guess in guesses:
        kind = ALLOWED_TYPES.get(guess.mime_type)
        if kind is not None:
            return kind
    raise AttachmentRefused("only JPEG, PNG, WebP, HEIC and PDF files can be attached")


def check_claims(kind: str, filename: str | None, declared_type: str | None) -> None:
    """Refuse an upload whose name or declared type names another allowed type than its content."""
    if filename:
        extension = os.path.splitext(filename)[1].lower()
        claimed = EXTENSIONS.get(extension)
        if extension and claimed is None:
            raise AttachmentRefused(f"files named '*{extension}' cannot be attached")
        if claimed is not None and claimed != kind:
            raise AttachmentRefused(
                f"the file is named '*{extension}' but its content is {kind.upper()}; "
                "send it with the right name"
            )
    if declared_type:
        base = declared_type.split(";", 1)[0].strip().lower()
        if base and base != "application/octet-stream":
            claimed_type = ALLOWED_TYPES.get(base)
            if claimed_type is None or claimed_type != kind:
                raise AttachmentRefused(f"the file is sent as '{base}' but its content is {kind.upper()}")


@dataclass(frozen=True)
class StoredFile:
    path: Path
    media_type: str
    size: int
    sha256: str


def suffix_for(media_type: str) -> str:
    """The file-name suffix a download of this type gets (``.jpeg``, ``.pdf``)."""
    return next((f".{kind}" for kind, known in CANONICAL_TYPE.items() if known == media_type), "")


def stored_path(root: Path, tenant: str, signal_id: str, attachment_id: str) -> Path:
    """Where :func:`store` keeps an attachment: ``root/<tenant>/<signal>/<id>``."""
    return root / tenant / signal_id / attachment_id


def store(
    root: Path, tenant: str, signal_id: str, attachment_id: str, content: bytes, kind: str
) -> StoredFile:
    """Write the bytes under ``root/<tenant>/<signal>/<id>`` atomically (temporary name, then rename)."""
    target = stored_path(root, tenant, signal_id, attachment_id)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{attachment_id}.part"
    with temporary.open("wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(target)
    return StoredFile(
        path=target,
        media_type=CANONICAL_TYPE[kind],
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
    )


def remove_signal_files(root: Path, tenant: str, signal_id: str) -> int:
    """Delete every stored file of one signal (erasure); returns how many were removed."""
    folder = root / tenant / signal_id
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.iterdir():
        path.unlink(missing_ok=True)
        removed += 1
    folder.rmdir()
    return removed
