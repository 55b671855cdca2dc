"""``civicsignals-notifier``: run the service, make a municipality's DKIM key, and check its DNS record.

civicsignals-notifier serve
civicsignals-notifier migrate [--revision R]
civicsignals-notifier dkim-key --tenant gouda [--selector civic2026] [--bits 2048]
civicsignals-notifier dkim-check --tenant gouda [--selector civic2027] [--nameserver HOST[:PORT]] [--timeout 5]
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
    elif args.command == "dkim-check":
        sys.exit(dkim_check(args, NotifierSettings()))


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

    dkim_check = commands.add_parser(
        "dkim-check",
        help="check that a tenant's published DKIM record matches the key notifier signs with",
        description="Looks up the TXT record <selector>._domainkey.<domain> as a receiver would, reads "
        "its tags (RFC 6376), compares its public key with the tenant's key file, and verifies a test "
        "mail signed by notifier against it. One line per finding; exit 0 when receivers would accept "
        "the signatures, 1 when the record is missing, wrong, revoked or another key, 2 when the "
        "command cannot run (unknown tenant, no selector, no key file). The private key is never shown.",
    )
    dkim_check.add_argument("--tenant", required=True, help="the tenant's code (its folder's name)")
    dkim_check.add_argument(
        "--selector",
        help="default: mail.dkim.selector of the tenant; give a new one to check a key prepared with "
        "dkim-key before switching to it",
    )
    dkim_check.add_argument(
        "--nameserver",
        metavar="HOST[:PORT]",
        help="the resolver to ask (say your own, or the domain's authoritative server); default: this "
        "machine's resolver",
    )
    dkim_check.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long the look-up may take (default 5, as receivers allow)",
    )


def _positive_seconds(text: str) -> float:
    """``--timeout``'s value: a number of seconds above zero (argparse turns the error into exit 2)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < seconds <= 300:
        raise argparse.ArgumentTypeError("give a number of seconds above 0 and at most 300")
    return seconds


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


def dkim_check(args: argparse.Namespace, settings: Any) -> int:
    """Check the published record of the tenant's selector; 0 pass, 1 fail, 2 cannot check.

    The selector, domain and key are found exactly as notifier finds them when it signs
    (``mailsigning.signer_of``), except that ``--selector`` may name a key not switched on yet.
    """
    from civicsignals.common.tenants import load_tenant
    from civicsignals.notifier import dkimcheck, mailsigning, messages

    def cannot_check(reason: str) -> int:
        print(f"dkim-check: {reason}", file=sys.stderr)
        return 2

    folder: Path = settings.tenants_dir / args.tenant
    if not (folder / "tenant.yaml").is_file():
        return cannot_check(f"no tenant {args.tenant!r}: {folder / 'tenant.yaml'} does not exist")
    try:
        tenant = load_tenant(folder)
    except ValueError as exc:  # TenantConfigError (naming file and line), or a bad folder name
        return cannot_check(f"tenant {args.tenant!r} does not load: {exc}")
    mail = tenant.settings.get("mail")
    configured_raw = mail.get("dkim") if isinstance(mail, dict) else None
    configured: dict[str, Any] = configured_raw if isinstance(configured_raw, dict) else {}
    switched_on = str(configured.get("selector") or "")
    selector = args.selector or switched_on
    if not selector:
        return cannot_check(
            f"tenant {args.tenant!r} has no mail.dkim.selector in tenant.yaml; give --selector to check "
            "a key made with dkim-key"
        )
    if not mailsigning.SELECTOR.match(selector):
        return cannot_check(f"selector {selector!r}: one DNS label of lower-case letters, digits and '-'")
    sender = messages.sender_of(tenant, settings.mail_from).mail_from
    from_domain = mailsigning.domain_of(sender)
    domain = str(configured.get("domain") or from_domain).lower().rstrip(".")
    if not domain:
        return cannot_check("no signing domain: set mail.from (or mail.dkim.domain) in tenant.yaml")
    path = mailsigning.key_path(settings.dkim_keys_dir, tenant.code, selector)
    if not path.exists():
        return cannot_check(
            f"no key file {path}; make it with: civicsignals-notifier dkim-key --tenant {tenant.code} "
            f"--selector {selector}"
        )
    try:
        key_pem = mailsigning.load_key(path)
        nameserver = dkimcheck.parse_nameserver(args.nameserver) if args.nameserver else None
    except (mailsigning.DkimKeyProblem, dkimcheck.NameserverProblem) as exc:
        return cannot_check(str(exc))

    signer = mailsigning.DkimSigner(domain=domain, selector=selector, key_pem=key_pem)
    answer = dkimcheck.lookup_txt(signer.dns_name, nameserver, args.timeout)
    probe = dkimcheck.probe_mail(sender, domain, settings.mail_domain)
    findings = dkimcheck.check(signer, answer, probe, from_domain)
    if selector != switched_on:
        now = f"now {switched_on}" if switched_on else "none is set yet"
        findings.append(
            dkimcheck.Finding(
                dkimcheck.Level.NOTE,
                f"selector {selector} is not mail.dkim.selector in tenant.yaml ({now}): notifier does not "
                "sign with it until you set it there, which is safe once this check passes",
            )
        )
    print(f"DKIM check of tenant {tenant.code}: selector {selector}, domain {domain}, key file {path}")
    for finding in findings:
        print(finding.line())
    print(dkimcheck.verdict(findings, signer))
    return dkimcheck.exit_code(findings)
