"""``civicsignals-notifier``: run the service, and make a municipality's DKIM key.

civicsignals-notifier serve
civicsignals-notifier migrate [--revision R]
civicsignals-notifier dkim-key --tenant gouda [--selector civic2026] [--bits 2048]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from civicsignals.common.app import build_cli, run_database_command, serve


def main(argv: list[str] | None = None) -> None:
    parser, commands = build_cli("civicsignals-notifier", __doc__)
    _add_dkim_command(commands)
    args = parser.parse_args(argv)
    from civicsignals.notifier.settings import NotifierSettings

    if args.command in ("migrate", "makemigration") and run_database_command(args, NotifierSettings()):
        return
    if args.command == "serve":
        from civicsignals.notifier.app import create_app

        settings = NotifierSettings()
        serve(lambda: create_app(settings), settings.host, settings.port, settings.log_level)
    elif args.command == "dkim-key":
        sys.exit(dkim_key(args, NotifierSettings()))


def _add_dkim_command(commands: Any) -> None:
    dkim_key = commands.add_parser(
        "dkim-key",
        help="make a tenant's DKIM key (or keep the one there) and print the DNS record to publish",
        description="Writes <CIVIC_NOTIFIER_DKIM_KEYS_DIR>/<tenant>/<selector>.pem (mode 0600) unless "
        "it exists, and prints the TXT record for <selector>._domainkey.<domain>. Publish it, then "
        "set mail.dkim.selector in the tenant's tenant.yaml; notifier signs from the next mail on.",
    )
    dkim_key.add_argument("--tenant", required=True, help="the tenant's code (its folder's name)")
    dkim_key.add_argument(
        "--selector", help="default: mail.dkim.selector of the tenant, else civic<this year>"
    )
    dkim_key.add_argument("--domain", help="default: mail.dkim.domain of the tenant, else mail.from's domain")
    dkim_key.add_argument("--bits", type=int, default=2048, choices=[1024, 2048, 3072, 4096])


def dkim_key(args: argparse.Namespace, settings: Any) -> int:
    """Make or show the key; 0, or 2 with a message on stderr when the tenant or a value is wrong."""
    from datetime import UTC, datetime

    from civicsignals.common.tenants import load_tenant
    from civicsignals.notifier import mailsigning

    folder: Path = settings.tenants_dir / args.tenant
    if not (folder / "tenant.yaml").is_file():
        print(f"no tenant {args.tenant!r}: {folder / 'tenant.yaml'} does not exist", file=sys.stderr)
        return 2
    mail = load_tenant(folder).settings.get("mail") or {}
    configured = mail.get("dkim") or {}
    selector = args.selector or configured.get("selector") or f"civic{datetime.now(UTC).year}"
    domain = (
        args.domain or configured.get("domain") or mailsigning.domain_of(mail.get("from") or "")
    ).lower()
    if not mailsigning.SELECTOR.match(selector):
        print(f"selector {selector!r}: one DNS label of lower-case letters, digits and '-'", file=sys.stderr)
        return 2
    if not domain:
        print(
            "no domain: give --domain, or set mail.from (or mail.dkim.domain) in tenant.yaml", file=sys.stderr
        )
        return 2
    path = mailsigning.key_path(settings.dkim_keys_dir, args.tenant, selector)
    if path.exists():
        try:
            pem = mailsigning.load_key(path)
        except mailsigning.DkimKeyProblem as exc:
            print(str(exc), file=sys.stderr)
            return 2
        print(f"# kept the existing key {path}", file=sys.stderr)
    else:
        pem = mailsigning.new_key(path, args.bits)
        print(f"# wrote a new {args.bits}-bit key to {path}", file=sys.stderr)
    name = f"{selector}._domainkey.{domain}"
    print(mailsigning.zone_line(name, mailsigning.dns_record(pem)))
    if configured.get("selector") != selector:
        print(
            f"# then in {folder / 'tenant.yaml'}:  mail: {{dkim: {{selector: {selector}}}}}", file=sys.stderr
        )
    return 0
