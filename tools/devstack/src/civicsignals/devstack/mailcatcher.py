"""A local SMTP server that keeps every message as an ``.eml`` file.

The notifier sends citizen e-mail over plain SMTP; locally and in tests that mail must go nowhere
but must be inspectable. Files (rather than memory) let a developer open a message in any mail
client, let tests in another process read what the notifier sent, and survive a restart of the dev
runner. Nothing but the message itself is kept: the folder is the whole state.

Run standalone with ``python -m civicsignals.devstack.mailcatcher --dir .data/mail --port 1025``.
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from .ports import LOCALHOST, free_port

__all__ = ["MailCatcher", "main"]

_PARSER = BytesParser(policy=email.policy.default)


class _DropLoginDataWarning(logging.Filter):
    """aiosmtpd warns about its own deprecated ``login_data`` on every successful AUTH."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Session.login_data is deprecated")


logging.getLogger("mail.log").addFilter(_DropLoginDataWarning())


class _FolderHandler:
    """aiosmtpd handler that writes each message, byte for byte, into a folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content if envelope.original_content is not None else envelope.content
        data = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw or b"")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        final = self.folder / f"{stamp}-{uuid.uuid4().hex}.eml"
        # Write under a hidden temporary name and rename: a reader polling the folder never sees a
        # half-written message, and rename is atomic within one filesystem.
        tmp = self.folder / f".{final.name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, final)
        return "250 Message accepted for delivery"


def _accept_any_login(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    """Accept every SMTP login, so a notifier configured with credentials works unchanged."""
    return AuthResult(success=True)


class MailCatcher:
    """SMTP on 127.0.0.1 that stores every received message in ``folder`` as ``.eml``.

    File names are ``<UTC timestamp>-<uuid>.eml``; sorting them by name sorts messages by arrival.
    """

    def __init__(self, folder: Path, *, port: int | None = None, host: str = LOCALHOST) -> None:
        """Describe the catcher; it listens only after :meth:`start`."""
        self.folder = Path(folder).resolve()
        self.host = host
        self.port = port if port is not None else free_port(host)
        self._controller: Controller | None = None

    def start(self) -> MailCatcher:
        """Start listening (in a background thread with its own event loop)."""
        if self._controller is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        controller = Controller(
            _FolderHandler(self.folder),
            hostname=self.host,
            port=self.port,
            authenticator=_accept_any_login,
            auth_require_tls=False,
            enable_SMTPUTF8=True,
        )
        controller.start()
        self._controller = controller
        return self

    def stop(self) -> None:
        """Stop listening; stored messages stay in the folder."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def is_running(self) -> bool:
        """Whether the SMTP server is listening."""
        return self._controller is not None

    def paths(self) -> list[Path]:
        """Stored message files, oldest first (temporary files of a write in progress excluded)."""
        return sorted(p for p in self.folder.glob("*.eml") if not p.name.startswith("."))

    def messages(self) -> list[EmailMessage]:
        """Every stored message, parsed, oldest first."""
        result: list[EmailMessage] = []
        for path in self.paths():
            with path.open("rb") as fh:
                result.append(_PARSER.parse(fh))
        return result

    def clear(self) -> None:
        """Delete every stored message, so a test can start from an empty folder."""
        for path in self.paths():
            path.unlink(missing_ok=True)

    def wait_for(
        self, predicate: Callable[[EmailMessage], bool] | None = None, timeout: float = 10.0
    ) -> EmailMessage:
        """Return the oldest stored message matching ``predicate`` (any message when ``None``).

        Polls the folder, so it also sees mail caught by another process writing to the same
        folder. Raises :class:`TimeoutError` listing the subjects seen, to make failures readable.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self._match(predicate)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(self._timeout_message(timeout))
            time.sleep(0.05)

    async def wait_for_async(
        self,
        predicate: Callable[[EmailMessage], bool] | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 - same signature as wait_for, on purpose
    ) -> EmailMessage:
        """Like :meth:`wait_for`, without blocking the event loop (for async tests)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._match(predicate)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(self._timeout_message(timeout))
            await asyncio.sleep(0.05)

    def __enter__(self) -> MailCatcher:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"MailCatcher(smtp://{self.host}:{self.port}, folder={self.folder})"

    def _match(self, predicate: Callable[[EmailMessage], bool] | None) -> EmailMessage | None:
        for message in self.messages():
            if predicate is None or predicate(message):
                return message
        return None

    def _timeout_message(self, timeout: float) -> str:
        subjects = [str(m.get("Subject", "")) for m in self.messages()]
        return f"no matching message in {self.folder} after {timeout:.1f}s; subjects seen: {subjects}"


def main(argv: list[str] | None = None) -> int:
    """Run the mail catcher in the foreground until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m civicsignals.devstack.mailcatcher",
        description="Local SMTP server that stores every message as an .eml file.",
    )
    parser.add_argument("--dir", type=Path, default=Path(".data/mail"), help="folder for .eml files")
    parser.add_argument("--host", default=LOCALHOST, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1025, help="SMTP port; 0 picks a free one")
    args = parser.parse_args(argv)

    catcher = MailCatcher(args.dir, port=args.port or None, host=args.host)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    catcher.start()
    print(f"mail catcher: smtp://{catcher.host}:{catcher.port} -> {catcher.folder}", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        catcher.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
