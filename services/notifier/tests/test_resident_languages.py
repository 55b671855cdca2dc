"""A resident who writes in Turkish, Polish or Arabic gets the acknowledgement in that language when
the municipality lists it in ``languages``, and in Dutch when it does not.

End to end with the real intake (whose detection decides the language: the portal gives none),
NATS, notifier and an SMTP server (aiosmtpd on loopback). Then every template in every language it
is written in renders with the example values the template editor's preview uses.
"""

# Turkish spells with the dotless i (U+0131) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from civicsignals.common.wording import RESIDENT_LANGUAGES, SUPPORTED_LANGUAGES
from civicsignals.notifier import messages

TEMPLATES_DIR = Path(messages.__file__).parent / "templates"
ALL_LANGUAGES = ["nl", "en", "tr", "pl", "ar"]
REPORTS = {
    "tr": ("Sokağımızdaki lamba bir haftadır yanmıyor, lütfen tamir edin.", "Bildiriminizi aldık"),
    "pl": (
        "Dzień dobry, od tygodnia nie działa latarnia przy naszym bloku.",
        "Otrzymaliśmy Państwa zgłoszenie",
    ),
    "ar": ("السلام عليكم، مصباح الشارع أمام بيتنا لا يعمل منذ أسبوع.", "تلقّينا بلاغكم"),
}


@pytest.mark.parametrize("language", ["tr", "pl", "ar"])
async def test_the_acknowledgement_is_in_the_language_the_resident_wrote_in(
    start: Any, wait_until: Any, language: str
) -> None:
    text, subject = REPORTS[language]
    stack = await start(name="Gemeente Gouda", languages=ALL_LANGUAGES)
    mail = await stack.acknowledgement(wait_until, text=text, language=None)
    message = mail.parsed()
    assert str(message["Subject"]).startswith(subject)
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and html is not None
    assert "Gemeente Gouda" in plain.get_content()
    assert f'lang="{language}"' in html.get_content()
    assert ('dir="rtl"' in html.get_content()) == (language == "ar")


async def test_a_municipality_that_does_not_list_the_language_writes_dutch(
    start: Any, wait_until: Any
) -> None:
    stack = await start(name="Gemeente Gouda")  # languages: nl, en
    mail = await stack.acknowledgement(wait_until, text=REPORTS["tr"][0], language=None)
    assert str(mail.parsed()["Subject"]).startswith("Uw melding is ontvangen")


@pytest.mark.parametrize("template", messages.TEMPLATES)
def test_every_template_renders_in_each_of_its_languages(template: str, tmp_path: Path) -> None:
    book = messages.TemplateBook(tmp_path)
    languages = messages.languages_of(template)
    assert languages == (
        SUPPORTED_LANGUAGES if template in messages.PARTNER_TEMPLATES else RESIDENT_LANGUAGES
    )
    for language in languages:
        assert (TEMPLATES_DIR / f"{template}.{language}.txt").is_file()
        assert (TEMPLATES_DIR / f"{template}.{language}.html").is_file()
        values = messages.example_values(template, language, "https://gemeente.example")
        rendered = book.render("gouda", template, language, values)
        assert "7KQ2-M9XD-4HTC" in rendered.subject + rendered.text or template == messages.ENDPOINT_DISABLED
        assert f'lang="{language}"' in rendered.html
    # A language a template is not written in falls back to Dutch rather than failing.
    dutch = book.render("gouda", template, "nl", messages.example_values(template, "nl", "https://x.example"))
    fallback = book.render(
        "gouda", template, "de", messages.example_values(template, "de", "https://x.example")
    )
    assert fallback.subject == dutch.subject
