"""Resident e-mails from templates: per tenant, event and language, as text and HTML.

A tenant may override any template in ``<tenant folder>/templates/``; otherwise the package's
own are used. The language is the one the resident wrote in, Dutch when unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    select_autoescape,
)

SUPPORTED_LANGUAGES = ("nl", "en")


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    text: str
    html: str


class TemplateBook:
    def __init__(self, tenants_dir: Path) -> None:
        self.tenants_dir = tenants_dir
        self._environments: dict[str, Environment] = {}

    def _environment(self, tenant: str) -> Environment:
        if tenant not in self._environments:
            loader = ChoiceLoader(
                [
                    FileSystemLoader(str(self.tenants_dir / tenant / "templates")),
                    PackageLoader("civicsignals.notifier", "templates"),
                ]
            )
            self._environments[tenant] = Environment(
                loader=loader,
                autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
                undefined=StrictUndefined,
                auto_reload=True,
            )
        return self._environments[tenant]

    def render(
        self, tenant: str, template: str, language: str | None, values: dict[str, Any]
    ) -> RenderedMessage:
        lang = language if language in SUPPORTED_LANGUAGES else "nl"
        environment = self._environment(tenant)
        text_template = environment.get_template(f"{template}.{lang}.txt")
        context = text_template.new_context(values)
        subject = "".join(text_template.blocks["subject"](context)).strip()
        body = "".join(text_template.blocks["body"](context)).strip() + "\n"
        html = environment.get_template(f"{template}.{lang}.html").render(values)
        return RenderedMessage(subject=subject, text=body, html=html)


def build_email(message: RenderedMessage, *, sender: str, recipient: str, message_key: str) -> EmailMessage:
    """A multipart/alternative mail; its Message-ID derives from the event, so a resend is recognisable."""
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = recipient
    mail["Subject"] = message.subject
    mail["Message-ID"] = make_msgid(idstring=message_key, domain="civicsignals.local")
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content(message.text)
    mail.add_alternative(message.html, subtype="html")
    return mail
