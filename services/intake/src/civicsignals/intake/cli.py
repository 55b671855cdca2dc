"""``civicsignals-intake``: run the service, import history, and look after personal data.

    civicsignals-intake serve
    civicsignals-intake migrate [--revision R]
    civicsignals-intake import FILE --tenant demo [--format csv|jsonl] [--delimiter ;] [--no-progress]
    civicsignals-intake erase --tenant demo (--email X | --phone X | --tracking-code C) [--yes [--signal-id ID ...]]
    civicsignals-intake access --tenant demo (--email X | --phone X | --tracking-code C) --out FILE.json
        [--with-files DIR] [--force] [--without-case-notes] [--without-mail-record]
    civicsignals-intake rotate-keys
    civicsignals-intake retention

The maintenance commands work on intake's database directly (the same settings and
``CIVIC_INTAKE_*`` variables as the service); events they write wait in the outbox until the
running service publishes them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from civicsignals.common.db import create_engine, session_factory
from civicsignals.common.tenants import Tenant, TenantRegistry
from civicsignals.intake.settings import IntakeSettings

if TYPE_CHECKING:
    from civicsignals.intake.privacy import PersonSelector


def build_parser() -> tuple[argparse.ArgumentParser, Any]:
    """The same ``serve`` command as ``civicsignals.common.app.build_cli`` gives every service,
    plus intake's own. Built here so that the maintenance commands do not import the web stack
    (FastAPI, OpenTelemetry …), which would double the start-up time of a short import run."""
    parser = argparse.ArgumentParser(prog="civicsignals-intake", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP API and the workers")
    migrate = commands.add_parser("migrate", help="bring the service's database to its latest migration")
    migrate.add_argument("--revision", default="head", help="the Alembic revision to go to (default head)")
    make = commands.add_parser(
        "makemigration",
        help="(developers) write a new migration from the difference between models and database",
    )
    make.add_argument("-m", "--message", required=True, help="what the migration does")
    _add_commands(commands)
    return parser, commands


def _add_commands(commands: Any) -> None:
    imports = commands.add_parser(
        "import", help="import a municipality's history (CSV or JSONL), idempotently"
    )
    imports.add_argument("file", type=Path)
    imports.add_argument("--tenant", required=True)
    imports.add_argument("--format", choices=["csv", "jsonl"], help="default: from the file's extension")
    imports.add_argument(
        "--delimiter",
        help="CSV only: comma, semicolon, tab or pipe (or the character); default: read from the header line",
    )
    imports.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in CI logs)")
    erase = commands.add_parser("erase", help="erase one person's data (AVG article 17)")
    _person_arguments(erase)
    erase.add_argument("--yes", action="store_true", help="do it; without it, only say what would be erased")
    erase.add_argument(
        "--signal-id",
        action="append",
        dest="signal_ids",
        metavar="ID",
        help="with --yes: erase only when the person's signals are exactly these (repeat it for each "
        "signal the look listed); otherwise nothing is erased and the list as it is now is shown",
    )
    access = commands.add_parser(
        "access",
        help="write what intake keeps about one person to a JSON file (AVG articles 15 and 20)",
    )
    _person_arguments(access)
    # Required: the document holds the person's words and contact, which must not end up in a
    # terminal's scrollback or a job log; it goes to a file the privacy officer sends on.
    access.add_argument("--out", type=Path, required=True, metavar="FILE", help="the JSON document to write")
    access.add_argument(
        "--with-files",
        type=Path,
        metavar="DIR",
        help="also copy the person's photos and PDFs into DIR/<signal_id>/<id>.<type>",
    )
    access.add_argument("--force", action="store_true", help="overwrite FILE, and write into a non-empty DIR")
    access.add_argument(
        "--without-case-notes",
        action="store_true",
        help="do not ask routing for the internal notes of the person's cases; the document says "
        "they are missing and the privacy officer adds them by hand",
    )
    access.add_argument(
        "--without-mail-record",
        action="store_true",
        help="do not ask notifier for the e-mails sent about the person's signals; the document "
        "says they are missing and the privacy officer adds them by hand",
    )
    commands.add_parser("rotate-keys", help="re-seal every contact with the active key")
    commands.add_parser("retention", help="run the retention job once for every tenant")


def _person_arguments(parser: argparse.ArgumentParser) -> None:
    """The tenant and one person, as ``erase`` and ``access`` both select them."""
    parser.add_argument("--tenant", required=True)
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--email")
    who.add_argument("--phone")
    who.add_argument("--tracking-code", help="one signal only (also once its contact is gone)")


def _person(args: argparse.Namespace) -> tuple[PersonSelector, str]:
    """Which of ``--email``, ``--phone``, ``--tracking-code`` was given, and its value."""
    if args.email is not None:
        return "email", args.email
    if args.phone is not None:
        return "phone", args.phone
    return "tracking_code", args.tracking_code


class Offline:
    """The database and tenants without the bus, for the maintenance commands."""

    def __init__(self, settings: IntakeSettings) -> None:
        from civicsignals.intake import models  # noqa: F401  (registers the tables)

        self.settings = settings
        self.engine = create_engine(
            settings.database_url, statements_on_loop=settings.sqlite_statements_on_loop
        )
        self.sessions = session_factory(self.engine)
        self.tenants = TenantRegistry(settings.tenants_dir)

    async def __aenter__(self) -> Offline:
        from civicsignals.common.migrations import upgrade

        await upgrade(self.engine, "civicsignals.intake.migrations")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.engine.dispose()

    def tenant(self, code: str) -> Tenant:
        tenant = self.tenants.get(code)
        if tenant is None:
            raise SystemExit(f"no tenant {code!r} under {self.settings.tenants_dir}")
        return tenant


async def run_import(settings: IntakeSettings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from civicsignals.intake.importer import count_lines, import_rows, parse_delimiter, read_rows
    from civicsignals.intake.tenantconfig import AreaCache

    path: Path = args.file
    if not path.is_file():  # noqa: ASYNC240  (a command line, not a server)
        print(f"no such file: {path}", file=sys.stderr)
        return 2
    try:
        delimiter = None if args.delimiter is None else parse_delimiter(args.delimiter)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    fmt = args.format or ("jsonl" if path.suffix.lower() in (".jsonl", ".ndjson", ".json") else "csv")
    async with Offline(settings) as offline:
        tenant = offline.tenant(args.tenant)
        total = count_lines(path) - (1 if fmt == "csv" else 0)
        started = time.perf_counter()
        with (
            path.open(encoding="utf-8-sig", newline="") as handle,
            tqdm(total=max(total, 0), unit="row", disable=args.no_progress or None, file=sys.stderr) as bar,
        ):
            summary = await import_rows(
                offline.sessions,
                tenant,
                AreaCache().get(tenant),
                read_rows(handle, fmt, delimiter),
                progress=bar,
            )
        elapsed = time.perf_counter() - started
    print(summary.render())
    print(f"took {elapsed:.1f} s: {summary.rows / elapsed if elapsed else 0:.0f} rows/s")
    return 0


async def run_erase(settings: IntakeSettings, args: argparse.Namespace) -> int:
    from civicsignals.intake import privacy
    from civicsignals.intake.app import build_cipher

    cipher = build_cipher(settings)
    async with Offline(settings) as offline:
        tenant = offline.tenant(args.tenant)
        outcome = await privacy.erase_person(
            offline.sessions,
            cipher,
            tenant.code,
            *_person(args),
            actor="cli:erase",
            attachments_dir=settings.attachments_dir,
            dry_run=not args.yes,
            confirmed=args.signal_ids,
        )
    for signal in outcome.signals:  # ids, codes and times only: never the person's data
        erased_before = f", erased before at {signal.erased_at.isoformat()}" if signal.erased_at else ""
        print(
            f"  {signal.id}  {signal.tracking_code}  received {signal.received_at.isoformat()}{erased_before}"
        )
    if outcome.changed:
        print(
            "the person's signals are not the --signal-id given (listed above as they are now); "
            "nothing erased",
            file=sys.stderr,
        )
        return 1
    if outcome.erased is None:
        print(
            f"{len(outcome.signals)} signal(s) of this person would be erased; add --yes to erase them "
            "(and --signal-id for each one above, to erase exactly those)"
        )
        return 0
    result = outcome.erased
    print(
        f"erased: {result.signals} signal(s), {result.contacts} contact(s), {result.attachments} attachment file(s)"
    )
    return 0


def _refuse_access_target(out: Path, files: Path | None, *, force: bool) -> int:
    """0 when the document (and the copies) may be written there; else the exit code, after
    saying why on stderr: 2 for a place that cannot be written to, 1 for one that holds a file
    already (``--force`` overwrites it)."""
    if out.is_dir() or not out.parent.is_dir():
        print(f"cannot write the document to {out}: not a file in an existing directory", file=sys.stderr)
        return 2
    if out.exists() and not force:
        print(f"{out} exists; add --force to overwrite it", file=sys.stderr)
        return 1
    if files is not None:
        if files.exists() and not files.is_dir():
            print(f"--with-files {files} is not a directory", file=sys.stderr)
            return 2
        if files.is_dir() and any(files.iterdir()) and not force:
            print(f"{files} is not empty; add --force to write into it", file=sys.stderr)
            return 1
    return 0


#: The exit code when routing (the case notes) or notifier (the mails) cannot be asked: nothing
#: written, try again.
EXIT_PART_UNAVAILABLE = 3


@dataclass(frozen=True)
class PartAdvice:
    """What the command says when one service's part of the document is missing: what the part
    is, the setting that names the service, and the flag that leaves the part out."""

    part: str
    setting: str
    flag: str


#: By service (``accessparts.ROUTING``, ``accessparts.NOTIFIER``).
PART_ADVICE: dict[str, PartAdvice] = {
    "routing": PartAdvice("the case notes", "CIVIC_INTAKE_ROUTING_URL", "--without-case-notes"),
    "notifier": PartAdvice("the mail record", "CIVIC_INTAKE_NOTIFIER_URL", "--without-mail-record"),
}


async def run_access(settings: IntakeSettings, args: argparse.Namespace) -> int:
    """Write one person's data to ``--out`` (see ``privacy`` and docs/intake.md); only counts on
    stdout: the person's data never goes to the terminal, a log or the audit. The internal notes
    of the person's cases come from routing (``CIVIC_INTAKE_ROUTING_URL``) and the e-mails sent
    about their signals from notifier (``CIVIC_INTAKE_NOTIFIER_URL``), both asked with intake's
    service key: when either cannot be asked nothing is written, unless ``--without-case-notes``
    or ``--without-mail-record`` asks for a document that says that part is missing."""
    import httpx

    from civicsignals.intake import accessparts, accessrequest
    from civicsignals.intake.app import build_cipher

    out: Path = args.out
    refused = _refuse_access_target(out, args.with_files, force=args.force)
    if refused:
        return refused
    by, value = _person(args)
    cipher = build_cipher(settings)
    async with (
        Offline(settings) as offline,
        httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client,
    ):
        tenant = offline.tenant(args.tenant)
        try:
            document = await accessrequest.answer_access_request(
                offline.sessions,
                cipher,
                tenant.code,
                by,
                value,
                actor="cli:access",
                case_notes=None
                if args.without_case_notes
                else accessparts.routing(client, settings, offline.tenants),
                mails=None
                if args.without_mail_record
                else accessparts.notifier(client, settings, offline.tenants),
                tenant_config=tenant,
            )
        except accessparts.PartUnavailable as missing:
            advice = PART_ADVICE[missing.service]
            print(
                f"cannot add {advice.part}: {missing.service} at {missing.url}: {missing.reason}; nothing "
                f"written (start {missing.service} or fix {advice.setting} and try again, or add "
                f"{advice.flag} and add {advice.part} by hand)",
                file=sys.stderr,
            )
            return EXIT_PART_UNAVAILABLE
    copied = None
    if args.with_files is not None:
        copied = accessrequest.copy_attachment_files(
            document, settings.attachments_dir, args.with_files, tenant=tenant.code
        )
    try:
        accessrequest.write_access_document(document, out, overwrite=args.force)
    except FileExistsError:  # written meanwhile by someone else
        print(f"{out} exists; add --force to overwrite it", file=sys.stderr)
        return 1
    print(f"wrote {document['signal_count']} signal(s) of this person to {out}")
    if not document["case_notes_included"]:
        print("without the case notes of routing: add them before the document goes out", file=sys.stderr)
    if not document["mails_included"]:
        print("without the mail record of notifier: add it before the document goes out", file=sys.stderr)
    if copied is not None:
        print(f"copied {copied.copied} attachment file(s) to {args.with_files}")
        if copied.missing:
            print(f"{copied.missing} attachment file(s) were not on the volume", file=sys.stderr)
    return 0


async def run_rotate(settings: IntakeSettings) -> int:
    from civicsignals.intake import privacy
    from civicsignals.intake.app import build_cipher

    cipher = build_cipher(settings)
    async with Offline(settings) as offline:
        resealed = await privacy.rotate_keys(offline.sessions, cipher)
        usage = await privacy.key_usage(offline.sessions)
    print(f"re-sealed {resealed} contact(s) with key {cipher.active_key_id}; contacts per key: {usage}")
    return 0


async def run_retention(settings: IntakeSettings) -> int:
    from civicsignals.intake import privacy

    async with Offline(settings) as offline:
        deleted = await privacy.apply_retention(offline.sessions, offline.tenants)
    print(f"contacts deleted per tenant: {deleted}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser, _commands = build_parser()
    args = parser.parse_args(argv)
    settings = IntakeSettings()
    if args.command in ("migrate", "makemigration"):
        from civicsignals.common.app import run_database_command

        run_database_command(args, settings)
        return
    if args.command == "serve":
        from civicsignals.common.app import serve
        from civicsignals.intake.app import create_app

        serve(lambda: create_app(settings), settings.host, settings.port, settings.log_level)
        return
    if args.command == "import":
        code = asyncio.run(run_import(settings, args))
    elif args.command == "erase":
        code = asyncio.run(run_erase(settings, args))
    elif args.command == "access":
        code = asyncio.run(run_access(settings, args))
    elif args.command == "rotate-keys":
        code = asyncio.run(run_rotate(settings))
    else:
        code = asyncio.run(run_retention(settings))
    raise SystemExit(code)
