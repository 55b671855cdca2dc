"""Resident e-mails from templates: per tenant, message and language, as text and HTML.

A template is two files, ``<name>.<language>.txt`` (with a ``subject`` and a ``body`` block) and
``<name>.<language>.html``. A tenant overrides any of them by putting a file of the same name in
``<tenant folder>/templates/``; otherwise the package's own are used. Tenant templates are
configuration a municipality edits, so they run in Jinja's sandbox. The language is the one the
resident wrote in; a language without templates falls back to Dutch.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import re
import sys
from dataclasses import dataclass
from datetime import date
from email import quoprimime
from email.charset import QP, Charset
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.utils import formataddr, formatdate, getaddresses, parseaddr, quote
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    Template,
    TemplateError,
    select_autoescape,
)
from jinja2.sandbox import SandboxedEnvironment

from civicsignals.common.events import RESIDENT_ACTOR
from civicsignals.common.wording import (
    DEFAULT_LANGUAGE,
    RESIDENT_LANGUAGES,
    STATUS_LABELS,
    SUPPORTED_LANGUAGES,
    base_language,
    format_date,
)

if TYPE_CHECKING:
    from civicsignals.common.tenants import Tenant

log = logging.getLogger(__name__)

ACKNOWLEDGEMENT = "acknowledgement"
STATUS_UPDATE = "status_update"
RESOLUTION = "resolution"
REOPENING = "reopening"
ENDPOINT_DISABLED = "endpoint_disabled"
TEMPLATES = (ACKNOWLEDGEMENT, STATUS_UPDATE, RESOLUTION, REOPENING, ENDPOINT_DISABLED)
#: Written to partner organisations' contacts, in Dutch or English (``Partner.language``).
PARTNER_TEMPLATES = (ENDPOINT_DISABLED,)


def languages_of(template: str) -> tuple[str, ...]:
    """The languages a template is written in: every resident language, or a partner's two."""
    return SUPPORTED_LANGUAGES if template in PARTNER_TEMPLATES else RESIDENT_LANGUAGES


def template_language(template: str, language: str | None) -> str:
    """``language`` (``nl-BE`` read as ``nl``) when the template is written in it, else Dutch.
    Callers pass a language already chosen (``wording.resident_language``, a partner's own)."""
    base = base_language(language)
    return base if base in languages_of(template) else DEFAULT_LANGUAGE


COMMON_VARIABLES = ["municipality", "language"]
RESIDENT_VARIABLES = [*COMMON_VARIABLES, "name", "tracking_code", "tracking_url"]
TEMPLATE_VARIABLES: dict[str, list[str]] = {
    ACKNOWLEDGEMENT: [*RESIDENT_VARIABLES, "service_promise", "expected_by"],
    STATUS_UPDATE: [*RESIDENT_VARIABLES, "status", "status_label", "public_note"],
    RESOLUTION: [
        *RESIDENT_VARIABLES,
        "status",
        "status_label",
        "public_note",
        "feedback_urls",
        "reopen_within_days",
    ],
    REOPENING: [*RESIDENT_VARIABLES, "status", "status_label", "public_note"],
    ENDPOINT_DISABLED: [*COMMON_VARIABLES, "partner_name", "endpoint_url", "reason", "disabled_at"],
}


def template_for_status(status: str) -> str:
    """Which mail a case status gets: resolution, reopening, or the general status update."""
    if status == "resolved":
        return RESOLUTION
    if status == "reopened":
        return REOPENING
    return STATUS_UPDATE


def status_mail_wanted(status: str, sequence: int, actor: str = "") -> bool:
    """Whether a case status change is worth a mail to the resident.

    Not the change that opens the case (sequence 1: the acknowledgement tells the resident it was
    received and passed on), not the internal steps ``received`` and ``triage``, and not a change
    the resident made themselves from their page (answering, reopening, withdrawing), which the
    page has just confirmed.
    """
    return sequence > 1 and status not in ("received", "triage") and actor != RESIDENT_ACTOR


def feedback_urls(public_base_url: str, tracking_code: str) -> list[dict[str, Any]]:
    """One link per score 1 to 5 to intake's feedback form, with the score filled in (one click)."""
    base = public_base_url.rstrip("/")
    return [
        {"score": score, "url": f"{base}/v1/tracking/{tracking_code}/feedback?score={score}"}
        for score in range(1, 6)
    ]


class TemplateProblem(ValueError):
    """A template that does not compile or render; ``part`` is ``text`` or ``html``."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    text: str
    html: str


class TemplateBook:
    """The templates of every tenant, read from its folder (reloaded when a file changes)."""

    def __init__(self, tenants_dir: Path) -> None:
        self.tenants_dir = tenants_dir
        self._environments: dict[str, SandboxedEnvironment] = {}

    def _environment(self, tenant: str) -> SandboxedEnvironment:
        if tenant not in self._environments:
            loader: BaseLoader = ChoiceLoader(
                [
                    FileSystemLoader(str(self.tenants_dir / tenant / "templates")),
                    PackageLoader("civicsignals.notifier", "templates"),
                ]
            )
            self._environments[tenant] = SandboxedEnvironment(
                loader=loader,
                autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
                undefined=StrictUndefined,
                auto_reload=True,
            )
        return self._environments[tenant]

    def source_of(self, tenant: str, name: str, language: str) -> Literal["tenant", "default"]:
        """``tenant`` when the tenant's folder overrides the text template, else ``default``."""
        path = self.tenants_dir / tenant / "templates" / f"{name}.{language}.txt"
        return "tenant" if path.is_file() else "default"

    def render(
        self,
        tenant: str,
        template: str,
        language: str | None,
        values: dict[str, Any],
        *,
        draft_text: str | None = None,
        draft_html: str | None = None,
    ) -> RenderedMessage:
        """Render a message; drafts (for the preview) replace the stored text or HTML template."""
        lang = template_language(template, language)
        environment = self._environment(tenant)
        context_values = {"language": lang, **values}
        try:
            text_template: Template = (
                environment.from_string(draft_text)
                if draft_text is not None
                else environment.get_template(f"{template}.{lang}.txt")
            )
            if "subject" not in text_template.blocks or "body" not in text_template.blocks:
                raise TemplateProblem("text", "the text template needs a 'subject' and a 'body' block")
            context = text_template.new_context(context_values)
            subject = " ".join("".join(text_template.blocks["subject"](context)).split())
            body = "".join(text_template.blocks["body"](context)).strip() + "\n"
        except TemplateProblem:
            raise
        except TemplateError as exc:
            raise TemplateProblem("text", _describe(exc)) from exc
        try:
            html_template = (
                environment.from_string(draft_html)
                if draft_html is not None
                else environment.get_template(f"{template}.{lang}.html")
            )
            html = html_template.render(context_values)
        except TemplateError as exc:
            raise TemplateProblem("html", _describe(exc)) from exc
        return RenderedMessage(subject=subject, text=body, html=html)


def _describe(exc: TemplateError) -> str:
    line = getattr(exc, "lineno", None)
    return f"line {line}: {exc.message}" if line else str(exc.message or exc)


def example_values(template: str, language: str, public_base_url: str) -> dict[str, Any]:
    """Values for a preview: what a real message of this kind would get, made up."""
    code = "7KQ2-M9XD-4HTC"
    base = public_base_url.rstrip("/")
    status = {RESOLUTION: "resolved", REOPENING: "reopened"}.get(template, "in_progress")
    return {
        "municipality": "Gemeente Voorbeeld",
        "name": "A. de Vries",
        "tracking_code": code,
        "tracking_url": f"{base}/v1/tracking/{code}",
        # A promise in a language its rule does not give, and staff's notes, come in Dutch.
        "service_promise": "We will remove it within 5 working days."
        if language == "en"
        else "We halen het binnen 5 werkdagen weg.",
        "expected_by": format_date(date(2026, 12, 7), template_language(template, language)),
        "status": status,
        "status_label": STATUS_LABELS[template_language(template, language)][status],
        "public_note": "The container was emptied." if language == "en" else "De container is geleegd.",
        "feedback_urls": feedback_urls(public_base_url, code),
        "reopen_within_days": 30,
        "partner_name": "Woonpartners",
        "endpoint_url": "https://hooks.woonpartners.example/civic",
        "reason": "failing since 2026-11-25T09:00:00Z",
        "disabled_at": "2026-11-28T09:00:00Z",
    }


@dataclass(frozen=True)
class Sender:
    """Who a mail is from: ``From`` (whose address is also the SMTP envelope's sender, so the
    sending domain's SPF record applies) and, when the tenant names one, ``Reply-To``."""

    mail_from: str
    reply_to: str | None = None


_MAILBOX_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[^\s@<>()\[\],;:\"\\]+")


def sender_of(tenant: Tenant | None, mail_from: str) -> Sender:
    """The sender of a tenant's mail, from ``mail`` in its ``tenant.yaml``.

    ``mail.from`` when it is set; otherwise the tenant's name with the address of ``mail_from``
    (``CIVIC_NOTIFIER_MAIL_FROM``); ``mail_from`` as it is only for a tenant notifier does not know.
    ``mail.reply_to``, when set, becomes ``Reply-To``.

    Why: one deployment serves many municipalities, and a resident should see their own
    municipality as the sender, ideally from its own domain (whose SPF, DKIM and DMARC records
    vouch for the mail), and reach its contact centre when they press reply, not a no-reply box.
    The tenant schema checks the shape of both values; one that still does not parse as a single
    address is ignored with a warning that names the tenant (never an address), and the default
    applies. Values come back quoted but not encoded: the builders encode a name as the header needs.
    """
    if tenant is None:
        return Sender(mail_from)
    raw = tenant.settings.get("mail")
    mail: dict[str, Any] = raw if isinstance(raw, dict) else {}
    sender = _mailbox(mail.get("from"), tenant.code, "mail.from")
    if sender is None:
        _, default_address = parseaddr(mail_from)
        sender = _format_mailbox(tenant.name, default_address) if default_address else mail_from
    return Sender(sender, _mailbox(mail.get("reply_to"), tenant.code, "mail.reply_to"))


def _mailbox(value: object, tenant: str, key: str) -> str | None:
    """One address, with or without a display name, as ``"name" <address>``; None when unset, and
    (with a warning) when it is not one usable address."""
    if value is None:
        return None
    if isinstance(value, str) and "\r" not in value and "\n" not in value:
        found = getaddresses([value])
        if len(found) == 1 and _MAILBOX_ADDRESS.fullmatch(found[0][1]):
            return _format_mailbox(found[0][0], found[0][1])
    log.warning("tenant %s: %s in tenant.yaml is not one usable address; using the default", tenant, key)
    return None


def _format_mailbox(name: str, address: str) -> str:
    """``"name" <address>`` (``parseaddr`` reads it back as it was), or the bare address without
    a name. Not ``formataddr``: it would encode a name outside ASCII here already."""
    name = " ".join(name.split())
    return f'"{quote(name)}" <{address}>' if name else address


UTF8_QUOTED_PRINTABLE = Charset("utf-8")
UTF8_QUOTED_PRINTABLE.body_encoding = QP  # readable in a mail's source, as the modern API chooses


def build_email(
    message: RenderedMessage,
    *,
    sender: str,
    recipient: str,
    message_id: str,
    domain: str,
    reply_to: str | None = None,
) -> Message:
    """A multipart/alternative mail whose Message-ID comes from the delivery (and a ``Reply-To``
    when ``reply_to`` is given).

    The same delivery always has the same Message-ID, so if a crash between the SMTP server's
    acceptance and our record of it makes us send again, mail systems can see it is one message.

    Built with the ``compat32`` classes: the modern ``EmailMessage`` parses every header it sets
    through its header registry, which took a sixth of notifier's CPU under load. Display names
    and subjects outside ASCII are encoded (RFC 2047); an address outside ASCII (an SMTPUTF8
    mailbox) is left to the modern API, which knows how to write it.
    """
    sender_name, sender_address = parseaddr(sender)
    recipient_name, recipient_address = parseaddr(recipient)
    reply_name, reply_address = parseaddr(reply_to) if reply_to else ("", "")
    if not (sender_address.isascii() and recipient_address.isascii() and reply_address.isascii()):
        return _build_email_modern(
            message,
            sender=sender,
            recipient=recipient,
            message_id=message_id,
            domain=domain,
            reply_to=reply_to,
        )
    mail = MIMEMultipart("alternative")
    mail["From"] = formataddr((sender_name, sender_address), "utf-8")
    if reply_to:
        mail["Reply-To"] = formataddr((reply_name, reply_address), "utf-8")
    mail["To"] = formataddr((recipient_name, recipient_address), "utf-8")
    if message.subject.isascii():
        mail["Subject"] = message.subject
    else:
        # compat32 takes a Header and folds its encoded words itself; typeshed types the value as str.
        mail["Subject"] = cast(str, Header(message.subject, "utf-8"))
    mail["Date"] = formatdate(localtime=False, usegmt=True)
    mail["Message-ID"] = f"<{message_id}@{domain}>"
    mail["Auto-Submitted"] = "auto-generated"
    for body, subtype in ((message.text, "plain"), (message.html, "html")):
        part = MIMENonMultipart("text", subtype)
        part.set_payload(body, UTF8_QUOTED_PRINTABLE)
        mail.attach(part)
    return mail


@dataclass(frozen=True)
class OutgoingMail:
    """A mail already in its wire form: the envelope and the bytes (``SmtpPool`` sends it as is)."""

    sender: str
    recipients: list[str]
    data: bytes
    utf8: bool = False
    """A mailbox outside ASCII: the relay must take it with SMTPUTF8 (RFC 6531)."""


_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")
_MANGLE_FROM = re.compile(r"^From ", re.MULTILINE)
_BOUNDARY_DIGITS = len(repr(sys.maxsize - 1))
_MAX_HEADER_LINE = 78
"""Where compat32 folds a header line; a mail with a longer header is left to the generator."""


def encode_email(
    message: RenderedMessage,
    *,
    sender: str,
    recipient: str,
    message_id: str,
    domain: str,
    reply_to: str | None = None,
) -> OutgoingMail | Message:
    """The mail :func:`build_email` builds, written straight to the bytes the ``compat32`` generator
    would make of it (the tests compare the two byte for byte), or, when a header needs encoding or
    folding, the :class:`~email.message.Message` itself.

    Why: flattening through ``email.generator`` (each header re-parsed and folded, the boundary
    checked with a freshly compiled regex) and aiosmtplib's reading the addresses back out of the
    headers cost more CPU than everything else about a resident mail; this covers the common
    mail (ASCII headers, each on one line) with a few string operations.

    The envelope's sender is the ``From`` address (as aiosmtplib takes it from a ``Message``), so
    a tenant's own sending domain is the one SPF is checked against.
    """
    sender_name, sender_address = _split_address(sender)
    recipient_name, recipient_address = _split_address(recipient)
    reply_name, reply_address = _split_address(reply_to) if reply_to else ("", "")
    headers: list[tuple[str, str]] = []
    # A mailbox outside ASCII (SMTPUTF8) is one formataddr cannot write: left to build_email.
    if sender_address.isascii() and recipient_address.isascii() and reply_address.isascii():
        headers.append(("From", formataddr((sender_name, sender_address), "utf-8")))
        if reply_to:
            headers.append(("Reply-To", formataddr((reply_name, reply_address), "utf-8")))
        headers += [
            ("To", formataddr((recipient_name, recipient_address), "utf-8")),
            ("Subject", message.subject),
            ("Date", formatdate(localtime=False, usegmt=True)),
            ("Message-ID", f"<{message_id}@{domain}>"),
            ("Auto-Submitted", "auto-generated"),
        ]
    if not headers or not all(
        value.isascii()
        and "\n" not in value
        and "\r" not in value
        and len(name) + 2 + len(value) <= _MAX_HEADER_LINE
        for name, value in headers
    ):
        return build_email(
            message,
            sender=sender,
            recipient=recipient,
            message_id=message_id,
            domain=domain,
            reply_to=reply_to,
        )
    parts = [_text_part(message.text, "plain"), _text_part(message.html, "html")]
    boundary = _boundary(parts)
    lines = [
        "Content-Type: multipart/alternative;",
        f' boundary="{boundary}"',
        "MIME-Version: 1.0",
        *(f"{name}: {value}" for name, value in headers),
        "",
        f"--{boundary}",
    ]
    data = "\n".join(lines) + "\n" + f"\n--{boundary}\n".join(parts) + f"\n--{boundary}--\n"
    return OutgoingMail(sender=sender_address, recipients=[recipient_address], data=data.encode("ascii"))


def _split_address(value: str) -> tuple[str, str]:
    """``parseaddr``, short-cut for a bare address (what intake gives for a resident) and
    remembered for the few others (a tenant's sender and Reply-To are the same on all its mail)."""
    if _PLAIN_ADDRESS.fullmatch(value):
        return "", value
    return _parsed_address(value)


@functools.lru_cache(maxsize=256)
def _parsed_address(value: str) -> tuple[str, str]:
    return parseaddr(value)


def _text_part(body: str, subtype: str) -> str:
    """A text part as compat32 writes it: UTF-8, quoted-printable, ``From `` at a line start
    escaped (the generator's ``mangle_from_``)."""
    encoded = quoprimime.body_encode(body.encode("utf-8").decode("latin-1"))
    encoded = _MANGLE_FROM.sub(">From ", encoded)
    return (
        "MIME-Version: 1.0\n"
        f'Content-Type: text/{subtype}; charset="utf-8"\n'
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n" + encoded
    )


def _boundary(parts: list[str]) -> str:
    """A boundary as the generator makes one, and, as there, one that occurs in no part."""
    while True:
        boundary = "=" * 15 + f"{random.randrange(sys.maxsize):0{_BOUNDARY_DIGITS}d}" + "=="
        if not any(f"--{boundary}" in part for part in parts):
            return boundary


def _build_email_modern(
    message: RenderedMessage,
    *,
    sender: str,
    recipient: str,
    message_id: str,
    domain: str,
    reply_to: str | None = None,
) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = sender
    if reply_to:
        mail["Reply-To"] = reply_to
    mail["To"] = recipient
    mail["Subject"] = message.subject
    mail["Date"] = formatdate(localtime=False, usegmt=True)
    mail["Message-ID"] = f"<{message_id}@{domain}>"
    mail["Auto-Submitted"] = "auto-generated"
    # Quoted-printable, as the compat32 path writes: an 8-bit body may be converted on the way,
    # which would break a DKIM signature.
    mail.set_content(message.text, cte="quoted-printable")
    mail.add_alternative(message.html, subtype="html", cte="quoted-printable")
    return mail


def dumps(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, default=str)
